"""LASSO channel selection + least-squares reconstruction (He, Zhang, Sun, ICCV 2017, "Channel pruning for
accelerating very deep neural networks"; the summary's Section 4.2, its Eq. 12).

One conv ``B`` (the consumer of the pruned layer ``A``'s filters, see ``channels``) at a time:

1. ``collect``: sampled positions of ``B``'s output. For each, the k x k input patch of every input channel,
   ``P[t, i]`` (C x kh*kw), and the output values of all n filters, ``Y[t]`` (bias removed). He et al. sample 10
   positions per image (``positions=10``).
2. ``design``: channel i's contribution to every (position, filter) row with the *normalised* kernels of the paper
   (its constraint ||W_i||_F = 1): ``Z[(t, f), i] = <P[t, i], W[f, i] / ||W[:, i]||_F>``, and ``y = vec(Y)``. With
   beta_i = ||W[:, i]||_F for every i, Z beta = y exactly.
3. beta-step: ``argmin_beta 1/(2N) ||y - Z beta||^2 + lambda ||beta||_1`` with N the number of positions. The paper
   raises lambda until at most c' coefficients are non-zero (``lasso_select``). We compute the whole LASSO path
   exactly (``lasso_path``: the LARS homotopy with the LASSO modification, Efron et al. 2004, on the C x C Gram
   matrix), so "increase lambda until ||beta||_0 <= c'" is read off it without a step size.
4. W-step: least squares for the kept channels' kernels, ``argmin_W' ||Y - P_S W'^T||^2`` (``reconstruct``),
   written into ``B`` by ``apply_reconstruction``. The paper alternates the two steps; we do one beta-step then one
   W-step (ours).

Registry (``criteria.get("lasso")``): filter j of ``A`` scores ``lambda_j / lambda_max``, the largest lambda at which
``beta_j`` is non-zero on the path (the order in which the LASSO drops channels as lambda grows; 0 for a channel it
never uses). When the path is monotone (no channel leaves and comes back) the c' best-scored channels are exactly
``lasso_select``'s c' channels, for every c'. Scores are computed on the unpruned network, layer by layer (ours:
He et al. prune sequentially, each layer seeing its predecessors pruned; ``reconstruct_network`` does that for the
W-step).

``compare_with_thinet``: LASSO and ThiNet's greedy selections on the same sampled rows, with each one's
reconstruction error (the per-channel least-squares scales of ThiNet, and He et al.'s full W-step).
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import register, replayable
from . import thinet
from .channels import consumers

RIDGE = thinet.RIDGE  # 1e-8 on every Gram matrix inverted, as the book's ThiNet (ours; the paper states none)


class Patches(NamedTuple):
    P: torch.Tensor  # float64 [m, C, kh*kw]: input patches of the consumer at the sampled positions
    Y: torch.Tensor  # float64 [m, n]: the consumer's (reference's) output there, bias removed
    W: torch.Tensor  # float64 [n, C, kh*kw]: the consumer's weights


class _Stop(Exception):
    pass


# --------------------------------------------------------------------------- 1. samples

@torch.no_grad()
def collect(model: nn.Module, layer: str, batches, *, n_batches: int | None = None, positions: int = 10,
            seed: int = 0, reference: nn.Module | None = None) -> Patches:
    """Patches and outputs of the conv that reads ``layer``'s filters, at ``positions`` random output positions
    per image (drawn on the CPU from ``seed``: the same rows on any device). ``reference``: a network with the same
    layer names whose consumer output is the target ``Y`` (He et al.: the unpruned network, while ``model`` is the
    one pruned so far); default ``model`` itself. Both run in eval mode and stop at the consumer."""
    name = consumers(model, [layer])[layer]
    conv = model.get_submodule(name)
    ref = model if reference is None else reference
    ref_conv = ref.get_submodule(name)
    if positions < 1:
        raise ValueError(f"positions must be >= 1, got {positions}")
    seen = {}

    def grab(key):
        def hook(module, inputs, output):
            seen[key] = (inputs[0], output)
            raise _Stop
        return hook

    g = torch.Generator().manual_seed(seed)
    dev = conv.weight.device
    handles = [conv.register_forward_hook(grab("model"))]
    if ref is not model:
        handles.append(ref_conv.register_forward_hook(grab("ref")))
    modes = [(m, m.training) for m in {id(model): model, id(ref): ref}.values()]
    kh, kw = conv.kernel_size
    Ps, Ys = [], []
    try:
        for m, _ in modes:
            m.eval()
        for batch in itertools.islice(batches, n_batches):
            xb = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(dev)
            for key, net in (("model", model), ("ref", ref)):
                if key == "ref" and ref is model:
                    continue
                try:
                    net(xb)
                except _Stop:
                    pass
            x = seen["model"][0]                                # unfolded in its own dtype: a copy, exact
            out = seen["ref" if ref is not model else "model"][1].double()
            b, c = x.shape[:2]
            cols = F.unfold(x, (kh, kw), dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
            L = cols.shape[-1]
            if out.shape[-1] * out.shape[-2] != L:
                raise ValueError(f"{name}: the reference output has {tuple(out.shape[2:])} positions, the input "
                                 f"patches {L}: the two networks differ in more than the weights")
            pos = torch.randint(L, (b, positions), generator=g).to(dev)
            img = torch.arange(b, device=dev)[:, None].expand(b, positions)
            patches = cols.reshape(b, c, kh * kw, L)[img, :, :, pos]            # [b, positions, C, kk]
            Ps.append(patches.reshape(b * positions, c, kh * kw).double().cpu())
            y = out.reshape(b, out.shape[1], L)[img, :, pos]                    # [b, positions, n]
            bias = ref_conv.bias.double() if ref_conv.bias is not None else 0
            Ys.append((y - bias).reshape(b * positions, -1).cpu())
    finally:
        for h in handles:
            h.remove()
        for m, was in modes:
            m.train(was)
    if not Ps:
        raise ValueError(f"lasso collect for {layer!r}: batches yielded no data")
    W = conv.weight.detach().double().reshape(conv.out_channels, conv.in_channels, kh * kw).cpu()
    return Patches(torch.cat(Ps), torch.cat(Ys), W)


def design(patches: Patches, normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Z, y, norms)``: ``Z[(t, f), i]`` channel i's contribution to output (t, f) with unit-norm kernels
    (``normalise``, the paper's ||W_i||_F = 1) or the real ones, ``y = vec(Y)``, ``norms[i] = ||W[:, i]||_F``.
    Rows are ordered position-major (t, then f)."""
    P, Y, W = patches
    norms = W.pow(2).sum((0, 2)).sqrt()
    Wn = W / norms.clamp_min(1e-300)[None, :, None] if normalise else W
    Z = torch.einsum("tik,fik->tfi", P, Wn).reshape(-1, W.shape[1])
    return Z, Y.reshape(-1), norms


def gram(patches: Patches, normalise: bool = True, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """``(G, b, yy, norms)``: Z^T Z, Z^T y and y^T y of ``design`` without holding Z (chunks of positions)."""
    P, Y, W = patches
    C = W.shape[1]
    norms = W.pow(2).sum((0, 2)).sqrt()
    Wn = W / norms.clamp_min(1e-300)[None, :, None] if normalise else W
    G, b, yy = torch.zeros(C, C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64), 0.0
    for s in range(0, P.shape[0], chunk):
        Z = torch.einsum("tik,fik->tfi", P[s:s + chunk], Wn).reshape(-1, C)
        y = Y[s:s + chunk].reshape(-1)
        G += Z.T @ Z
        b += Z.T @ y
        yy += float(y @ y)
    return G, b, yy, norms


# --------------------------------------------------------------------------- 2. the LASSO path

class Path(NamedTuple):
    lambdas: torch.Tensor  # float64 [K]: breakpoints, decreasing from lambda_max to 0
    betas: torch.Tensor    # float64 [K, C]: the solution at each breakpoint (piecewise linear in between)
    entry: torch.Tensor    # float64 [C]: largest lambda at which each beta_j is non-zero (0: never)


def lasso_path(G, b, *, max_steps: int | None = None) -> Path:
    """The exact path of ``min_beta 1/2 beta^T G beta - b^T beta + lambda ||beta||_1`` for lambda from
    ``max|b|`` down to 0 (LARS with the LASSO modification: a coefficient that reaches zero leaves the active set).
    ``G`` = Z^T Z / N and ``b`` = Z^T y / N give the paper's 1/(2N) ||y - Z beta||^2 + lambda ||beta||_1.

    Along each segment the active coefficients move linearly with lambda so that their correlations
    ``c = b - G beta`` stay at ``lambda * sign(beta)``; a channel joins when its |correlation| reaches lambda and
    leaves when its coefficient reaches 0. Channels with a zero Gram diagonal (a dead channel) never join.
    Near-singular active sets (exactly redundant channels) are solved by least squares (minimum norm)."""
    G = torch.as_tensor(G, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    C = b.numel()
    if G.shape != (C, C):
        raise ValueError(f"G must be {C} x {C} to match b, got {tuple(G.shape)}")
    scale = float(G.diagonal().max()) if C else 0.0
    live = G.diagonal() > 1e-14 * max(scale, 1e-300)
    beta = torch.zeros(C, dtype=torch.float64)
    entry = torch.zeros(C, dtype=torch.float64)
    c = b.clone()
    if not live.any() or float(c[live].abs().max()) == 0:
        return Path(torch.tensor([0.0], dtype=torch.float64), beta[None].clone(), entry)
    lam = float(c[live].abs().max())
    active = torch.zeros(C, dtype=torch.bool)
    tie = 1e-12 * lam
    joined = live & (c.abs() >= lam - tie)
    active |= joined
    entry[joined] = lam
    lambdas, betas = [lam], [beta.clone()]
    for _ in range(max_steps or 20 * C + 20):
        A = active.nonzero().flatten()
        s = torch.sign(c[A])
        GA = G[A][:, A]
        d = torch.linalg.lstsq(GA, s[:, None], driver="gelsd").solution.flatten()  # d beta_A / d(-lambda)
        a = G[:, A] @ d                                   # d c / d(-lambda) = -a
        gamma, event = lam, ("end", -1)
        inactive = ~active & live                         # joins: |c_j - g a_j| reaches lam - g
        up = torch.where(1 - a > 1e-12, (lam - c) / (1 - a), torch.inf)
        down = torch.where(1 + a > 1e-12, (lam + c) / (1 + a), torch.inf)
        gj = torch.minimum(up, down).masked_fill(~inactive, torch.inf)
        gj = gj.masked_fill(gj <= 1e-15 * lam, torch.inf)
        if gj.numel() and float(gj.min()) < gamma:
            gamma, event = float(gj.min()), ("join", int(gj.argmin()))
        # drops: beta_j + g d_j reaches 0
        gd = torch.where((d != 0) & (beta[A] != 0), -beta[A] / d, torch.inf)
        gd = gd.masked_fill(gd <= 1e-15 * lam, torch.inf)
        if gd.numel() and float(gd.min()) < gamma:
            gamma, event = float(gd.min()), ("drop", int(A[gd.argmin()]))
        beta[A] += gamma * d
        c -= gamma * a
        lam -= gamma
        if event[0] == "end" or lam <= tie:
            lam = 0.0
            lambdas.append(0.0)
            betas.append(beta.clone())
            break
        j = event[1]
        if event[0] == "join":
            near = ~active & live & (c.abs() >= lam - tie)   # every channel reaching lambda here joins
            near[j] = True
            active |= near
            entry[near & (entry == 0)] = lam
        else:
            beta[j] = 0.0
            active[j] = False
        lambdas.append(lam)
        betas.append(beta.clone())
    else:
        raise RuntimeError(f"lasso_path did not reach lambda = 0 in {max_steps or 20 * C + 20} steps (cycling)")
    return Path(torch.tensor(lambdas, dtype=torch.float64), torch.stack(betas), entry)


def beta_at(path: Path, lam: float) -> torch.Tensor:
    """The LASSO solution at ``lam`` (linear between the path's breakpoints)."""
    L, B = path.lambdas, path.betas
    if lam >= float(L[0]):
        return torch.zeros_like(B[0])
    k = int((L > lam).sum()) - 1                        # L[k] > lam >= L[k+1]
    if k + 1 >= len(L):
        return B[-1].clone()
    t = (float(L[k]) - lam) / (float(L[k]) - float(L[k + 1]))
    return B[k] + t * (B[k + 1] - B[k])


def _select_from_path(path: Path, n_keep: int) -> tuple[torch.Tensor, float]:
    """He et al.'s rule on an exact path: the smallest lambda at which at most ``n_keep`` coefficients are
    non-zero; the channels non-zero just above it. If that set is smaller than ``n_keep`` (several channels left
    together), it is filled up with the dropped channels of highest entry lambda (ours)."""
    C = path.betas.shape[1]
    if not 1 <= n_keep <= C:
        raise ValueError(f"n_keep must be in [1, {C}], got {n_keep}")
    L, B = path.lambdas, path.betas
    chosen, lam = None, float(L[0])
    for k in range(len(L) - 1, 0, -1):                  # segments (L[k], L[k-1]) from lambda = 0 upwards
        mid = (B[k] + B[k - 1]) / 2                     # the active set inside the segment
        nz = mid != 0
        if int(nz.sum()) <= n_keep:
            chosen, lam = nz, float(L[k])
            break
    if chosen is None:
        chosen = torch.zeros(C, dtype=torch.bool)
    if int(chosen.sum()) < n_keep:
        order = sorted((i for i in range(C) if not chosen[i]), key=lambda i: (-float(path.entry[i]), i))
        chosen = chosen.clone()
        chosen[order[:n_keep - int(chosen.sum())]] = True
    return chosen.nonzero().flatten(), lam


def lasso_select(Z, y, n_keep: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The beta-step: ``(kept channels ascending, beta at the selection point, its lambda)`` with lambda raised
    until at most ``n_keep`` channels are left (the paper's rule, read off the exact path)."""
    Z = torch.as_tensor(Z, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).flatten()
    n = Z.shape[0]
    return _select(Z.T @ Z / n, Z.T @ y / n, n_keep)


def _select(G, b, n_keep):
    path = lasso_path(G, b)
    keep, lam = _select_from_path(path, n_keep)
    return keep, beta_at(path, lam + 1e-12 * float(path.lambdas[0])) if lam > 0 else beta_at(path, lam), lam


def lasso_scores(G, b) -> torch.Tensor:
    """Per channel, the largest lambda at which its coefficient is non-zero, over lambda_max (in [0, 1])."""
    path = lasso_path(G, b)
    top = float(path.lambdas[0])
    return path.entry / top if top > 0 else path.entry


# --------------------------------------------------------------------------- 3. the W-step

def reconstruct(patches: Patches, keep, ridge: float = RIDGE) -> torch.Tensor:
    """He et al.'s W-step: the kept channels' kernels ``W'`` [n, |keep|, kk] minimising ``||Y - P_S W'^T||^2``
    (+ ``ridge ||W'||^2``), float64."""
    P, Y, W = patches
    keep = torch.as_tensor(keep).long()
    X = P[:, keep].reshape(P.shape[0], -1)              # [m, |S| kk]
    A = X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype)
    Wt = torch.linalg.solve(A, X.T @ Y)                 # [|S| kk, n]
    return Wt.T.reshape(W.shape[0], len(keep), W.shape[2])


def weights_error(patches: Patches, keep, new_weights=None) -> float:
    """Relative error ``||Y - P_S W'^T|| / ||Y||`` (``new_weights`` default: the original kernels of the kept
    channels, i.e. no reconstruction)."""
    P, Y, W = patches
    keep = torch.as_tensor(keep).long()
    Wk = W[:, keep] if new_weights is None else torch.as_tensor(new_weights, dtype=torch.float64)
    approx = torch.einsum("tik,fik->tf", P[:, keep], Wk)
    return float((Y - approx).norm() / Y.norm().clamp_min(1e-300))


@torch.no_grad()
def apply_reconstruction(model: nn.Module, layer: str, keep, new_weights) -> None:
    """Write the W-step into the conv that reads ``layer``: kept input channels get ``new_weights``, the others 0
    (in place; the pruned filters of ``layer`` are removed by masks / ``surgery.shrink`` as usual)."""
    conv = model.get_submodule(consumers(model, [layer])[layer])
    keep = torch.as_tensor(keep).long()
    w = torch.zeros_like(conv.weight)
    w[:, keep.to(w.device)] = torch.as_tensor(new_weights).reshape(w.shape[0], len(keep), *w.shape[2:]).to(w)
    conv.weight.copy_(w)


def reconstruct_network(model: nn.Module, masks: dict, batches, *, n_batches: int | None = None,
                        positions: int = 10, seed: int = 0, ridge: float = RIDGE) -> tuple[nn.Module, list[dict]]:
    """He et al.'s sequential W-step for given filter masks (True = keep) on internal layers: in forward order,
    each consumer's kernels are refit on patches of the network pruned so far against the *unpruned* network's
    output. Returns ``(masked copy with the refit weights, one record per layer)``; shrink it with
    ``surgery.shrink(model, masks)``. ``batches``: a list or a function returning a fresh iterable."""
    from ..surgery import apply_masks
    fresh = replayable(batches, "reconstruct_network")
    names = [n for n, m in model.named_modules() if n in masks]
    pruned = apply_masks(model, masks)
    records = []
    for k, name in enumerate(tqdm(names, desc="LASSO W-step", leave=False)):
        keep = torch.as_tensor(masks[name]).nonzero().flatten()
        pt = collect(pruned, name, fresh(), n_batches=n_batches, positions=positions, seed=seed + k, reference=model)
        new = reconstruct(pt, keep, ridge)
        records.append({"layer": name, "kept": len(keep), "channels": int(torch.as_tensor(masks[name]).numel()),
                        "error_before": weights_error(pt, keep), "error_after": weights_error(pt, keep, new)})
        apply_reconstruction(pruned, name, keep, new)
    return pruned, records


# --------------------------------------------------------------------------- 4. LASSO vs ThiNet on the same rows

def _square_root(G, b, yy) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X', y')`` with C+1 rows and the same X'^T X' = G, X'^T y' = b, y'^T y' = yy: ThiNet's selection and
    errors depend on the samples only through these, so it runs on X' as on the full rows (without holding them)."""
    C = G.shape[0]
    M = torch.zeros(C + 1, C + 1, dtype=torch.float64)
    M[:C, :C], M[:C, C], M[C, :C], M[C, C] = G, b, b, yy
    vals, vecs = torch.linalg.eigh((M + M.T) / 2)
    R = vals.clamp_min(0).sqrt()[:, None] * vecs.T
    return R[:, :C], R[:, C]


def compare_with_thinet(patches: Patches, n_keep: int, ridge: float = RIDGE) -> dict:
    """LASSO (He et al.) and ThiNet's greedy selections of ``n_keep`` input channels on the same sampled rows.

    LASSO works on the design with unit-norm kernels (the paper's), ThiNet on the channels' real contributions
    (y = their sum, its Algorithm 1, ``thinet.select_greedy_ls``; ``thinet_iccv``: ``thinet.select_greedy``). For each
    selection: ``error_scales``, the relative error with ThiNet's per-channel least-squares scales; ``error_weights``,
    with He et al.'s W-step; ``error_unscaled``, with the kept kernels as they are."""
    C = patches.W.shape[1]
    Gn, bn, yy, norms = gram(patches, normalise=True)
    m = patches.P.shape[0]
    keep_lasso, beta, lam = _select(Gn / m, bn / m, n_keep)
    Gr = Gn * norms[:, None] * norms[None, :]            # the same rows with the real kernels (ThiNet's X)
    br = bn * norms
    X, yv = _square_root(Gr, br, yy)
    r = n_keep / C
    out = {"channels": C, "kept": n_keep, "rows": m * patches.W.shape[0], "lasso_lambda": lam,
           "lasso_lambda_max": float(bn.abs().max() / m)}
    sels = {"lasso": keep_lasso, "thinet": thinet.select_greedy_ls(X, r, yv, ridge), "thinet_iccv": thinet.select_greedy(X, r)}
    for name, keep in sels.items():
        scales = thinet.ls_scales(X, keep, ridge, yv)
        out[name] = {"keep": keep.tolist(), "error_unscaled": thinet.reconstruction_error(X, keep, None, yv),
                     "error_scales": thinet.reconstruction_error(X, keep, scales, yv),
                     "error_weights": weights_error(patches, keep, reconstruct(patches, keep, ridge))}
    a, b2 = set(out["lasso"]["keep"]), set(out["thinet"]["keep"])
    out["jaccard_lasso_thinet"] = len(a & b2) / len(a | b2)
    return out


# --------------------------------------------------------------------------- registry

@register("lasso")
def lasso(model, layers, batches=None, *, n_batches: int | None = None, positions: int = 10, seed: int = 0):
    """He et al. 2017's LASSO channel selection as a filter score: filter j of each layer scores the largest
    lambda (over lambda_max) at which the LASSO keeps input channel j of the conv that reads the layer, on
    ``positions`` sampled output positions per image of the first ``n_batches`` batches. Layers must be internal
    (``channels.internal_layers``)."""
    if batches is None:
        raise ValueError("lasso needs data: pass batches, e.g. reprolib.data.batches(x, y, 128)")
    fresh = replayable(batches, "lasso")
    cons = consumers(model, layers)
    out = {}
    for k, name in enumerate(tqdm(cons, desc="lasso", leave=False)):
        pt = collect(model, name, fresh(), n_batches=n_batches, positions=positions, seed=seed + k)
        G, b, _, _ = gram(pt)
        m = pt.P.shape[0]
        out[name] = lasso_scores(G / m, b / m).float()
    return out


lasso.input_channels = True  # scores a layer's filters by its consumer's input channels (channels.py)
