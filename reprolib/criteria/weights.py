"""Weight-level criteria: one score per weight, shaped like each layer's weight (higher = keep).

``magnitude``: |w| (Han et al. 2015). ``obd``: Optimal Brain Damage (LeCun et al. 1990), the
saliency 0.5 * h_ii * w_i^2 of removing w_i, with h_ii a diagonal of the loss's Hessian:
``hessian_diagonal`` / ``obd_saliency`` compute it exactly for small problems, ``obd`` estimates it
for networks (see there).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import func
from torch.func import functional_call, grad, vjp, vmap
from tqdm import tqdm

from . import register
from .filters import resolve_layers

EXACT_MAX_PARAMS = 5000  # the exact Hessian is n x n


@register("magnitude", level="weight")
def magnitude(model, layers, batches=None):
    """|w| of every weight (Han et al. 2015)."""
    return {n: m.weight.detach().abs() for n, m in resolve_layers(model, layers).items()}


# ----------------------------------------------------------------------------- exact, small problems

def hessian_diagonal(loss_fn: Callable[[list[torch.Tensor]], torch.Tensor],
                     params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Exact diagonal of the Hessian of ``loss_fn(params)`` (a scalar), shaped like each param.
    Builds the full n x n Hessian (reverse-over-reverse torch.func), so only for n <= EXACT_MAX_PARAMS."""
    params = [p.detach() for p in params]
    sizes = [p.numel() for p in params]
    if sum(sizes) > EXACT_MAX_PARAMS:
        raise ValueError(f"exact Hessian of {sum(sizes)} parameters is too large (limit {EXACT_MAX_PARAMS}); "
                         "use criteria.get('obd') for networks")

    def flat_loss(v):
        return loss_fn([c.reshape(p.shape) for c, p in zip(v.split(sizes), params)])

    diag = func.jacrev(func.jacrev(flat_loss))(torch.cat([p.reshape(-1) for p in params])).diagonal()
    return [c.reshape(p.shape) for c, p in zip(diag.split(sizes), params)]


def obd_saliency(loss_fn: Callable[[list[torch.Tensor]], torch.Tensor],
                 params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """OBD saliency 0.5 * h_ii * w_i^2 with the exact Hessian diagonal of ``loss_fn`` at ``params``."""
    return [0.5 * h * p.detach() ** 2 for h, p in zip(hessian_diagonal(loss_fn, params), params)]


# ----------------------------------------------------------------------------- networks

def _curvature(model: nn.Module, weights: dict[str, torch.Tensor], x, y, kind: str) -> dict[str, torch.Tensor]:
    """Per-image diagonal curvature of the cross-entropy with respect to ``weights``, summed over the batch."""
    fixed = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()] if k not in weights}

    def logits(w, xi):
        return functional_call(model, {**fixed, **w}, (xi[None],))[0]

    def ggn(xi, yi):
        # diag(J^T H J), H = diag(p) - p p^T = A A^T with A = diag(sqrt p) - p sqrt(p)^T: sum_k (J^T a_k)^2
        z, pullback = vjp(lambda w: logits(w, xi), weights)
        p = z.detach().softmax(0)
        a = torch.diag(p.sqrt()) - torch.outer(p, p.sqrt())
        (cols,) = vmap(pullback)(a.T)
        return {k: (v ** 2).sum(0) for k, v in cols.items()}

    def empirical(xi, yi):
        g = grad(lambda w: F.cross_entropy(logits(w, xi)[None], yi[None]))(weights)
        return {k: v ** 2 for k, v in g.items()}

    per_image = vmap(ggn if kind == "ggn" else empirical)(x, y)
    return {k: v.sum(0) for k, v in per_image.items()}


@register("obd", level="weight")
def obd(model, layers, batches=None, *, hessian: str = "ggn", n_batches: int | None = None, chunk: int = 16):
    """Optimal Brain Damage: 0.5 * h_ii * w_i^2, h_ii estimated over the data (model in eval mode) as
    the mean over images of a per-image curvature of the cross-entropy:

    * ``hessian="ggn"`` (default): the exact diagonal of the Gauss-Newton matrix J^T H_z J (H_z: the
      Hessian of the cross-entropy in the logits). It is the Hessian without the second derivatives
      of the network itself (the Levenberg-Marquardt approximation of LeCun et al. 1990), positive semi-definite,
      and equal to the true Hessian for a network linear in its weights (tested so). Cost: one
      backward pass per class and image.
    * ``hessian="empirical"``: the empirical Fisher, the mean of squared per-image gradients with the
      true labels; one backward pass per image, but only a rough stand-in for the Hessian away
      from a minimum.
    Per-image passes run through torch.func.vmap, ``chunk`` images at a time.
    """
    if hessian not in ("ggn", "empirical"):
        raise ValueError(f"unknown hessian estimate {hessian!r}: choose 'ggn' or 'empirical'")
    if batches is None:
        raise ValueError("obd needs data: pass batches, e.g. reprolib.data.batches(x, y, 128)")
    mods = resolve_layers(model, layers)
    weights = {f"{n}.weight" if n else "weight": m.weight.detach() for n, m in mods.items()}
    p = next(model.parameters())
    sums, images = {k: torch.zeros_like(w) for k, w in weights.items()}, 0
    was_training = model.training
    model.eval()
    try:
        for x, y in tqdm(itertools.islice(batches, n_batches), total=n_batches, desc="obd", leave=False):
            x, y = x.to(p.device), y.to(p.device)
            for xc, yc in zip(x.split(chunk), y.split(chunk)):
                for k, v in _curvature(model, weights, xc, yc, hessian).items():
                    sums[k] += v
            images += len(y)
    finally:
        model.train(was_training)
    if images == 0:
        raise ValueError("obd: batches yielded no data")
    return {n: 0.5 * sums[k] / images * weights[k] ** 2 for n, k in zip(mods, weights)}

