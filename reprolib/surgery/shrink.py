"""Filter masks -> a really smaller network that computes what the masked one computes.

    masked = apply_masks(model, masks)   # HRank's way: zeros, same shapes
    small = shrink(model, masks)         # fewer channels; same outputs as ``masked`` in eval mode
    save(small, "x.pt"); small = load("x.pt")

``masks`` maps Conv2d / Linear module names to boolean keep-vectors over their output filters.
``shrink`` traces the network with ``torch.fx``, finds with the abstract pass of ``abstract.py``
which channels of every tensor are used, then rebuilds each layer on those channels: a tensor's
channels are shared by the chain of per-channel operations (BN, ReLU, pooling) that follows the layer
or addition producing it, residual additions become ``IndexAdd`` (indexation-addition) where their
operands keep different channels, and the option-A shortcut's channel zero-padding disappears
(its padded channels are never used). The result is a ``torch.fx.GraphModule`` carrying a small
JSON-able ``description`` from which ``load`` rebuilds the architecture (no pickled modules).
"""
from __future__ import annotations

import copy
import json
import operator
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from ..device import of as device_of
from .abstract import ADD, RELU_FUNCTIONS, ZERO_PRESERVING, bn_after, liveness, unsupported
from .ops import ConstantMap, Empty, Expand, IndexAdd
from .inplace import mark_inplace

FORMAT = "reprolib-shrunk-1"
CHANNELWISE_MODULES = ZERO_PRESERVING + (nn.modules.batchnorm._BatchNorm, nn.MaxPool2d, nn.AvgPool2d,
                                         nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def trace(model: nn.Module, input_size) -> fx.GraphModule:
    """``model`` as a GraphModule whose nodes carry their output shapes (``node.meta['shape']``)."""
    gm = fx.symbolic_trace(model)
    was_training = gm.training
    p = next(gm.parameters(), None)
    like = dict(dtype=p.dtype, device=p.device) if p is not None else {}
    with torch.no_grad():
        ShapeProp(gm.eval()).propagate(torch.zeros(tuple(input_size), **like))
    gm.train(was_training)
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        node.meta["shape"] = tuple(meta.shape) if hasattr(meta, "shape") else None
    return gm


def check_masks(model: nn.Module, masks: dict) -> dict[str, torch.Tensor]:
    """Masks as bool tensors, checked against the model: known Conv2d/Linear names, right lengths."""
    out = {}
    for name, keep in masks.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"mask for {name!r}: the model has no such module "
                             f"(use names from model.named_modules(), e.g. 'layer1.0.conv1')") from None
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"mask for {name!r}: masks apply to Conv2d / Linear filters, not {type(m).__name__}")
        keep = torch.as_tensor(keep).flatten().cpu()  # the channel analysis runs on the CPU
        if keep.dtype != torch.bool:
            raise ValueError(f"mask for {name!r} must be boolean (True = keep the filter), got {keep.dtype}")
        if len(keep) != m.weight.shape[0]:
            raise ValueError(f"mask for {name!r} has {len(keep)} entries but the layer has {m.weight.shape[0]} filters")
        out[name] = keep
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict) -> nn.Module:
    """A copy of ``model`` with pruned filters zeroed as HRank does: the conv/linear weights and bias
    of each pruned filter, and the weight and bias of the BatchNorm right after it. Same shapes."""
    masks = check_masks(model, masks)
    model = copy.deepcopy(model)
    for name, keep in masks.items():
        m = model.get_submodule(name)
        keep = keep.to(m.weight.device)
        m.weight[~keep] = 0
        if m.bias is not None:
            m.bias[~keep] = 0
    for bn_name, src in bn_after(fx.symbolic_trace(model)).items():
        if src in masks:
            bn = model.get_submodule(bn_name)
            if bn.affine:
                keep = masks[src].to(bn.weight.device)
                bn.weight[~keep] = 0
                bn.bias[~keep] = 0
    return model


def hold_masks(model: nn.Module, masks: dict) -> list:
    """Keep the pruned filters of a masked model at zero while it trains: gradient hooks zero their
    conv/linear weights' and following BN's gradients (with SGD, momentum and weight decay then leave
    the zeros alone). Returns the hook handles (``h.remove()`` to release)."""
    masks = check_masks(model, masks)
    handles = []

    def hook(keep):
        return lambda g: g * keep.to(g.dtype).view(-1, *[1] * (g.dim() - 1))

    bn_src = {src: bn for bn, src in bn_after(fx.symbolic_trace(model)).items()}
    for name, keep in masks.items():
        mods = [model.get_submodule(name)] + ([model.get_submodule(bn_src[name])] if name in bn_src else [])
        for m in mods:
            for p in (m.weight, m.bias):
                if p is not None and p.requires_grad:
                    handles.append(p.register_hook(hook(keep.to(p.device))))
    return handles


def _kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """How ``node`` maps channels: input | producer | add | pad | channelwise | meta | output."""
    if node.op in ("placeholder", "output"):
        return "input" if node.op == "placeholder" else "output"
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return "producer"
        if isinstance(m, CHANNELWISE_MODULES):
            return "channelwise"
        if isinstance(m, nn.Flatten):
            return _flatten_kind(node)
        raise unsupported(f"module {node.target!r} ({type(m).__name__})")
    if node.op == "call_method":
        if node.target in ("relu", "relu_", "contiguous"):
            return "channelwise"
        if node.target == "flatten":
            return _flatten_kind(node)
        if node.target in ("size", "dim"):
            return "meta"
        raise unsupported(f"method .{node.target}() at node {node.name!r}")
    t = node.target
    if t in ADD:
        return "add"
    if t in RELU_FUNCTIONS or t in (F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d):
        return "channelwise"
    if t is torch.flatten:
        return _flatten_kind(node)
    if t is F.pad:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
        return "pad" if len(pad) >= 6 and any(pad[4:6]) else "channelwise"
    if t is operator.getitem:
        idx = node.args[1]
        if isinstance(idx, tuple) and (len(idx) < 2 or idx[1] == slice(None)) and \
                all(isinstance(i, slice) for i in idx):
            return "channelwise"
        raise unsupported(f"indexing {idx!r} at node {node.name!r} (only spatial slicing keeps channels)")
    raise unsupported(f"function {getattr(t, '__name__', t)!r} at node {node.name!r}")


def _flatten_kind(node: fx.Node) -> str:
    shape = node.args[0].meta["shape"]
    if any(s != 1 for s in shape[2:]):
        raise unsupported(f"flatten of a {tuple(shape)} tensor at node {node.name!r} (only 1x1 maps flatten "
                          f"channel-wise: pool to 1x1 first)")
    return "channelwise"


def _groups(gm: fx.GraphModule):
    """Each tensor node -> the node that produces its channels (a chain of per-channel ops shares them)."""
    root, kinds = {}, {}
    for node in gm.graph.nodes:
        kinds[node.name] = k = _kind(gm, node)
        if k == "channelwise":
            root[node.name] = root[node.args[0].name]
        elif k in ("input", "producer", "add", "pad"):
            root[node.name] = node.name
    return root, kinds


def _pad_front(node: fx.Node) -> int:
    pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
    return pad[4]


def _plan(gm, root, kinds, live_or_keep) -> dict[str, list[int]]:
    """Kept channels (original indices) of every group root. ``live_or_keep``: a Liveness, or the
    ``keep`` lists of a saved description."""
    keep: dict[str, list[int]] = {}
    nodes = {n.name: n for n in gm.graph.nodes}
    if isinstance(live_or_keep, dict):
        keep.update(live_or_keep)
    else:  # union of the used channels over each group
        used: dict[str, torch.Tensor] = {}
        for name, r in root.items():
            if kinds[r] in ("producer", "add") and name in live_or_keep.fwd:
                u = live_or_keep.live(name)
                used[r] = u if r not in used else used[r] | u
        keep.update({r: torch.nonzero(u).flatten().tolist() for r, u in used.items()})
    for name, node in nodes.items():
        if kinds[name] == "input":
            keep[name] = list(range(node.meta["shape"][1]))
        elif kinds[name] == "pad":
            front, n_out = _pad_front(node), node.meta["shape"][1]
            keep[name] = [c + front for c in keep[root[node.args[0].name]] if 0 <= c + front < n_out]
        elif kinds[name] in ("producer", "add"):
            keep.setdefault(name, [])
    return keep


def _slice_module(m: nn.Module, k_out: list[int], k_in: list[int] | None) -> nn.Module:
    """A copy of Conv2d / Linear / BatchNorm ``m`` on output channels ``k_out`` and inputs ``k_in``."""
    o = torch.tensor(k_out, dtype=torch.long)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        new = type(m)(len(k_out), eps=m.eps, momentum=m.momentum, affine=m.affine,
                      track_running_stats=m.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, name) is not None:
                getattr(new, name).data.copy_(getattr(m, name).data[o])
        if m.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(m.num_batches_tracked)
        return _like(new, m)
    i = torch.tensor(k_in, dtype=torch.long)
    if isinstance(m, nn.Conv2d):
        new = nn.Conv2d(len(k_in), len(k_out), m.kernel_size, m.stride, m.padding, m.dilation, 1,
                        m.bias is not None, m.padding_mode)
    else:
        new = nn.Linear(len(k_in), len(k_out), m.bias is not None)
    new.weight.data.copy_(m.weight.data[o][:, i])
    if m.bias is not None:
        new.bias.data.copy_(m.bias.data[o])
    return _like(new, m)


def _like(new: nn.Module, old: nn.Module) -> nn.Module:
    """``new`` in ``old``'s train/eval mode, its parameters frozen where ``old``'s are: a shrunk copy of an eval-mode
    network (BN on running statistics) or of a frozen one is the same."""
    for name, p in new.named_parameters(recurse=False):
        p.requires_grad_(getattr(old, name).requires_grad)
    return new.train(old.training)


def _replace(gm: fx.GraphModule, node: fx.Node, module: nn.Module, args) -> None:
    """Swap ``node`` for a call of ``module`` (a new submodule named after the node) on ``args``."""
    name = f"surgery_{node.name}"
    gm.add_submodule(name, module.train(gm.training))
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, tuple(args))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _build(gm: fx.GraphModule, root: dict, kinds: dict, keep: dict) -> fx.GraphModule:
    """Rebuild every layer of ``gm`` (in place) on the channels ``keep`` of its group."""
    nodes = list(gm.graph.nodes)
    # Channel sets are looked up through the *original* inputs of each node: rewiring (a removed pad,
    # a replaced addition) must not change which channel list an input tensor is read with.
    src = {n.name: [a.name if isinstance(a, fx.Node) else None for a in n.args] for n in nodes}
    k = lambda name: keep[root[name]]
    calls: dict[str, int] = {}
    for node in nodes:
        kind, shape, args = kinds[node.name], node.meta.get("shape"), src[node.name]
        if kind == "producer":
            calls[node.target] = calls.get(node.target, 0) + 1
            if calls[node.target] > 1:
                raise unsupported(f"module {node.target!r} called more than once (shared weights)")
            m, k_out, k_in = gm.get_submodule(node.target), k(node.name), k(args[0])
            if not k_out:
                _replace(gm, node, Empty(shape[2:]), node.args[:1])
            elif not k_in:
                bias = m.bias.data[k_out] if m.bias is not None else torch.zeros(len(k_out))
                _replace(gm, node, ConstantMap(bias, shape[2:]), node.args[:1])
            else:
                gm.add_submodule(node.target, _slice_module(m, k_out, k_in))
        elif kind == "channelwise" and not k(node.name):
            _replace(gm, node, Empty(shape[2:]), node.args[:1])
        elif kind == "channelwise" and node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                gm.add_submodule(node.target, _slice_module(m, k(node.name), None))
        elif kind == "add":
            if not k(node.name):
                _replace(gm, node, Empty(shape[2:]), node.args[:1])
                continue
            pos = {c: p for p, c in enumerate(k(node.name))}
            ka, kb = k(args[0]), k(args[1])
            sel_a = [i for i, c in enumerate(ka) if c in pos]
            sel_b = [i for i, c in enumerate(kb) if c in pos]
            _replace(gm, node, IndexAdd(len(pos), len(ka), sel_a, [pos[ka[i]] for i in sel_a],
                                        len(kb), sel_b, [pos[kb[i]] for i in sel_b]), node.args[:2])
        elif kind == "pad":
            if not k(node.name):
                _replace(gm, node, Empty(shape[2:]), node.args[:1])
                continue
            spatial = tuple((node.args[1] if len(node.args) > 1 else node.kwargs["pad"])[:4])
            if any(spatial):
                node.args = (node.args[0], spatial) + tuple(node.args[2:])
                node.kwargs = {kk: v for kk, v in node.kwargs.items() if kk != "pad"}
            else:
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
        elif kind == "output":
            out, name = node.args[0], args[0]
            if name is not None and len(k(name)) != gm_shape(nodes, name)[1]:
                gm.add_submodule("surgery_output", Expand(gm_shape(nodes, name)[1], k(name)))
                with gm.graph.inserting_before(node):
                    node.args = (gm.graph.call_module("surgery_output", (out,)),)
    mark_inplace(gm)  # additions whose operand is dead afterwards add into it at inference
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def gm_shape(nodes, name):
    return next(n.meta["shape"] for n in nodes if n.name == name)


def shrink(model: nn.Module, masks: dict, input_size=(1, 3, 32, 32), exact: bool = True) -> fx.GraphModule:
    """The really smaller network equal to ``apply_masks(model, masks)`` (in eval mode).

    ``input_size``: one input's shape (batch 1) for tracing; layers that lose all their inputs become
    constant maps of that spatial size. ``exact=False`` follows the document literally (channels that
    only carry a bias are dropped too; outputs may then differ slightly from the masked network)."""
    masks = check_masks(model, masks)
    gm = trace(apply_masks(model, masks), input_size)
    root, kinds = _groups(gm)
    live = liveness(gm, masks, input_size, exact=exact)
    keep = _plan(gm, root, kinds, live)
    small = _build(gm, root, kinds, keep).to(device_of(model))  # new layers are built on the CPU
    small.description = {
        "format": FORMAT, "model": getattr(model, "registry_name", None),
        "model_kwargs": dict(getattr(model, "registry_kwargs", {})), "input_size": list(input_size),
        "exact": exact, "keep": {r: keep[r] for r in sorted(set(root.values())) if kinds[r] in ("producer", "add")},
    }
    small.liveness = live
    return small


def from_description(description: dict) -> fx.GraphModule:
    """The shrunk architecture of ``description`` (weights still those of a fresh model)."""
    from .. import models
    if description.get("format") != FORMAT:
        raise ValueError(f"not a shrunk-network description (format {description.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if not description.get("model"):
        raise ValueError("the description names no registry model: shrink a model made with "
                         "reprolib.models.create(name) so that it can be rebuilt")
    gm = trace(models.create(description["model"], **description["model_kwargs"]), description["input_size"])
    root, kinds = _groups(gm)
    keep = _plan(gm, root, kinds, {r: list(v) for r, v in description["keep"].items()})
    small = _build(gm, root, kinds, keep)
    small.description = copy.deepcopy(description)
    return small


def save(model: fx.GraphModule, path) -> None:
    """``path``: the state dict; ``<path stem>.arch.json`` beside it: the description."""
    from ..train import save_atomic
    if not hasattr(model, "description"):
        raise ValueError("save() expects a network returned by shrink() (it carries its description)")
    path = Path(path)
    save_atomic(model.state_dict(), path)
    arch = path.with_name(path.stem + ".arch.json")
    tmp = arch.with_name(arch.name + ".tmp")
    tmp.write_text(json.dumps(model.description))
    tmp.replace(arch)


def load(path) -> fx.GraphModule:
    """The shrunk network saved by ``save(model, path)``, rebuilt and loaded with ``weights_only``."""
    path = Path(path)
    arch = path.with_name(path.stem + ".arch.json")
    if not arch.exists():
        raise FileNotFoundError(f"{arch} is missing: a shrunk network is saved as {path.name} + {arch.name}")
    model = from_description(json.loads(arch.read_text()))
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
