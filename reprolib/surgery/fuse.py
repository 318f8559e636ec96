"""The indexation-addition fused into the convolution that produces its operand, for inference.

In a shrunk ResNet a block's last convolution keeps ``k`` of the ``n`` channels of the residual
stream and ``IndexAdd`` scatters its output into the stream. The same convolution with ``n``
output filters, the kept ones at their stream positions and zero filters elsewhere (zero bias),
produces the operand already in the stream's layout, and the indexation-addition becomes a plain
addition (which ONNX Runtime fuses into the convolution). The zero filters cost real multiply-adds,
so the fusion is applied only where it costs no more: CPU convolution kernels (oneDNN's AVX-512
kernels, ONNX Runtime's NCHWc kernels) compute output channels in blocks of 16, so a convolution
with 7 filters costs as much as one with 16. ``block=16`` fuses only where the number of 16-filter
blocks stays the same; ``block=None`` fuses everywhere. The function computed is unchanged
(added channels are exact zeros); the FLOPs of the *pruned architecture* are those of the network
before fusion, which is what ``counting.count`` should be given.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.fx as fx
import torch.nn as nn

from .inplace import mark_inplace
from .ops import IndexAdd


def _widened(conv: nn.Conv2d, n: int, sel: list[int], pos: list[int]) -> nn.Conv2d:
    """``conv`` with ``n`` output filters: filter ``sel[i]`` at position ``pos[i]``, zeros elsewhere."""
    new = nn.Conv2d(conv.in_channels, n, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                    True, conv.padding_mode).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.bias.zero_()
        new.weight[pos] = conv.weight[sel]
        if conv.bias is not None:
            new.bias[pos] = conv.bias[sel]
    return new.train(conv.training)


def fuse_index_add(model: fx.GraphModule, block: int | None = 16) -> fx.GraphModule:
    """A copy of the shrunk (and usually BN-folded, see ``fold_bn``) network ``model`` in which every
    ``IndexAdd`` operand produced directly by a Conv2d used nowhere else is produced in the output's
    channel layout by a widened copy of that convolution (see the module docstring). ``block``: fuse
    only where ``ceil(n / block) == ceil(k / block)`` (``None``: always). The copy records the
    widened convolutions in ``.fused`` (``[(conv, k, n), ...]``)."""
    if not isinstance(model, fx.GraphModule):
        raise TypeError(f"fuse_index_add expects a network returned by shrink() (a GraphModule), got {type(model).__name__}")
    if block is not None and int(block) < 1:
        raise ValueError(f"block must be a positive number of channels or None, got {block}")
    gm = copy.deepcopy(model)
    gm.__dict__.pop("description", None)  # the widened layers no longer match the saved description
    fused = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), IndexAdd):
            continue
        add = gm.get_submodule(node.target)
        sides = {"a": (add.n_a, add.sel_a.tolist(), add.pos_a.tolist()), "b": (add.n_b, add.sel_b.tolist(), add.pos_b.tolist())}
        for j, side in enumerate("ab"):
            src = node.args[j]
            n_x, sel, pos = sides[side]
            if add.plan[j].kind in ("whole", "none") or not isinstance(src, fx.Node) or src.op != "call_module":
                continue
            conv = gm.get_submodule(src.target)
            if not isinstance(conv, nn.Conv2d) or len(src.users) != 1 or conv.groups != 1:
                continue
            if sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == src.target) != 1:
                continue
            if block is not None and math.ceil(add.n / block) != math.ceil(conv.out_channels / block):
                continue
            gm.add_submodule(src.target, _widened(conv, add.n, sel, pos))
            sides[side] = (add.n, list(range(add.n)), list(range(add.n)))
            fused.append((src.target, conv.out_channels, add.n))
        new = IndexAdd(add.n, sides["a"][0], sides["a"][1], sides["a"][2], sides["b"][0], sides["b"][1], sides["b"][2])
        gm.add_submodule(node.target, new.to(add.sel_a.device).train(add.training))
    mark_inplace(gm)
    gm.graph.lint()
    gm.recompile()
    gm.fused = fused
    return gm.eval() if not model.training else gm
