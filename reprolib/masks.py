"""Importance scores + prune rates -> keep-masks (True = keep).

Filter masks (``from_scores``) follow HRank's rule per layer: ``int(C * r)`` filters are pruned,
the lowest-scoring first; ties go to the lower index (it is pruned first), so masks are
deterministic. ``scope="global"`` is network slimming's rule instead: one threshold over all the
given layers. Weight masks (``weight_masks``) do the same per weight entry (Han et al. 2015).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn


def conv_layers(model: nn.Module) -> list[str]:
    """Qualified names of the model's Conv2d modules, in module order (the order of rate specs)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _check_rate(name: str, rate) -> float:
    rate = float(rate)
    if not 0 <= rate < 1:  # also rejects NaN
        raise ValueError(f"rate for {name} is {rate}: it must be in [0, 1) (0 keeps every filter)")
    return rate


def _per_layer_rates(scores: Mapping[str, torch.Tensor], rates) -> dict[str, float]:
    """Expand ``rates`` (one float, a dict name -> rate, or a list in ``scores`` order) to a dict."""
    names = list(scores)
    if isinstance(rates, Mapping):
        unknown = [n for n in rates if n not in scores]
        if unknown:
            raise ValueError(f"rates name layers that have no scores: {unknown}; scored layers: {names}")
        missing = [n for n in names if n not in rates]
        if missing:
            raise ValueError(f"rates has no entry for {missing}; give every scored layer a rate (0.0 keeps it whole)")
        return {n: _check_rate(n, rates[n]) for n in names}
    if isinstance(rates, Sequence) and not isinstance(rates, str):
        if len(rates) != len(names):
            raise ValueError(f"rates has {len(rates)} entries but scores has {len(names)} layers; "
                             "give one rate per scored layer, in the order of scores")
        return {n: _check_rate(n, r) for n, r in zip(names, rates)}
    return {n: _check_rate(n, rates) for n in names}


def _flat_scores(name: str, s: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(s).detach().reshape(-1).double().cpu()
    if s.numel() == 0:
        raise ValueError(f"scores for {name} are empty")
    if torch.isnan(s).any():
        raise ValueError(f"scores for {name} contain NaN; the criterion failed on this layer")
    return s


def _lowest(s: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` lowest scores; among equal scores the lower index comes first."""
    return torch.sort(s, stable=True).indices[:n]


def from_scores(scores: Mapping[str, torch.Tensor], rates, *, scope: str = "local",
                min_keep: int = 1, round_to: int | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks over output filters (True = keep) from per-filter scores (higher = keep).

    ``scope="local"``: each layer prunes exactly ``int(C * rate)`` of its C filters (HRank's rule),
    but never below ``min_keep`` kept filters. ``rates``: one float, a dict layer -> rate, or a list
    in the order of ``scores``.
    ``scope="global"``: ``rates`` is one float; the ``int(total * rate)`` lowest scores over all the
    layers are pruned (one threshold, network slimming's rule; ties: earlier layer, then lower index,
    pruned first), except that each layer keeps its ``min_keep`` best filters. The scores must be
    comparable across layers (e.g. BN gammas); normalise them first if they are not.
    ``round_to`` (hardware-aware widths, off by default so that the papers' rates stay exact): each
    layer's kept count is then rounded up to a multiple of ``round_to`` (at most all its filters),
    the filters kept back being its best-scored pruned ones. CPU kernels compute channels in blocks
    (8 or 16 lanes), so a layer with 7 filters costs about what one with 16 does.
    """
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive int (e.g. 8 or 16) or None, got {round_to!r}")
    if hasattr(rates, "tolist"):  # numpy array or tensor of rates, or a 0-d one
        rates = rates.tolist()
    for n, s in scores.items():
        if torch.as_tensor(s).dim() != 1:
            raise ValueError(f"scores for {n} have shape {tuple(torch.as_tensor(s).shape)}: from_scores takes one "
                             "score per filter (1-D); use weight_masks for weight-level scores")
    flat = {n: _flat_scores(n, s) for n, s in scores.items()}
    masks = {n: torch.ones(s.numel(), dtype=torch.bool) for n, s in flat.items()}
    if scope == "local":
        for n, rate in _per_layer_rates(flat, rates).items():
            c = flat[n].numel()
            n_prune = min(int(c * rate), max(c - min_keep, 0))
            masks[n][_lowest(flat[n], n_prune)] = False
        return _round_up(masks, flat, round_to)
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r}: choose 'local' or 'global'")
    if isinstance(rates, (Mapping, Sequence)):
        raise ValueError("scope='global' takes one rate (the share pruned over all layers), "
                         f"got {type(rates).__name__}; use scope='local' for per-layer rates")
    rate = _check_rate("global", rates)
    all_scores = torch.cat(list(flat.values()))
    prunable = []
    for s in flat.values():  # a layer's min_keep best filters are never candidates
        p = torch.ones(s.numel(), dtype=torch.bool)
        p[torch.sort(s, stable=True).indices[max(s.numel() - min_keep, 0):]] = False
        prunable.append(p)
    prunable = torch.cat(prunable)
    n_prune = int(all_scores.numel() * rate)
    if n_prune > int(prunable.sum()):
        raise ValueError(f"global rate {rate} asks to prune {n_prune} of {all_scores.numel()} filters, but "
                         f"min_keep={min_keep} per layer leaves only {int(prunable.sum())} prunable")
    order = torch.sort(all_scores, stable=True).indices  # ties: position in the concatenation
    pruned = order[prunable[order]][:n_prune]
    keep = torch.ones(all_scores.numel(), dtype=torch.bool)
    keep[pruned] = False
    return _round_up(dict(zip(flat, keep.split([s.numel() for s in flat.values()]))), flat, round_to)


def _round_up(masks: dict[str, torch.Tensor], flat: dict[str, torch.Tensor], round_to: int | None) -> dict[str, torch.Tensor]:
    """Each mask's kept count rounded up to a multiple of ``round_to`` (capped at the layer's size) by
    keeping back its best-scored pruned filters (among equal scores the higher index, the reverse of
    the order in which they were pruned)."""
    if round_to is None or round_to == 1:
        return masks
    out = {}
    for n, keep in masks.items():
        keep = keep.clone()
        kept, c = int(keep.sum()), keep.numel()
        extra = min(c, -(-kept // round_to) * round_to) - kept
        if extra > 0:
            order = torch.sort(flat[n], stable=True).indices  # pruning order: lowest score first
            pruned = order[~keep[order]]
            keep[pruned[len(pruned) - extra:]] = True
        out[n] = keep
    return out


def weight_masks(scores: Mapping[str, torch.Tensor], sparsity: float,
                 scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep-masks shaped like each weight: prune ``int(n * sparsity)`` lowest scores, over all
    layers together (``"global"``, Han et al.'s usual setting) or in each layer (``"local"``).
    Ties: earlier layer, then lower flat index, pruned first."""
    if scope not in ("global", "local"):
        raise ValueError(f"unknown scope {scope!r}: choose 'global' or 'local'")
    rate = _check_rate("weight sparsity", sparsity)
    flat = {n: _flat_scores(n, s) for n, s in scores.items()}
    if scope == "local":
        masks = {}
        for n, s in flat.items():
            keep = torch.ones(s.numel(), dtype=torch.bool)
            keep[_lowest(s, int(s.numel() * rate))] = False
            masks[n] = keep
    else:
        all_scores = torch.cat(list(flat.values()))
        keep = torch.ones(all_scores.numel(), dtype=torch.bool)
        keep[_lowest(all_scores, int(all_scores.numel() * rate))] = False
        masks = dict(zip(flat, keep.split([s.numel() for s in flat.values()])))
    return {n: m.reshape(torch.as_tensor(scores[n]).shape) for n, m in masks.items()}


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Share of pruned (False) entries over all masks together."""
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        raise ValueError("sparsity of no masks is undefined: masks is empty")
    return 1 - sum(int(m.sum()) for m in masks.values()) / total
