"""ThiNet (Luo et al., ICCV 2017; TPAMI 2018) as the source document uses it on VGG-16.

ThiNet prunes the filters of conv layer i by looking at layer i+1: a channel of layer i+1's input
(= a filter of layer i) can go if the other channels, reweighted, still reconstruct layer i+1's
output. The pipeline, one layer pair at a time:

1. ``collect``: m training rows. Row t picks an image, a filter c of layer i+1 and an output
   position; ``X[t, j]`` is channel j's contribution to that output value (the k x k window of
   the input times filter c's kernel for channel j, summed), ``y[t]`` the output value without
   bias, so ``y = X.sum(1)``.
2. Selection of the channels kept, two greedy variants (both vectorised, with a literal
   loop-per-candidate ``*_reference`` twin that returns the same channels):
   * ``select_greedy_ls`` - **the document's Algorithm 1** (ThiNet TPAMI, "Eq. 8"): grow the kept
     set S one channel at a time, each time taking the channel whose single-variable least squares
     best explains the current residual, then refit all of S by least squares (1e-8 ridge) and
     update the residual. This is the default of ``thinet_prune``.
   * ``select_greedy`` - the ICCV 2017 rule (the summary-of-pruning document's Eq. 14): grow the
     removed set T one channel at a time, each time the channel that keeps ``||sum_{j in T} X[:, j]||^2``
     smallest.
3. ``ls_scales``: least-squares scales of the kept channels (``argmin ||y - X_S w||^2 + ridge ||w||^2``,
   ridge 1e-8 as the document adds), folded into layer i+1's weights by ``prune_layer``.

Kept channels: ``n_kept(C, r) = ceil(C * r)`` (at least 1), with r the share of channels KEPT: the
document's loop ``while |S| < C x r`` stops exactly there. (The official ThiNet code uses
``int(C * r)``, i.e. floor; the two differ when C * r is not an integer, e.g. 64 * 0.8.)

Reading of the document, where it leaves room (see also ``thinet_prune``):
* it says y holds "the true values at the input of the (i+2)'th layer"; Algorithm 1 and ThiNet
  need the pre-activation output of layer i+1 without bias (what ``y = X.sum(1)`` means), which is
  what we use;
* it adds 1e-8 "to the matrix" to invert it; we add ``ridge * I`` to every Gram matrix inverted,
  the 1 x 1 ones of the candidate step included (a dead, all-zero channel would divide by zero);
* Section 2 says the scales are applied to "the remaining filters at i'th layer" but also that the
  preserved channels "at the (i+1)'th layer" are scaled; with a BatchNorm between the two layers
  only the latter reconstructs anything (BN would normalise a scaled filter back), and it is what
  ThiNet does: the scales multiply layer i+1's input weights;
* "compression rate r" is, in Algorithm 1, the share of channels kept per layer (so VGG conv
  parameters shrink roughly as r^2), while the same column of Table 1 means a share of
  parameters for the document's own method: the two are not compressed alike at equal r;
* the last conv layer is not pruned (the document's stated limitation): ``prune_layer`` refuses it.
"""
from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import replayable
from ..surgery.vgg import conv_names, remove_filters

RIDGE = 1e-8  # the document's regulariser


class Samples(NamedTuple):
    X: torch.Tensor      # float64 [m, C]: per-input-channel contributions
    y: torch.Tensor      # float64 [m]: layer i+1's pre-activation output minus bias (= X.sum(1))
    where: torch.Tensor  # int64 [m, 4]: (image index in the batch stream, filter, row, column)


class _Stop(Exception):
    """Raised by the capture hook: nothing after layer i+1 needs computing."""


def n_kept(channels: int, r: float) -> int:
    """Channels kept at keep-share ``r``: ``ceil(C * r)``, at least 1 (Algorithm 1's loop bound)."""
    if not 0 < r <= 1:
        raise ValueError(f"r is the share of channels kept and must be in (0, 1]; got {r}")
    return max(1, math.ceil(round(channels * r, 9)))


def _check_pair(model: nn.Module, layer_i: str, layer_next: str) -> list[str]:
    names = conv_names(model)
    if layer_i not in names:
        raise ValueError(f"layer_i={layer_i!r} is not a conv layer of model.features; choose one of {names}")
    k = names.index(layer_i)
    if k == len(names) - 1:
        raise ValueError(f"{layer_i} is the last conv layer: ThiNet needs a following conv layer and does not "
                         "prune it (the document's stated limitation); use "
                         "reprolib.surgery.vgg.remove_filters to remove its filters without reconstruction")
    if layer_next != names[k + 1]:
        raise ValueError(f"layer_next={layer_next!r} must be the conv layer right after {layer_i}: {names[k + 1]!r}")
    return names


# --------------------------------------------------------------------------- 1. samples

@torch.no_grad()
def collect(model: nn.Module, layer_i: str, layer_next: str, batches, n_samples: int = 10_000, seed: int = 0,
            *, samples_per_image: int = 10) -> Samples:
    """ThiNet's training set for pruning ``layer_i`` (a conv name, e.g. "features.0") through
    ``layer_next`` (the next conv): ``samples_per_image`` random (filter, position) draws per image,
    as ThiNet's code does (10), until ``n_samples`` rows. ``batches``: iterable of images or
    (images, labels), normalised. The model runs in eval mode (BN running statistics) and stops at
    ``layer_next``; layers before it are whatever the model currently is (ThiNet samples the
    partially pruned network). The sampling runs on the model's device; the positions are drawn on the
    CPU (the same rows on any device) and the samples come back on the CPU, where the selection runs."""
    _check_pair(model, layer_i, layer_next)
    conv = model.get_submodule(layer_next)
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or isinstance(conv.padding, str) \
            or conv.padding_mode != "zeros":
        raise ValueError(f"{layer_next}: collect handles stride-1, undilated, ungrouped, zero-padded convs only")
    g = torch.Generator().manual_seed(seed)
    dev = conv.weight.device
    seen: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        seen["x"], seen["out"] = inputs[0], output
        raise _Stop

    handle = conv.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    Xs, ys, wheres, got, images = [], [], [], 0, 0
    weight = conv.weight.double()
    bias = conv.bias.double() if conv.bias is not None else None
    kh, kw = conv.kernel_size
    try:
        for batch in tqdm(batches, desc=f"ThiNet samples {layer_i}", leave=False):
            xb = batch[0] if isinstance(batch, (tuple, list)) else batch
            try:
                model(xb.to(dev))
            except _Stop:
                pass
            x, out = seen["x"].double(), seen["out"].double()
            b, c, _, _ = x.shape
            _, f_out, ho, wo = out.shape
            k = min(samples_per_image * b, n_samples - got)
            n = torch.arange(b).repeat_interleave(samples_per_image)[:k]
            f = torch.randint(f_out, (k,), generator=g)
            h = torch.randint(ho, (k,), generator=g)
            w = torch.randint(wo, (k,), generator=g)
            n, f, h, w = (t.to(dev) for t in (n, f, h, w))
            xp = F.pad(x, (conv.padding[1], conv.padding[1], conv.padding[0], conv.padding[0]))
            rows = (h[:, None] + torch.arange(kh, device=dev))[:, None, :, None]
            cols = (w[:, None] + torch.arange(kw, device=dev))[:, None, None, :]
            chans = torch.arange(c, device=dev)[None, :, None, None]
            patch = xp[n[:, None, None, None], chans, rows, cols]  # [k, C, kh, kw]
            Xs.append((patch * weight[f]).sum((2, 3)))
            ys.append(out[n, f, h, w] - (bias[f] if bias is not None else 0))
            wheres.append(torch.stack([n + images, f, h, w], 1))
            got, images = got + k, images + b
            if got >= n_samples:
                break
    finally:
        handle.remove()
        model.train(was_training)
    if got < n_samples:
        raise ValueError(f"the batches gave {got} samples from {images} images, fewer than n_samples={n_samples}: "
                         f"pass more batches, a smaller n_samples or a larger samples_per_image ({samples_per_image})")
    return Samples(torch.cat(Xs).cpu(), torch.cat(ys).cpu(), torch.cat(wheres).cpu())


# --------------------------------------------------------------------------- 2. selection

def _matrix(X) -> torch.Tensor:
    X = torch.as_tensor(X)
    if X.dim() != 2 or X.shape[1] < 1:
        raise ValueError(f"X must be a [samples, channels] matrix; got shape {tuple(X.shape)}")
    return X.double()


def select_greedy(X, r: float) -> torch.Tensor:
    """ICCV ThiNet: removed set T grown greedily minimising ``||sum_{j in T} X[:, j]||^2`` until
    ``n_kept(C, r)`` channels remain; returns the kept channel indices, ascending.

    Every candidate is scored at once: with s the running sum of removed columns,
    ``||s + x_c||^2 = ||s||^2 + 2 x_c.s + ||x_c||^2`` and ``x_c.s`` is a running sum of rows of the
    Gram matrix, so a step costs O(C) after one O(m C^2) Gram product."""
    X = _matrix(X)
    C = X.shape[1]
    G = X.T @ X
    cross = torch.zeros(C, dtype=X.dtype)       # x_c . s for every c
    s2 = torch.zeros((), dtype=X.dtype)         # ||s||^2
    removed = torch.zeros(C, dtype=torch.bool)
    for _ in range(C - n_kept(C, r)):
        value = (s2 + 2 * cross + G.diagonal()).masked_fill(removed, math.inf)
        j = int(value.argmin())                 # first minimum, as the reference's strict "<"
        removed[j], s2 = True, value[j]
        cross += G[j]
    return (~removed).nonzero().flatten()


def select_greedy_reference(X, r: float) -> torch.Tensor:
    """``select_greedy`` written as ThiNet's pseudo code: a Python loop over candidates."""
    X = _matrix(X)
    C = X.shape[1]
    cols = X.T.contiguous()
    s = torch.zeros(X.shape[0], dtype=X.dtype)
    removed: list[int] = []
    while C - len(removed) > n_kept(C, r):
        best, best_j = math.inf, -1
        for j in range(C):
            if j in removed:
                continue
            value = (s + cols[j]).pow(2).sum().item()
            if value < best:
                best, best_j = value, j
        removed.append(best_j)
        s += cols[best_j]
    return torch.tensor(sorted(set(range(C)) - set(removed)), dtype=torch.long)


def _targets(X: torch.Tensor, y) -> torch.Tensor:
    y = X.sum(1) if y is None else torch.as_tensor(y).double().flatten()
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y has {y.shape[0]} entries for {X.shape[0]} rows of X")
    return y


def select_greedy_ls(X, r: float, y=None, ridge: float = RIDGE) -> torch.Tensor:
    """The document's Algorithm 1 (ThiNet TPAMI): kept set S grown greedily, each step the channel
    whose one-variable least squares ``w = x.yhat / (x.x + ridge)`` leaves the smallest
    ``||yhat - w x||^2``, then ``w_S`` refit on all of S and ``yhat = y - X_S w_S``; stops at
    ``n_kept(C, r)``. ``y`` defaults to ``X.sum(1)``. Returns the kept indices, ascending.

    Vectorised, in channel space: with the Gram matrix G = X^T X and b = X^T y computed once,
    ``X^T yhat = b - G[:, S] w_S`` scores all candidates in one small product (``||yhat||^2``, the
    same for every candidate, is left out of the scores), and the refit reuses a Cholesky factor
    of ``G_SS + ridge I`` grown by one row per step. A step costs O(C |S|) instead of passes over
    the m samples and an |S|^3 solve."""
    X = _matrix(X)
    y = _targets(X, y)
    C, k_max = X.shape[1], n_kept(X.shape[1], r)
    G, b = X.T @ X, X.T @ y
    sq = G.diagonal()
    L = torch.zeros(k_max, k_max, dtype=X.dtype)   # Cholesky factor of G_SS + ridge I
    rows = torch.zeros(k_max, C, dtype=X.dtype)     # G[S], in the order chosen
    chosen: list[int] = []
    taken = torch.zeros(C, dtype=torch.bool)
    xy = b                                          # X^T yhat, yhat = y before any channel is chosen
    for k in range(k_max):
        w = xy / (sq + ridge)
        value = (w * w * sq - 2 * w * xy).masked_fill(taken, math.inf)
        j = int(value.argmin())
        l = torch.linalg.solve_triangular(L[:k, :k], G[chosen, j][:, None], upper=False).flatten()
        L[k, :k] = l
        L[k, k] = (sq[j] + ridge - l @ l).clamp_min(ridge).sqrt()
        rows[k] = G[j]
        chosen.append(j)
        taken[j] = True
        w_S = torch.cholesky_solve(b[chosen][:, None], L[:k + 1, :k + 1]).flatten()
        xy = b - rows[:k + 1].T @ w_S
    return torch.tensor(sorted(chosen), dtype=torch.long)


def select_greedy_ls_reference(X, r: float, y=None, ridge: float = RIDGE) -> torch.Tensor:
    """``select_greedy_ls`` line by line as Algorithm 1: a Python loop over candidates and the
    refit ``(X_S^T X_S + ridge I)^{-1} X_S^T y`` formed from the samples at every step."""
    X = _matrix(X)
    y = _targets(X, y)
    C = X.shape[1]
    cols = X.T.contiguous()
    S: list[int] = []
    yhat = y
    while len(S) < n_kept(C, r):
        best, best_i = math.inf, -1
        for i in range(C):
            if i in S:
                continue
            x = cols[i]
            w_hat = (x @ yhat) / (x @ x + ridge)
            value = (yhat - x * w_hat).pow(2).sum().item()
            if value < best:
                best, best_i = value, i
        S.append(best_i)
        XS = X[:, S]
        w = torch.linalg.solve(XS.T @ XS + ridge * torch.eye(len(S), dtype=X.dtype), XS.T @ y)
        yhat = y - XS @ w
    return torch.tensor(sorted(S), dtype=torch.long)


# --------------------------------------------------------------------------- 3. scaling and pruning

def ls_scales(X, keep, ridge: float = RIDGE, y=None) -> torch.Tensor:
    """Least-squares scales of the kept channels: ``argmin_w ||y - X[:, keep] w||^2 + ridge ||w||^2``
    in closed form (``y`` defaults to ``X.sum(1)``, the unpruned output). float64 [len(keep)]."""
    X = _matrix(X)
    y = _targets(X, y)
    XS = X[:, torch.as_tensor(keep).long()]
    return torch.linalg.solve(XS.T @ XS + ridge * torch.eye(XS.shape[1], dtype=X.dtype), XS.T @ y)


def reconstruction_error(X, keep, scales=None, y=None) -> float:
    """Relative error ``||y - X[:, keep] w|| / ||y||`` (w = 1 without scales)."""
    X = _matrix(X)
    y = _targets(X, y)
    XS = X[:, torch.as_tensor(keep).long()]
    approx = XS.sum(1) if scales is None else XS @ torch.as_tensor(scales).double()
    return float((y - approx).norm() / y.norm().clamp_min(1e-300))


def prune_layer(model: nn.Module, layer_i: str, layer_next: str, keep, scales=None) -> nn.Module:
    """Remove for real the filters of conv ``layer_i`` not in ``keep`` (and its BN channels) and the
    matching input channels of ``layer_next``, whose kept input weights are multiplied by
    ``scales`` (the least-squares reconstruction). In place; returns the model. Refuses the last
    conv layer (the document's limitation of ThiNet)."""
    _check_pair(model, layer_i, layer_next)
    return remove_filters(model, layer_i, keep, scales)


def thinet_prune(model: nn.Module, batches, r: float, n_samples: int = 10_000, seed: int = 0, *,
                 method: str = "document", samples_per_image: int = 10, ridge: float = RIDGE):
    """Prune a VGG-style network with ThiNet: every conv layer but the last, from the first to the
    second-to-last, each keeping ``n_kept(C, r)`` filters chosen on samples of the network as pruned
    so far (no fine-tuning in between: the document fine-tunes only after the whole pass).

    ``method``: "document" (Algorithm 1, the default) or "iccv" (``select_greedy``). ``batches``: a
    list of batches or a function returning a fresh iterable of them. Returns ``(model, records)``,
    the model pruned in place and one record per layer: name, channels before and after, the
    relative reconstruction error of layer i+1's sampled outputs without and with the scales,
    seconds.

    The document does not say which layers, in which order, nor whether ThiNet's per-layer
    fine-tuning was kept; it says only that the last conv layer is not pruned and that 5 epochs of
    fine-tuning follow. We prune the 12 others in forward order, as ThiNet does, without fine-tuning
    between layers. Seeds: layer k samples with ``seed + k``."""
    if method not in ("document", "iccv"):
        raise ValueError(f"method must be 'document' (Algorithm 1) or 'iccv'; got {method!r}")
    fresh = replayable(batches, "thinet_prune")
    names = conv_names(model)
    records = []
    for k, (name, nxt) in enumerate(tqdm(list(zip(names[:-1], names[1:])), desc="ThiNet layers", leave=False)):
        t0 = time.time()
        X, y, _ = collect(model, name, nxt, fresh(), n_samples, seed + k, samples_per_image=samples_per_image)
        keep = select_greedy_ls(X, r, y, ridge) if method == "document" else select_greedy(X, r)
        scales = ls_scales(X, keep, ridge, y)
        before = model.get_submodule(name).out_channels
        prune_layer(model, name, nxt, keep, scales)
        records.append({"layer": name, "next": nxt, "channels_before": before, "channels_after": len(keep),
                        "error_unscaled": reconstruction_error(X, keep, None, y),
                        "error_scaled": reconstruction_error(X, keep, scales, y),
                        "seconds": time.time() - t0})
    return model, records
