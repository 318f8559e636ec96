"""Structured sparsity learning (SSL; Wen, Wu, Wang, Chen, Li, NIPS 2016, "Learning structured sparsity in
deep neural networks"; the summary's Section 2.1) on residual networks: a group lasso added to the loss,
then the groups whose L2 norm fell below a threshold pruned, and the network shrunk.

The penalty is Wen et al.'s Eq. (1)-(3): ``sum_kind lam_kind * sum_g ||w_g||_2`` over three kinds of group of
every residual block's branch (``conv1 -> bn1 -> relu -> conv2 -> bn2``), the kinds the summary lists as
filter-wise, channel-wise and layer-wise (depth):

* ``"filter"``: each output filter ``W[n, :, :, :]`` of the block's conv1 and conv2;
* ``"channel"``: each input channel ``W[:, c, :, :]`` of the block's conv2, i.e. the block-internal channel c;
* ``"depth"``: the whole residual branch (conv1 and conv2 weights together): Wen et al.'s depth-wise SSL on
  ResNets, where the shortcut carries the data once the branch is gone.

Ours: the stem conv, the fc layer and the channel groups of the convs that read the residual stream (every
block's conv1) are not regularised: removing a stream channel needs every reader and writer of it zero at once,
which per-layer groups do not express and filter masks cannot use. Shape-wise groups (Wen et al.'s fourth kind)
are left out: they do not remove channels, so ``surgery.shrink`` cannot turn them into a smaller network.

Pruning (``masks``): a group whose norm is below ``threshold`` is removed. A block's internal channel c goes
when conv1's filter c *or* conv2's channel c is below it (either one cuts the path through c); conv2's filter n
goes when it is below it; a branch below it loses both convs. ``threshold_for_flops`` raises that one threshold
until the shrunk network removes a target share of its true FLOPs (ours: the same rule, the threshold set by a
FLOPs budget, so that SSL can be compared at equal FLOPs).

A caveat of BatchNorm networks (ours, stated in the chapter): a conv followed by BN computes the same function
at any scale of a filter, so the data loss cannot oppose the group lasso's pull on a filter's norm; it only
rotates the filter. The filters whose norms fall first are those with small norms or small gradients, and a
filter whose weights are zero still passes its BN shift as a constant map, which the pruning removes.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from tqdm import tqdm

from . import surgery
from .counting import closest, count

KINDS = ("filter", "channel", "depth")


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of the modules with a ``conv1`` and a ``conv2`` (the two convs of a residual branch)."""
    names = [n for n, m in model.named_modules()
             if all(isinstance(getattr(m, c, None), nn.Conv2d) for c in ("conv1", "conv2"))]
    if not names:
        raise ValueError(f"{type(model).__name__} has no residual blocks (modules with conv1 and conv2)")
    for n in names:
        b = model.get_submodule(n)
        if b.conv2.in_channels != b.conv1.out_channels or b.conv1.groups != 1 or b.conv2.groups != 1:
            raise ValueError(f"block {n!r}: conv2 must read conv1's {b.conv1.out_channels} channels (groups=1)")
    return names


def _check_blocks(model: nn.Module, blocks) -> list[str]:
    blocks = list(blocks)
    if not blocks:
        raise ValueError("no blocks given: pass residual_blocks(model) or a subset of it")
    known = set(residual_blocks(model))
    unknown = [b for b in blocks if b not in known]
    if unknown:
        raise ValueError(f"not residual blocks of the model: {unknown}; known: {sorted(known)[:4]}...")
    return blocks


def group_norms(model: nn.Module, blocks) -> dict[str, dict[str, torch.Tensor]]:
    """L2 norm of every group, differentiable: ``{"filter": {conv: (C_out,)}, "channel": {conv2: (C_in,)},
    "depth": {block: ()}}``; conv names are ``<block>.conv1`` / ``<block>.conv2``."""
    out = {k: {} for k in KINDS}
    for b in _check_blocks(model, blocks):
        w1, w2 = model.get_submodule(b).conv1.weight, model.get_submodule(b).conv2.weight
        out["filter"][f"{b}.conv1"] = torch.linalg.vector_norm(w1.flatten(1), dim=1)
        out["filter"][f"{b}.conv2"] = torch.linalg.vector_norm(w2.flatten(1), dim=1)
        out["channel"][f"{b}.conv2"] = torch.linalg.vector_norm(w2.transpose(0, 1).flatten(1), dim=1)
        # sqrt(||w1||^2 + ||w2||^2) from the two tensors, without concatenating them
        out["depth"][b] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(w1),
                                                                torch.linalg.vector_norm(w2)]))
    return out


def _check_lam(lam: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(lam, Mapping):
        raise ValueError(f"lam must map group kinds {KINDS} to factors, got {type(lam).__name__}")
    unknown = [k for k in lam if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown group kinds {unknown}: choose among {KINDS}")
    for k, v in lam.items():
        if not float(v) >= 0:  # also rejects NaN
            raise ValueError(f"lam[{k!r}] must be >= 0, got {v}")
    return {k: float(v) for k, v in lam.items() if float(v) > 0}


def penalty(model: nn.Module, blocks, lam: Mapping[str, float]):
    """``penalty(model)`` for ``train.fit``: ``sum_kind lam[kind] * sum_g ||w_g||_2`` (Wen et al., Eq. 2-3).
    Its gradient on a group is ``lam * w_g / ||w_g||``; a group at exactly zero contributes 0 and gets the
    subgradient 0 (``torch.linalg.vector_norm``'s), not NaN."""
    blocks, lam = _check_blocks(model, blocks), _check_lam(lam)

    def pen(_model):
        norms = group_norms(model, blocks)
        total = None
        for kind, factor in lam.items():
            s = factor * torch.stack([n.sum() for n in norms[kind].values()]).sum()
            total = s if total is None else total + s
        return total if total is not None else model.get_submodule(blocks[0]).conv1.weight.new_zeros(())
    return pen


def masks(model: nn.Module, blocks, threshold: float) -> dict[str, torch.Tensor]:
    """Filter keep-masks (True = keep) of every block's conv1 and conv2 from the groups below ``threshold``
    (the rule of the module docstring). ``surgery.shrink(model, masks)`` gives the smaller network."""
    if not float(threshold) > 0:
        raise ValueError(f"threshold must be > 0 (groups with a norm below it are pruned), got {threshold}")
    blocks = _check_blocks(model, blocks)
    with torch.no_grad():
        norms = group_norms(model, blocks)
    out = {}
    for b in blocks:
        c1, c2 = f"{b}.conv1", f"{b}.conv2"
        keep1 = (norms["filter"][c1] >= threshold) & (norms["channel"][c2] >= threshold)
        keep2 = norms["filter"][c2] >= threshold
        if norms["depth"][b] < threshold:
            keep1, keep2 = torch.zeros_like(keep1), torch.zeros_like(keep2)
        out[c1], out[c2] = keep1.cpu(), keep2.cpu()
    return out


def candidate_thresholds(model: nn.Module, blocks) -> list[float]:
    """Every threshold at which the masks change, ascending: a hair above each distinct group norm."""
    with torch.no_grad():
        norms = group_norms(model, blocks)
    values = torch.cat([torch.atleast_1d(n).double().cpu() for kind in KINDS for n in norms[kind].values()])
    return [v * (1 + 1e-9) + 1e-30 for v in torch.unique(values).tolist()]


def threshold_for_flops(model: nn.Module, blocks, target: float, input_size=(1, 3, 32, 32)) -> dict:
    """The candidate threshold whose shrunk network removes the share of true FLOPs closest to ``target``.
    The masks are nested in the threshold (a higher one prunes a superset), so the FLOPs removed grow with it
    and a binary search finds the first candidate at or above the target; it or the one before it is the
    closest. Returns the threshold, the FLOPs reduction reached and the number of networks shrunk."""
    if not 0 < target < 1:
        raise ValueError(f"target FLOPs reduction must be in (0, 1), got {target}")
    blocks = _check_blocks(model, blocks)
    dense = count(model, input_size)["flops"]
    cands, reached = candidate_thresholds(model, blocks), {}

    def reduction(i: int) -> float:
        if i not in reached:
            small = surgery.shrink(model, masks(model, blocks, cands[i]), input_size)
            reached[i] = 1 - count(small, input_size)["flops"] / dense
        return reached[i]

    if reduction(len(cands) - 1) < target:
        raise ValueError(f"pruning every group removes only {reduction(len(cands) - 1):.1%} of the FLOPs, "
                         f"not {target:.0%}")
    best = closest(len(cands), reduction, target, f"SSL threshold for {target:.0%} FLOPs")
    return {"threshold": cands[best], "flops_reduction": reduction(best), "evaluations": len(reached)}


def summary(model: nn.Module, blocks, threshold: float) -> dict:
    """Per kind: number of groups, quantiles of their norms and the share below ``threshold`` (for records)."""
    with torch.no_grad():
        norms = group_norms(model, blocks)
    out = {}
    for kind in KINDS:
        v = torch.cat([torch.atleast_1d(n).double().cpu() for n in norms[kind].values()])
        q = torch.quantile(v, torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64))
        out[kind] = {"n": len(v), "quantiles": dict(zip(("min", "q10", "q25", "median", "q75", "q90", "max"),
                                                         q.tolist())),
                     "share_below_threshold": float((v < threshold).double().mean())}
    return out
