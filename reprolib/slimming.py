"""Network slimming (Liu et al. 2017) as Tessier et al. (2022, Section 4.1) run it, with the L1 penalty
of Liu et al. (Qin et al.'s Formula 1) on the BN scaling factors gamma.

``sparsify``: sparsity training, the network trained with ``lam * sum |gamma|`` added to its loss, which
drives the gammas of unimportant channels to 0 (Liu et al.'s first step). ``prune``: three pruning
iterations with a linearly growing share of filters removed (rate/3, 2*rate/3, rate), filters ranked
*globally* by |gamma| of the BatchNorm that follows them; after each iteration the masked network is
fine-tuned with the same penalty, the pruned filters held at zero. The result is a masked network (same
shapes) and its masks: ``surgery.shrink`` then turns it into the really smaller one.
Tessier et al. write "smooth-L1"; with PyTorch's threshold (1.0) and |gamma| < 1, that is
``lam * gamma^2 / 2``, an L2 penalty that does not sparsify, so we use the L1 of the slimming paper.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from . import criteria, masks as masks_mod, surgery, train


def bn_weights(model: nn.Module, layers: list[str]) -> list[nn.Parameter]:
    """The weights (gamma) of the BatchNorms right after ``layers``: what slimming penalises and ranks."""
    return [model.get_submodule(b).weight for b in criteria.filters.bn_after(model, layers).values()]


def bn_penalty(model: nn.Module, layers: list[str], lam: float):
    """``penalty(model)`` for ``train.fit``: ``lam * sum |gamma|`` over the BNs after ``layers`` (L1).
    Added to the loss, its gradient is ``lam * sign(gamma)`` (0 at gamma = 0), the subgradient that
    Liu et al.'s code adds to the BN weights' gradients."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0 (the L1 factor on BN weights), got {lam}")
    gammas = bn_weights(model, layers)

    def penalty(_model):
        return lam * sum(g.abs().sum() for g in gammas)
    return penalty


def gamma_histogram(model: nn.Module, layers: list[str], per_decade: int = 4) -> dict:
    """Histogram of |gamma| over the BNs after ``layers``: ``edges`` 0, then log-spaced from 1e-4 with
    ``per_decade`` bins per decade up to the largest |gamma| (a log scale shows the mass near 0 that L1
    sparsity training creates), ``counts`` per bin, and the median and share below 1e-3 / 1e-2 / 5e-2."""
    g = torch.cat([w.detach().abs().flatten().double().cpu() for w in bn_weights(model, layers)])
    top = max(1.0, float(g.max()))
    decades = max(1, int(torch.tensor(top / 1e-4).log10().ceil()))
    edges = [0.0] + [1e-4 * 10 ** (i / per_decade) for i in range(decades * per_decade + 1)]
    counts = torch.histogram(g.clamp(max=edges[-1]), torch.tensor(edges, dtype=torch.float64)).hist
    return {"edges": edges, "counts": [int(c) for c in counts], "n": len(g), "median": float(g.median()),
            "share_below": {str(t): float((g < t).double().mean()) for t in (1e-3, 1e-2, 5e-2)}}


def sparsify(model: nn.Module, data, lam: float, *, layers: list[str] | None = None, **fit) -> list[dict]:
    """Sparsity training of ``model`` in place: ``train.fit`` with the L1 penalty on the gammas after ``layers``
    (default: every conv); ``fit``: its keyword arguments (epochs, lr, checkpoint, ...). Returns its curves."""
    layers = layers or masks_mod.conv_layers(model)
    return train.fit(model, data, penalty=bn_penalty(model, layers, lam), **{"desc": "sparsity training", **fit})


def prune(model: nn.Module, data, rate: float, *, iterations: int = 3, lam: float = 1e-5,
          layers: list[str] | None = None, checkpoint_prefix: Path | None = None, **finetune) -> tuple:
    """Slim ``model`` (in place) to ``rate`` of its filters removed; returns ``(masks, history)``. Each
    iteration's fine-tuning carries the L1 penalty ``lam`` (``bn_penalty``); run ``sparsify`` first for
    gammas that are already sparse when the first iteration ranks them.

    ``finetune``: keyword arguments of ``train.fit`` for each iteration's fine-tuning (epochs, lr, ...).
    ``checkpoint_prefix``: each iteration's fine-tuning checkpoints to ``<prefix>-it<i>.pt`` (resumable);
    the masks of iteration i are recomputed from the weights left by iteration i-1, so they resume too.
    """
    layers = layers or masks_mod.conv_layers(model)
    history, masks = [], {}
    for it in range(1, iterations + 1):
        target = rate * it / iterations
        scores = criteria.get("bn_gamma")(model, layers)  # already-pruned filters have gamma 0: stay pruned
        masks = masks_mod.from_scores(scores, target, scope="global")
        masked = surgery.apply_masks(model, masks)
        model.load_state_dict(masked.state_dict())
        hooks = surgery.hold_masks(model, masks)
        try:
            ckpt = None if checkpoint_prefix is None else Path(f"{checkpoint_prefix}-it{it}.pt")
            curves = train.fit(model, data, penalty=bn_penalty(model, layers, lam), checkpoint=ckpt,
                               desc=f"slimming {target:.2f}", **finetune)
        finally:
            for h in hooks:
                h.remove()
        history.append({"iteration": it, "rate": target, "curves": curves})
    return masks, history
