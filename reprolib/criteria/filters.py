"""Filter-level criteria: one importance score per output filter of each layer (higher = keep).

From the weights: ``l1norm`` (Li et al. 2017), ``fpgm`` (He et al. 2019), ``bn_gamma`` (network
slimming, Liu et al. 2017), ``random``. From data, through forward hooks (``activations``):
``apoz`` (Hu et al. 2016), ``hrank`` (Lin et al. 2020), ``taylor`` (Molchanov et al. 2017).
Data-based criteria run the model in eval mode (BN uses its running statistics, as HRank's
rank_generation.py does) and restore its mode afterwards. ``batches`` is any iterable of
(images, labels); a generator is used up, so give each criterion its own (or pass a list).
"""
from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import register
from ..masks import conv_layers

SCORED = (nn.Conv2d, nn.Linear)


# ----------------------------------------------------------------------------- shared helpers

def resolve_layers(model: nn.Module, layers, types=SCORED) -> dict[str, nn.Module]:
    """``{name: module}`` for the requested layer names (``None``: every Conv2d), checked."""
    if layers is None:
        layers = conv_layers(model)
    elif isinstance(layers, str):
        layers = [layers]
    out = {}
    for name in layers:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the model has no module {name!r}; its conv layers are e.g. "
                             f"{conv_layers(model)[:3]} (see reprolib.masks.conv_layers)") from None
        if not isinstance(m, types):
            raise ValueError(f"{name!r} is a {type(m).__name__}; this criterion scores "
                             f"{' / '.join(t.__name__ for t in types)} layers")
        out[name] = m
    if not out:
        raise ValueError("no layers to score: layers is empty")
    return out


def _graph(model: nn.Module) -> torch.fx.Graph:
    try:
        return torch.fx.symbolic_trace(model).graph
    except Exception as e:  # data-dependent control flow, unsupported ops, ...
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx to find the module that "
                         f"follows each layer ({type(e).__name__}: {e})") from e


def _call_of(graph: torch.fx.Graph, name: str) -> torch.fx.Node:
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == name]
    if len(calls) != 1:
        raise ValueError(f"module {name!r} is called {len(calls)} times in the forward pass; hooks need "
                         "exactly one call (a shared module would mix several layers' outputs)")
    return calls[0]


def bn_after(model: nn.Module, layers: Iterable[str]) -> dict[str, str]:
    """Name of the BatchNorm that directly consumes each layer's output (found in the torch.fx graph)."""
    graph, out = _graph(model), {}
    for name in layers:
        users = list(_call_of(graph, name).users)
        bn = users[0].target if len(users) == 1 and users[0].op == "call_module" else None
        if bn is None or not isinstance(model.get_submodule(bn), nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"{name!r} is not directly followed by a BatchNorm (its output goes to "
                             f"{[u.name for u in users]}); bn_gamma needs conv -> BN pairs")
        out[name] = bn
    return out


def relu_after(model: nn.Module, layers: Iterable[str]) -> dict[str, str]:
    """Name of the ReLU module that first follows each layer along its output's only path, through
    BN and residual additions: in a CIFAR ResNet block conv1 -> relu1, conv2 -> relu2 (after the
    addition); the stem conv1 -> relu; in VGG the ReLU after conv + BN. HRank ranks these maps."""
    graph, out = _graph(model), {}
    for name in layers:
        node = _call_of(graph, name)
        while not (node.op == "call_module" and isinstance(model.get_submodule(node.target), nn.ReLU)):
            users = list(node.users)
            if len(users) != 1 or users[0].op == "output" or (
                    users[0].op == "call_module" and isinstance(model.get_submodule(users[0].target), SCORED)):
                raise ValueError(f"no ReLU module follows {name!r} on a single path ({node.name} feeds "
                                 f"{[u.name for u in users]}); hook-based criteria need conv -> ... -> nn.ReLU")
            node = users[0]
        _call_of(graph, node.target)  # the ReLU must not be shared with other layers
        out[name] = node.target
    return out


def activations(model: nn.Module, modules: dict[str, nn.Module], batches, *, n_batches: int | None = None,
                grad: bool = False, desc: str = "activations"):
    """The shared hook logic of data-based criteria: yield ``(logits, labels, {name: output})`` for
    each of the first ``n_batches`` batches, with the output of every module in ``modules``.

    Outputs are copies (later in-place ops cannot change them). With ``grad=True`` they stay in the
    autograd graph: the hook hands the model a clone, so ``torch.autograd.grad(loss, outputs)`` is
    the gradient with respect to the module's own output.
    """
    if batches is None:
        raise ValueError(f"{desc} needs data: pass batches, e.g. reprolib.data.batches(x, y, 128)")
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    store: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, inputs, output):
            if name in store:
                raise RuntimeError(f"{name!r} ran twice in one forward pass; hooks need one call per batch")
            if grad:
                store[name] = output
                return output.clone()
            store[name] = output.detach().clone()
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        total = min(n_batches or len(batches), len(batches)) if hasattr(batches, "__len__") else n_batches
        for x, y in tqdm(itertools.islice(batches, n_batches), total=total, desc=desc, leave=False):
            store.clear()
            x, y = x.to(device), y.to(device)
            if grad:  # outputs need a graph even when the weights are frozen
                x = x.detach().requires_grad_()
            with torch.set_grad_enabled(grad):
                logits = model(x)
            seen += 1
            yield logits, y, dict(store)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError(f"{desc}: batches yielded no data")


def _channel_dims(a: torch.Tensor) -> list[int]:
    return [d for d in range(a.dim()) if d != 1]


# ----------------------------------------------------------------------------- from the weights

@register("l1norm")
def l1norm(model, layers, batches=None):
    """Li et al.: sum of |W| over each output filter."""
    return {n: m.weight.detach().abs().flatten(1).sum(1) for n, m in resolve_layers(model, layers).items()}


@register("fpgm")
def fpgm(model, layers, batches=None):
    """He et al. 2019: sum of Euclidean distances from each filter to the layer's other filters.
    The filter nearest the geometric median (the most replaceable one) scores lowest."""
    out = {}
    for n, m in resolve_layers(model, layers).items():
        w = m.weight.detach().flatten(1).double()
        d = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist")  # exact distances
        out[n] = d.sum(1).to(m.weight.dtype)
    return out


@register("bn_gamma")
def bn_gamma(model, layers, batches=None):
    """Network slimming: |gamma| of the BatchNorm that directly follows each layer."""
    mods = resolve_layers(model, layers)
    out = {}
    for n, bn_name in bn_after(model, mods).items():
        bn = model.get_submodule(bn_name)
        if bn.weight is None:
            raise ValueError(f"{bn_name!r} (after {n!r}) has no gamma: it was built with affine=False")
        out[n] = bn.weight.detach().abs().clone()
    return out


@register("random")
def random_scores(model, layers, batches=None, *, seed: int = 0):
    """Uniform random scores; each layer's draw depends only on (seed, layer name)."""
    out = {}
    for n, m in resolve_layers(model, layers).items():
        g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{n}".encode()))
        out[n] = torch.rand(m.weight.shape[0], generator=g)
    return out


# ----------------------------------------------------------------------------- from data

@register("apoz")
def apoz(model, layers, batches=None, *, n_batches: int | None = None):
    """Hu et al.: 1 - APoZ, the share of non-zero post-ReLU activations of each channel (over images
    and positions). A channel that is always zero after its ReLU scores 0."""
    relus = relu_after(model, resolve_layers(model, layers))
    zeros, counts = {n: 0 for n in relus}, {n: 0 for n in relus}
    mods = {n: model.get_submodule(r) for n, r in relus.items()}
    for _, _, acts in activations(model, mods, batches, n_batches=n_batches, desc="apoz"):
        for n, a in acts.items():
            zeros[n] = zeros[n] + (a == 0).sum(_channel_dims(a)).double()
            counts[n] += a.numel() // a.shape[1]
    return {n: (1 - zeros[n] / counts[n]).float().cpu() for n in relus}


def _hrank(model, layers, batches, n_batches: int, rank_of: Callable, desc: str):
    """Average rank, over images, of each filter's post-ReLU feature map; ``rank_of``: (N, H, W) -> (N,)."""
    relus = relu_after(model, resolve_layers(model, layers, (nn.Conv2d,)))
    mods = {n: model.get_submodule(r) for n, r in relus.items()}
    sums, images = {n: 0 for n in relus}, 0
    for _, _, acts in activations(model, mods, batches, n_batches=n_batches, desc=desc):
        for n, a in acts.items():
            b, c, h, w = a.shape
            sums[n] = sums[n] + rank_of(a.reshape(b * c, h, w)).reshape(b, c).double().sum(0)
        images += b
    return {n: (s / images).float().cpu() for n, s in sums.items()}


@register("hrank")
def hrank(model, layers, batches=None, *, n_batches: int = 5):
    """HRank (Lin et al. 2020): average rank of each filter's feature map after its ReLU, over the
    images of the first ``n_batches`` batches (the official code: 5 batches of 128 training images).
    One batched ``torch.linalg.matrix_rank`` call per layer and batch, on all B*C maps; its default
    tolerance (max(H, W) * eps * largest singular value) is the one of HRank's torch.matrix_rank."""
    with torch.no_grad():
        return _hrank(model, layers, batches, n_batches, torch.linalg.matrix_rank, "hrank")


def _rank_per_map(maps: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.linalg.matrix_rank(m) for m in maps])


def hrank_reference(model, layers, batches=None, *, n_batches: int = 5):
    """``hrank`` with the official code's literal loop: one matrix_rank call per H x W map.
    For tests and benchmarks/hrank_rank.py; slow."""
    with torch.no_grad():
        return _hrank(model, layers, batches, n_batches, _rank_per_map, "hrank (per-map loop)")


def removed_output(model: nn.Module, layers: Iterable[str]) -> dict[str, str]:
    """Name of the module whose output pruning a filter of each layer really removes: the BatchNorm that
    directly consumes the layer's output (``surgery.apply_masks`` zeroes the filter *and* that BN's scale
    and shift, so the BN output channel becomes 0), else the layer itself."""
    graph, out = _graph(model), {}
    for name in layers:
        users = list(_call_of(graph, name).users)
        bns = [u for u in users if u.op == "call_module"
               and isinstance(model.get_submodule(u.target), nn.modules.batchnorm._BatchNorm)]
        if not bns:
            out[name] = name
            continue
        if len(users) != 1:
            raise ValueError(f"{name!r} feeds a BatchNorm and also {[u.name for u in users if u not in bns]}: "
                             "pruning it removes more than one tensor, which one Taylor score cannot measure")
        _call_of(graph, bns[0].target)  # a BN shared by several calls would mix tensors
        out[name] = bns[0].target
    return out


@register("taylor")
@torch.enable_grad()  # needs dL/da: it must work inside a caller's torch.no_grad() too
def taylor(model, layers, batches=None, *, n_batches: int | None = None, per_example: bool = True):
    """First-order Taylor criterion on feature maps (Molchanov et al., ICLR 2017, their Eq. 8; not the
    2019 CVPR variant on BN parameters or weights): for each example, |mean over the positions of the
    map of a * dL/da|, averaged over the examples of all batches. ``a`` is the tensor that pruning the
    filter removes: the output of the BatchNorm right after the layer (``removed_output``), else the
    layer's own output; for conv -> BN -> ReLU this equals the score of the ReLU output, since
    relu'(a) zeroes exactly the positions where relu(a) is 0. L is the cross-entropy *summed* over
    the batch (BN in eval mode), so dL/da is each example's own gradient, as the paper computes the
    criterion "for each example separately".

    Normalisation: the scores are raw. The paper's layer-wise L2 normalisation (their Eq. 9) is not
    applied: it cannot change a per-layer ranking, and the criteria benchmark's global scope divides each
    layer's scores by their mean, which cancels any per-layer scale (the L2 normalisation included).
    Their FLOPs regulariser is not used either. ``per_example=False``: |mean over batch and positions|
    per batch instead (a variant, kept for comparison)."""
    mods = resolve_layers(model, layers)
    removed = {n: model.get_submodule(t) for n, t in removed_output(model, mods).items()}
    sums, count = {n: 0 for n in mods}, 0
    for logits, y, acts in activations(model, removed, batches, n_batches=n_batches, grad=True, desc="taylor"):
        loss = F.cross_entropy(logits, y, reduction="sum")
        grads = torch.autograd.grad(loss, list(acts.values()), allow_unused=True)
        for (n, a), g in zip(acts.items(), grads):
            prod = (a * g).detach() if g is not None else torch.zeros_like(a).detach()
            if per_example:  # (N, C, positions) -> per example and channel, then summed over examples
                s = prod.reshape(prod.shape[0], prod.shape[1], -1).mean(2).abs().sum(0)
            else:
                s = prod.mean(_channel_dims(prod)).abs()
            sums[n] = sums[n] + s.double()
        count += len(y) if per_example else 1
    return {n: (s / count).float().cpu() for n, s in sums.items()}
