"""Which operands of each ``IndexAdd`` are dead after the addition, so that it may add into them.

A pass over the traced graph of a shrunk network. Tensors are grouped by *storage*: a node that
may return its input or a view of it (in-place ReLU, Identity, flatten, indexing, ...) shares its
input's storage; only layers known to allocate their output (convolutions, BatchNorm, pooling,
padding, additions and the surgery's own modules) start a new one. Anything not known to allocate
is assumed to alias, which only ever forbids an in-place addition, never allows a wrong one. An
operand may be overwritten iff its storage is made by such a layer (not the network's input nor a
constant), is not the other operand's, and no node reads it after the addition.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .ops import ConstantMap, Empty, Expand, IndexAdd

ALLOCATING_MODULES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.MaxPool2d, nn.AvgPool2d,
                      nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, IndexAdd, Expand, ConstantMap, Empty)
ALLOCATING_FUNCTIONS = (F.pad, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d, F.conv2d, F.linear,
                        operator.add, torch.add)


def _allocates(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), ALLOCATING_MODULES)
    return node.op == "call_function" and node.target in ALLOCATING_FUNCTIONS


def mark_inplace(gm: fx.GraphModule) -> fx.GraphModule:
    """Set ``inplace`` (a pair of bools) on every ``IndexAdd`` called in ``gm``; returns ``gm``."""
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    storage: dict[fx.Node, fx.Node | None] = {}
    for n in nodes:
        if _allocates(gm, n):
            storage[n] = n
        elif n.op in ("placeholder", "get_attr", "output"):
            storage[n] = None  # the caller's input or a constant: never overwritten
        else:
            src = next((a for a in n.args if isinstance(a, fx.Node)), None)
            storage[n] = storage.get(src) if src is not None else None
    sharers: dict[fx.Node, list[fx.Node]] = {}
    for n, s in storage.items():
        if s is not None:
            sharers.setdefault(s, []).append(n)
    for n in nodes:
        if n.op != "call_module" or not isinstance(gm.get_submodule(n.target), IndexAdd):
            continue
        operands = [a if isinstance(a, fx.Node) else None for a in n.args[:2]]
        roots = [storage.get(a) if a is not None else None for a in operands]
        flags = []
        for i, root in enumerate(roots):
            ok = root is not None and root is not roots[1 - i]
            if ok:
                readers = [m for m in sharers[root]] + [u for m in sharers[root] for u in m.users]
                ok = all(order[r] < order[n] for r in readers if r is not n)
            flags.append(ok)
        gm.get_submodule(n.target).inplace = tuple(flags)
    return gm
