"""Optimal Brain Surgeon (Hassibi & Stork 1993), layer-wise as in L-OBS (Dong, Chen & Pan 2017); the
survey's Section 1, Eqs. (3)-(4).

Each Conv2d / Linear layer is pruned on its own, against the layer-wise reconstruction error of L-OBS:
with ``x`` the layer's input vectors (a Linear layer's inputs; a Conv2d layer's k x k x C_in patches, as
``F.unfold`` lays them out) over ``n`` vectors drawn from the data,

    E(W') = 1 / (2n) * sum_x ||(W' - W) x||^2,    whose Hessian, for each output row, is  H = X X^T / n.

H is the same for every row of the weight matrix and the rows do not interact (the Hessian of the layer is
block-diagonal with identical blocks). For one row w, removing weight q with the best change of the others
costs (Eq. 4)

    L_q = w_q^2 / (2 [H^-1]_qq),        delta w = -(w_q / [H^-1]_qq) H^-1 e_q.

* ``criteria.get("obs")``: the saliency L_q of every weight with the full inverse (nothing removed yet):
  a one-shot weight criterion. Saliencies are in units of each layer's own error: rank them per layer
  (``masks.weight_masks(..., scope="local")`` or per-layer rates), not across layers.
* ``obs_prune`` / ``obs_prune_many``: Hassibi & Stork's procedure on the layer: remove the weight of least
  L_q over the whole layer, apply delta w to its row, replace H^-1 by the inverse Hessian of the row's
  remaining weights (the rank-one downdate H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq), repeat. Because the rows
  are independent, each row's removal sequence and costs are computed on their own (``removal_paths``)
  and the layer's sequence is their merge by least current cost (``merge_counts``), which is exactly the
  greedy sequence over the whole layer. The weights after the removals are the least-squares re-fit of
  each row's remaining weights (``refit``), which is what the sequence of OBS updates adds up to.

Ours, stated: the inputs come from the unpruned network for every layer (L-OBS's choice; the layers are
pruned independently); H is damped, H + damp * mean(diag H) * I with ``damp=1e-2`` by default (the input
of LeNet has constant border pixels and dead ReLUs give zero rows, so X X^T is singular; the same relative
damping as SparseGPT's default); biases are neither pruned nor changed; grouped convolutions are refused.
How many weights each layer loses is the caller's (L-OBS sets a ratio per layer).
"""
from __future__ import annotations

import heapq
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import register
from .filters import resolve_layers

DAMP = 1e-2
MAX_CHUNK_BYTES = 2 ** 27  # rows of one layer processed together: chunk x d x d float64 at most this


# ----------------------------------------------------------------------------- layer inputs and Hessians

def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input vectors of ``module`` for its input ``x``, one per row: ``(n, d)`` with ``d`` the length of
    a row of ``module.weight.reshape(out, -1)`` (Conv2d: the unfolded patches, all positions)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(f"layer-wise OBS takes ungrouped convolutions; this one has groups={module.groups}")
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ValueError("layer-wise OBS takes convolutions with numeric zero padding "
                             f"(got padding={module.padding!r}, padding_mode={module.padding_mode!r})")
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise ValueError(f"layer-wise OBS takes Conv2d and Linear layers, not {type(module).__name__}")


@torch.no_grad()
def layer_hessians(model: nn.Module, layers, batches, n_batches: int | None = None) -> dict[str, torch.Tensor]:
    """``{layer: H}``, H = X X^T / n (float64, d x d) over the layer's inputs when ``model`` (eval mode, no
    autocast) runs on ``batches`` (an iterable of (images, labels); ``n_batches`` of them at most)."""
    if batches is None:
        raise ValueError("layer-wise OBS needs data: pass batches, e.g. reprolib.data.batches(x, y, 128)")
    mods = resolve_layers(model, layers)
    dev = next(model.parameters()).device
    sums = {n: torch.zeros(m.weight[0].numel(), m.weight[0].numel(), dtype=torch.float64, device=dev)
            for n, m in mods.items()}
    counts = dict.fromkeys(mods, 0)

    def hook(name):
        def fn(module, args):
            x = layer_inputs(module, args[0].detach().double())
            sums[name] += x.T @ x
            counts[name] += x.shape[0]
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    was_training = model.training
    model.eval()
    try:
        for x, _ in tqdm(itertools.islice(batches, n_batches), total=n_batches, desc="obs inputs", leave=False):
            model(x.to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        raise ValueError(f"layer-wise OBS: no inputs reached {empty} (empty batches, or layers the model does not run)")
    return {n: sums[n] / counts[n] for n in mods}


def damped_inverse(H: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """(H + damp * mean(diag H) * I)^-1 by Cholesky (float64). ``damp=0`` inverts H itself, which must then
    be positive definite."""
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    H = H.double()
    scale = H.diagonal().mean()
    lam = damp * (scale if scale > 0 else 1.0)
    L, info = torch.linalg.cholesky_ex(H + lam * torch.eye(len(H), dtype=H.dtype, device=H.device))
    if info.item() != 0:
        raise ValueError(f"the layer's Hessian (+ damping {damp}) is not positive definite; raise damp "
                         "(X X^T is singular when inputs are constant, dead or fewer than their dimension)")
    return torch.cholesky_inverse(L)


# ----------------------------------------------------------------------------- the criterion

def saliency(W: torch.Tensor, Hinv: torch.Tensor) -> torch.Tensor:
    """Eq. (4): L_q = w_q^2 / (2 [H^-1]_qq) for every weight of ``W`` (rows x d), with one inverse for all rows."""
    return W.double() ** 2 / (2 * Hinv.diagonal())


@register("obs", level="weight")
def obs(model, layers, batches=None, *, damp: float = DAMP, n_batches: int | None = None):
    """Optimal Brain Surgeon saliency of each weight, layer-wise (see the module's docstring), with the inverse
    Hessian of the whole layer: the cost of removing that weight first. Comparable within a layer only."""
    mods = resolve_layers(model, layers)
    hessians = layer_hessians(model, list(mods), batches, n_batches)
    out = {}
    for n, m in mods.items():
        w = m.weight.detach()
        out[n] = saliency(w.reshape(len(w), -1), damped_inverse(hessians[n], damp)).reshape(w.shape).to(w.dtype)
    return out


# ----------------------------------------------------------------------------- pruning with the OBS update

def _chunk(rows: int, d: int, max_bytes: int = MAX_CHUNK_BYTES) -> int:
    return max(1, min(rows, max_bytes // (8 * d * d)))


def removal_paths(W: torch.Tensor, Hinv: torch.Tensor, steps: int, *, max_bytes: int = MAX_CHUNK_BYTES,
                  desc: str = "obs") -> tuple[torch.Tensor, torch.Tensor]:
    """Hassibi & Stork's greedy sequence for each row of ``W`` (rows x d) separately: ``steps`` times, remove
    the weight of least L_q = w_q^2 / (2 [H^-1]_qq), update the row by delta w, downdate H^-1 to the
    remaining weights. Returns ``order`` (rows x steps, the indices removed) and ``cost`` (rows x steps,
    the L_q paid at each removal, the increase of the row's error).

    Rows are processed ``max_bytes`` at a time. Every row of a chunk has lost as many weights as the others,
    so the chunk's inverses are cut down to the remaining weights now and then (when an eighth of them has
    gone): the work falls from steps x d^2 to about d^3 / 3 per row for a full sequence."""
    rows, d = W.shape
    if not 0 <= steps <= d:
        raise ValueError(f"a row of {d} weights cannot lose {steps}")
    dev = W.device
    order = torch.zeros(rows, steps, dtype=torch.long, device=dev)
    cost = torch.zeros(rows, steps, dtype=torch.float64, device=dev)
    if steps == 0:
        return order, cost
    size = _chunk(rows, d, max_bytes)
    lowest = torch.full((), float("inf"), dtype=torch.float64, device=dev)
    for start in tqdm(range(0, rows, size), desc=desc, leave=False):
        w = W[start:start + size].double().clone()
        b, m = w.shape
        Hi = Hinv.double().expand(b, d, d).clone()
        pos = torch.arange(d, device=dev).expand(b, d)  # original index of each remaining weight
        idx = torch.arange(b, device=dev)
        pruned = torch.zeros(b, m, dtype=torch.bool, device=dev)
        since = 0  # removals since the inverses were last cut down
        for k in range(steps):
            if since * 8 >= m and m - since > 1:  # cut the inverses down to the remaining weights
                rem = (~pruned).nonzero()[:, 1].view(b, m - since)
                m -= since
                w, pos = w.gather(1, rem), pos.gather(1, rem)
                Hi = Hi.gather(1, rem[:, :, None].expand(b, m, Hi.shape[2])).gather(2, rem[:, None, :].expand(b, m, m))
                pruned = torch.zeros(b, m, dtype=torch.bool, device=dev)
                since = 0
            diag = Hi.diagonal(dim1=1, dim2=2)
            q = torch.where(pruned, torch.inf, w * w / (2 * diag)).argmin(1)
            hqq = diag[idx, q]
            lowest = torch.minimum(lowest, hqq.min())
            col = Hi[idx, :, q].clone()
            wq = w[idx, q]
            order[start:start + b, k] = pos[idx, q]
            cost[start:start + b, k] = wq * wq / (2 * hqq)
            w -= (wq / hqq)[:, None] * col
            Hi.baddbmm_((col / hqq[:, None])[:, :, None], col[:, None, :], alpha=-1.0)  # rank-one downdate
            pruned[idx, q] = True
            w.masked_fill_(pruned, 0.0)
            since += 1
    if not lowest.item() > 0:
        raise FloatingPointError(f"OBS downdate lost positive definiteness (pivot {lowest.item():.3g}); raise damp")
    return order, cost


def merge_counts(cost: torch.Tensor, totals: list[int]) -> list[torch.Tensor]:
    """The greedy sequence over the whole layer, from each row's sequence of removal costs (rows x steps):
    repeatedly take the row whose next removal costs least (ties: the lower row). For each total in
    ``totals``, the number of removals of each row (a LongTensor of length rows) after that many."""
    rows, steps = cost.shape
    if any(t < 0 or t > rows * steps for t in totals):
        raise ValueError(f"totals {totals} must lie in [0, {rows * steps}] (rows x steps computed)")
    c = cost.detach().cpu().tolist()
    counts = [0] * rows
    heap = [(c[r][0], r) for r in range(rows)] if steps else []
    heapq.heapify(heap)
    want = sorted(set(totals))
    out, done = {}, 0
    for target in want:
        while done < target:
            _, r = heapq.heappop(heap)
            counts[r] += 1
            done += 1
            if counts[r] < steps:
                heapq.heappush(heap, (c[r][counts[r]], r))
        out[target] = torch.tensor(counts, dtype=torch.long)
    return [out[t] for t in totals]


def refit(W: torch.Tensor, Hinv: torch.Tensor, removed: torch.Tensor, *,
          max_bytes: int = MAX_CHUNK_BYTES) -> torch.Tensor:
    """Each row of ``W`` with the weights marked in ``removed`` (rows x d, bool) set to zero and the others
    re-fit by least squares to the row's original outputs: delta w = -H^-1[:, P] (H^-1[P, P])^-1 w_P, P the
    removed set (Hassibi & Stork's update for several weights at once; equal to the sequence of single
    updates that removed them). Returns the new W (float64)."""
    rows, d = W.shape
    out = W.double().clone()
    Hinv = Hinv.double()
    size = _chunk(rows, d, max_bytes)
    for start in range(0, rows, size):
        w, m = out[start:start + size], removed[start:start + size].to(out.device)
        if not m.any():
            continue
        mf = m.double()
        # H^-1[P, P] embedded in d x d with the identity on the kept weights: solving it gives z_P and z = 0 elsewhere
        A = Hinv * (mf[:, :, None] * mf[:, None, :]) + torch.diag_embed(1.0 - mf)  # positive definite
        L, info = torch.linalg.cholesky_ex(A)
        if info.any():
            raise FloatingPointError("OBS re-fit: H^-1 restricted to the removed weights is not positive definite; "
                                     "raise damp")
        z = torch.cholesky_solve((w * mf).unsqueeze(-1), L).squeeze(-1)
        w -= z @ Hinv  # Hinv is symmetric: (H^-1 z) for each row
        w.masked_fill_(m, 0.0)
    return out


def _counts(mods: dict, amounts) -> dict[str, int]:
    """Weights to remove per layer: ``amounts`` a float (each layer's share, int(numel * share)), or a dict
    layer -> share (float) or count (int)."""
    if not isinstance(amounts, dict):
        amounts = dict.fromkeys(mods, amounts)
    missing = [n for n in mods if n not in amounts]
    if missing:
        raise ValueError(f"no amount to prune for layers {missing}")
    out = {}
    for n, m in mods.items():
        a, total = amounts[n], m.weight.numel()
        k = a if isinstance(a, int) and not isinstance(a, bool) else None
        if k is None:
            if not 0 <= float(a) < 1:
                raise ValueError(f"share to prune for {n!r} is {a}: it must be in [0, 1)")
            k = int(total * float(a))
        if not 0 <= k < total:
            raise ValueError(f"cannot prune {k} of the {total} weights of {n!r}")
        out[n] = k
    return out


def obs_prune_many(model: nn.Module, layers, batches, amounts: list, *, damp: float = DAMP,
                   n_batches: int | None = None, max_bytes: int = MAX_CHUNK_BYTES) -> list[dict]:
    """Layer-wise OBS at several amounts from the same network (each layer's removal sequence is computed once).
    ``amounts``: a list of settings, each as ``obs_prune`` takes it. Returns, per setting, ``{layer: (weight,
    keep)}``: the layer's new weight (its dtype and device) and keep-mask. ``model`` is not changed."""
    mods = resolve_layers(model, layers)
    wanted = [_counts(mods, a) for a in amounts]
    hessians = layer_hessians(model, list(mods), batches, n_batches)
    out = [{} for _ in wanted]
    for n, m in mods.items():
        w = m.weight.detach()
        W = w.reshape(len(w), -1)
        Hinv = damped_inverse(hessians[n], damp)
        totals = [c[n] for c in wanted]
        steps = min(W.shape[1], max(totals))
        order, cost = removal_paths(W, Hinv, steps, max_bytes=max_bytes, desc=f"obs {n}")
        for i, per_row in enumerate(merge_counts(cost, totals)):
            removed = torch.zeros(W.shape, dtype=torch.bool, device=W.device)
            ranks = torch.arange(steps, device=W.device).expand(len(W), steps)
            removed.scatter_(1, order, ranks < per_row.to(W.device)[:, None])
            new = refit(W, Hinv, removed, max_bytes=max_bytes)
            out[i][n] = (new.reshape(w.shape).to(w.dtype), ~removed.reshape(w.shape))
    return out


@torch.no_grad()
def obs_prune(model: nn.Module, layers, batches, amounts, *, damp: float = DAMP, n_batches: int | None = None,
              max_bytes: int = MAX_CHUNK_BYTES) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place by layer-wise OBS with the compensating update of the remaining weights.
    ``amounts``: one share for every layer (``int(numel * share)`` weights each), or a dict layer -> share
    (float) or number of weights (int). Returns the keep-masks (True = kept), shaped like each weight."""
    (setting,) = obs_prune_many(model, layers, batches, [amounts], damp=damp, n_batches=n_batches, max_bytes=max_bytes)
    for n, (w, keep) in setting.items():
        model.get_submodule(n).weight.copy_(w)
    return {n: keep for n, (_, keep) in setting.items()}
