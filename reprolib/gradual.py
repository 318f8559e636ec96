"""Gradual magnitude pruning during training (Zhu & Gupta 2017, "To prune, or not to prune", Section 3;
the survey's Section 1.2).

The sparsity rises from ``s_i`` at step ``t0`` to ``s_f`` at step ``t0 + n * dt`` along the cubic

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3,      t in {t0, t0 + dt, ..., t0 + n dt},

fast at first, while there are many redundant weights, and slowly at the end. Every ``dt`` steps the masks
are recomputed: the lowest-|w| weights are masked until the sparsity is ``s_t``; weights pruned earlier are
ranked below every other weight, so they stay pruned (the masks only ever lose entries). Pruned weights are
held at zero between updates.

    pruner = GradualMagnitude(model, layers, final_sparsity=0.9, t0=0, n=10, dt=100)
    train.fit(model, data, on_step=pruner, ...)      # pruner.masks: the final keep-masks

Ours, stated: ``scope="global"`` (the default) ranks all layers' weights together, one threshold, as the
weight-pruning chapter's other curves do; Zhu & Gupta prune each layer to ``s_t`` (``scope="local"``).
Zhu & Gupta keep the masked weights' values and multiply them by the mask in the forward pass (their gradient
is zero through the mask); we zero the weights themselves after every optimizer step instead. The network
computes the same function and every kept weight gets the same update (SGD, momentum and weight decay act per
weight), but a pruned weight's value is not kept, so it could not come back; with masks that never regrow
(Zhu & Gupta's) it never does.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import masks as masks_mod


def cubic_sparsity(t: float, *, final_sparsity: float, initial_sparsity: float = 0.0, t0: int = 0, n: int,
                   dt: int) -> float:
    """Zhu & Gupta's target sparsity at step ``t``: ``initial_sparsity`` up to ``t0``, the cubic in between,
    ``final_sparsity`` from ``t0 + n * dt`` on."""
    if n < 1 or dt < 1:
        raise ValueError(f"the schedule needs n >= 1 pruning steps, dt >= 1 steps apart; got n={n}, dt={dt}")
    for name, s in (("initial_sparsity", initial_sparsity), ("final_sparsity", final_sparsity)):
        if not 0 <= s < 1:
            raise ValueError(f"{name} is {s}: it must be in [0, 1)")
    if final_sparsity < initial_sparsity:
        raise ValueError(f"final_sparsity {final_sparsity} is below initial_sparsity {initial_sparsity}")
    progress = min(max((t - t0) / (n * dt), 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


def update_steps(*, t0: int, n: int, dt: int) -> list[int]:
    """The steps at which the masks are recomputed: t0, t0 + dt, ..., t0 + n * dt."""
    return [t0 + k * dt for k in range(n + 1)]


def schedule_for(total_steps: int, *, begin: float, end: float, dt: int) -> dict:
    """``t0`` and ``n`` for a schedule that prunes from ``begin`` to ``end`` (fractions of ``total_steps``),
    every ``dt`` steps: t0 = round(begin * total), n = floor((end - begin) * total / dt). Ours: the papers
    give t0 and n in steps; our profiles give them as shares of the training run."""
    if not 0 <= begin < end <= 1:
        raise ValueError(f"begin {begin} and end {end} must satisfy 0 <= begin < end <= 1")
    t0 = round(begin * total_steps)
    n = int((end - begin) * total_steps // dt)
    if n < 1:
        raise ValueError(f"{total_steps} steps from {begin:.0%} to {end:.0%} of training hold no pruning step "
                         f"{dt} steps apart: lower dt or train longer")
    return {"t0": t0, "n": n, "dt": dt}


class GradualMagnitude:
    """``on_step`` hook of ``reprolib.train.fit``: gradual magnitude pruning of the weights of ``layers``
    (Conv2d / Linear module names) with the cubic schedule. ``masks``: the current keep-masks, shaped like each
    weight (None before training starts). At the first training forward pass, weights that are exactly zero
    count as pruned: none in a dense network, and in a run that ``fit`` resumes from its checkpoint, the ones
    pruned before it was saved (they were saved as zeros), so a resumed run ends as an uninterrupted one.
    See the module's docstring."""

    def __init__(self, model: nn.Module, layers: list[str], *, final_sparsity: float, n: int, dt: int,
                 t0: int = 0, initial_sparsity: float = 0.0, scope: str = "global"):
        if scope not in ("global", "local"):
            raise ValueError(f"unknown scope {scope!r}: choose 'global' or 'local'")
        if not layers:
            raise ValueError("GradualMagnitude needs at least one layer to prune")
        for name in layers:
            if not isinstance(model.get_submodule(name), (nn.Conv2d, nn.Linear)):
                kind = type(model.get_submodule(name)).__name__
                raise ValueError(f"layer {name!r} is a {kind}, not a Conv2d or Linear")
        self.layers, self.scope = list(layers), scope
        self.schedule = dict(final_sparsity=final_sparsity, initial_sparsity=initial_sparsity, t0=t0, n=n, dt=dt)
        cubic_sparsity(t0, **self.schedule)  # checks the arguments
        self.masks: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []  # per mask update of this process: step, target and reached sparsity
        self._model = model
        self._first = model.get_submodule(self.layers[0]).register_forward_pre_hook(self._start)

    def _start(self, module, args) -> None:
        """At the first forward pass in training mode: the weights that are exactly zero count as pruned
        (none in a dense network; in a run resumed from a checkpoint, the weights pruned before it was saved)."""
        if not module.training:
            return
        self._first.remove()
        if self.masks is None:
            with torch.no_grad():
                self.masks = {n: self._model.get_submodule(n).weight.ne(0) for n in self.layers}

    def sparsity_at(self, step: int) -> float:
        return cubic_sparsity(step, **self.schedule)

    def is_update(self, step: int) -> bool:
        t0, n, dt = self.schedule["t0"], self.schedule["n"], self.schedule["dt"]
        return t0 <= step <= t0 + n * dt and (step - t0) % dt == 0

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> dict[str, torch.Tensor]:
        """Recompute the masks for the target sparsity at ``step`` and zero the pruned weights."""
        weights = {n: model.get_submodule(n).weight for n in self.layers}
        scores = {n: w.detach().abs().float() for n, w in weights.items()}
        if self.masks is not None:  # pruned weights rank below every kept one: they stay pruned
            scores = {n: torch.where(self.masks[n].to(s.device), s, torch.full_like(s, -1.0))
                      for n, s in scores.items()}
        target = self.sparsity_at(step)
        new = masks_mod.weight_masks(scores, target, self.scope)
        self.masks = {n: m.to(weights[n].device) for n, m in new.items()}
        self.hold(model)
        self.history.append({"step": step, "target": target, "sparsity": masks_mod.sparsity(self.masks)})
        return self.masks

    @torch.no_grad()
    def hold(self, model: nn.Module) -> None:
        """Zero the pruned weights (after an optimizer step moved them)."""
        for n, keep in (self.masks or {}).items():
            model.get_submodule(n).weight.masked_fill_(~keep, 0)

    def __call__(self, step: int, model: nn.Module, xb=None, yb=None) -> None:
        if self.is_update(step):
            self.update(model, step)
        else:
            self.hold(model)
