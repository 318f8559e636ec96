"""Masks -> really smaller networks (Tessier et al. 2022): ``apply_masks``, ``hold_masks``, ``shrink``, ``save``, ``load``;
for inference, ``fold_bn`` (BatchNorm into the convolution) and ``fuse_index_add`` (indexation-addition into it)."""
from .abstract import Liveness, liveness
from .fold import fold_bn
from .fuse import fuse_index_add
from .ops import ConstantMap, Empty, Expand, IndexAdd
from .shrink import apply_masks, check_masks, from_description, hold_masks, load, save, shrink, trace

__all__ = ["apply_masks", "hold_masks", "shrink", "save", "load", "from_description", "trace", "check_masks", "liveness",
           "Liveness", "IndexAdd", "Expand", "ConstantMap", "Empty", "fold_bn", "fuse_index_add"]
