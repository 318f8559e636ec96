"""Network slimming (Liu et al. 2017) as Tessier et al. (2022, Section 4.1) run it.

Three pruning iterations with a linearly growing share of filters removed (rate/3, 2*rate/3, rate),
filters ranked *globally* by the magnitude of the weight of the BatchNorm that follows them; after
each iteration the masked network is fine-tuned with a smooth-L1 penalty (factor ``lam``) on those BN
weights, the pruned filters held at zero. The result is a masked network (same shapes) and its masks:
``surgery.shrink`` then turns it into the really smaller one.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import criteria, masks as masks_mod, surgery, train


def bn_penalty(model: nn.Module, layers: list[str], lam: float, beta: float = 1.0):
    """``penalty(model)`` for ``train.fit``: lam * sum of smooth-L1(gamma) over the BNs after ``layers``.
    The document does not give the smooth-L1 threshold; ``beta`` is PyTorch's (1.0) unless set."""
    bns = [model.get_submodule(b) for b in criteria.filters.bn_after(model, layers).values()]

    def penalty(_model):
        return lam * sum(F.smooth_l1_loss(bn.weight, torch.zeros_like(bn.weight), reduction="sum", beta=beta)
                         for bn in bns)
    return penalty


def prune(model: nn.Module, data, rate: float, *, iterations: int = 3, lam: float = 1e-5,
          layers: list[str] | None = None, checkpoint_prefix: Path | None = None, **finetune) -> tuple:
    """Slim ``model`` (in place) to ``rate`` of its filters removed; returns ``(masks, history)``.

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
