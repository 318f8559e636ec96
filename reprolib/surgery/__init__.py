"""Masks -> really smaller networks (Tessier et al. 2022): ``apply_masks``, ``hold_masks``, ``shrink``, ``save``, ``load``."""
from .abstract import Liveness, liveness
from .ops import ConstantMap, Empty, Expand, IndexAdd
from .shrink import apply_masks, check_masks, from_description, hold_masks, load, save, shrink, trace

__all__ = ["apply_masks", "hold_masks", "shrink", "save", "load", "from_description", "trace", "check_masks", "liveness",
           "Liveness", "IndexAdd", "Expand", "ConstantMap", "Empty"]
