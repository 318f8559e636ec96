"""Input-channel criteria on the registry's filter convention: which conv reads each filter's output.

Channel-pruning methods (He et al. 2017's LASSO, ThiNet, KSE, DCP) judge the *input channels* of a conv
``B``; removing input channel ``j`` of ``B`` is removing filter ``j`` of the conv ``A`` that produces it, when
``A``'s output reaches nothing but ``B`` through per-channel operations (BatchNorm, ReLU-like activations,
pooling): the summary's Section 4 and its Figure 2. The registry scores filters (``{A: scores over A's
filters}``), so these criteria score ``A``'s filter ``j`` by ``B``'s input channel ``j``.

Only such "internal" convs have a single consumer. In a CIFAR ResNet they are the first conv of each residual
block (``layerS.B.conv1``, read by ``layerS.B.conv2``): the stem and every block's ``conv2`` feed a residual
addition, whose channels are also carried by the shortcut; pruning the branch's filter does not remove any input
channel of a conv. He et al. and ThiNet likewise prune only the layers inside the residual branch of a ResNet,
and so does DCP's code (the input channels of each block's ``conv2``). ``internal_layers`` lists them;
asking these criteria for any other layer is an error that says so.
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from .filters import _call_of, _graph, resolve_layers

PER_CHANNEL_MODULES = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.GELU,
                       nn.SiLU, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d)
PER_CHANNEL_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.dropout, F.max_pool2d,
                         F.avg_pool2d)
PER_CHANNEL_METHODS = ("relu", "relu_", "contiguous")


def _per_channel(model: nn.Module, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), PER_CHANNEL_MODULES)
    if node.op == "call_function":
        return node.target in PER_CHANNEL_FUNCTIONS
    return node.op == "call_method" and node.target in PER_CHANNEL_METHODS


def _consumer(model: nn.Module, graph: torch.fx.Graph, layer: str) -> str:
    node = _call_of(graph, layer)
    while True:
        users = list(node.users)
        if len(users) != 1:
            raise ValueError(
                f"{layer!r}: its output goes to {len(users)} places ({[u.name for u in users]}), not to one conv: "
                "input-channel criteria score a filter by the one conv input channel it feeds; in a ResNet only the "
                "first conv of each residual block has one (see reprolib.criteria.channels.internal_layers)")
        user = users[0]
        if user.op == "call_module" and isinstance(model.get_submodule(user.target), nn.Conv2d):
            conv = model.get_submodule(user.target)
            if conv.groups != 1:
                raise ValueError(f"{layer!r} feeds the grouped conv {user.target!r} (groups={conv.groups}); "
                                 "input-channel criteria need an ungrouped consumer")
            return user.target
        if not _per_channel(model, user):
            raise ValueError(f"{layer!r}: its output reaches {user.name!r} ({user.op} {user.target}) before any conv; "
                             "input-channel criteria need layer -> (BN, ReLU, pooling) -> conv "
                             "(see reprolib.criteria.channels.internal_layers)")
        node = user


def consumers(model: nn.Module, layers) -> dict[str, str]:
    """``{layer: the conv that reads its filters}`` through per-channel ops only; a clear error for a layer that
    has none (e.g. a ResNet block's ``conv2``, whose output goes to the residual addition)."""
    mods = resolve_layers(model, layers, (nn.Conv2d,))
    graph = _graph(model)
    out = {}
    for name, m in mods.items():
        out[name] = c = _consumer(model, graph, name)
        if model.get_submodule(c).in_channels != m.out_channels:
            raise ValueError(f"{name!r} has {m.out_channels} filters but its consumer {c!r} reads "
                             f"{model.get_submodule(c).in_channels} channels")
    return out


def internal_layers(model: nn.Module) -> list[str]:
    """The convs whose filters feed exactly one conv through per-channel ops, in module order: the layers
    input-channel criteria can score (ResNet-56: the 27 ``layerS.B.conv1``; a VGG: every conv but the last)."""
    graph = _graph(model)
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            try:
                _consumer(model, graph, name)
            except ValueError:
                continue
            out.append(name)
    return out
