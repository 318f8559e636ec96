"""Budget-aware regularisation (BAR; Lemaire, Achkar, Jodoin, CVPR 2019, "Structured pruning of neural
networks with budget-aware regularization"; the summary's Section 4.9, heading only) of a residual network to
one FLOPs budget, then folded into masks that ``surgery.shrink`` turns into the really smaller network.

What we take from the paper ("sparsity with a budget"): a learnable soft mask per channel, a sparsity loss on
the masks, and a budget-aware objective ``L + lam * f(V; a, b) * L_S`` whose weight ``f`` is a barrier in the
cost ``V`` of the network the masks define:

* **Mask parametrisation** (``sample``, ``deterministic``, ``prob_nonzero``): the Hard Concrete distribution of
  Louizos, Welling and Kingma (ICLR 2018) that BAR uses. ``u ~ U(0, 1)``,
  ``s = sigmoid((log u - log(1 - u) + log_alpha) / BETA)``, ``z = min(1, max(0, s (ZETA - GAMMA) + GAMMA))``
  with ``BETA = 2/3, GAMMA = -0.1, ZETA = 1.1``; at test time ``s = sigmoid(log_alpha)``. The stretch past
  [0, 1] and the clamp give *exact* zeros: at test time whenever ``log_alpha <= -log 11``, in training with
  probability ``1 - P(z != 0)``, ``P(z != 0) = sigmoid(log_alpha - BETA log(-GAMMA / ZETA))``.
* **Sparsity loss** ``L_S``: the expected cost of the network, ``sum_c cost_c P(z_c != 0)`` over the gated
  channels plus the cost nobody gates, divided by the dense cost. The paper weighs each channel by its
  activation volume for its volume budget; for a FLOPs budget (ours: the FLOPs variant) by the true FLOPs the
  channel costs (``FlopsModel``: its filter in conv1 and its input channel in conv2).
* **Barrier** (``barrier``): with ``x = (V - a) / (b - a)``, ``f = 0`` for ``V <= a``, ``x^2 / (1 - x)`` for
  ``a < V < b``, infinite for ``V >= b``: finite inside the budget, growing without bound as V approaches it.
  ``V`` is the true FLOPs share of the network the *deterministic* masks define (no gradient: it only sets
  the weight of ``L_S``). The budget ``b`` moves from ``(1 + tolerance)`` of the dense cost down to the final
  budget B along a sigmoidal progress curve over the training (``progress``), and ``a = B - margin``.

Sources: the paper's full text could not be read here. The Hard Concrete is Louizos et al.'s; the barrier's
form, the moving budget, the sigmoidal progress and the constants (tolerance 0.01, margin 1e-4, slope 10) are
as public unofficial PyTorch implementations of BAR write them (their ``BARStructuredLoss``, which cites the
paper's Eq. 5 for ``a``). Simplified, ours:

* the masks gate the block-internal channels only (the output of every residual block's conv1, after its BN);
  the paper's residual-network treatment, which also lets a block write to a subset of the residual channels,
  is not implemented. A block whose channels all close is removed (its branch is gone);
* no knowledge distillation (the paper adds a distillation loss from the unpruned network): every method of the
  survey fine-tunes with plain cross-entropy;
* one mask sample per channel per batch, from a generator seeded by (seed, step, layer), so that a run resumed
  from its checkpoint equals an uninterrupted one;
* the barrier is capped at ``cap`` inside the penalty (a finite step when V overshoots b);
* ``log_alpha = scale * theta``, ``theta`` the trained parameter: the gates share the network's SGD (momentum,
  weight decay) and ``scale`` moves ``log_alpha`` ``scale**2`` times faster; ``log_alpha`` starts at ``log 11``
  (``OPEN``), the smallest value whose test-time mask is 1, so the gated network computes the baseline exactly;
* at the end, if the deterministic masks still exceed the budget, the open channels with the lowest
  ``log_alpha`` are closed until the FLOPs fit (``close_to_budget``; the run records how many).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from . import criteria, train
from .counting import count
from .group_lasso import residual_blocks

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # Louizos et al. 2018, Hard Concrete: temperature, stretch interval
OPEN = math.log(11)  # sigmoid(OPEN) (ZETA - GAMMA) + GAMMA = 1: the smallest log_alpha with a test-time mask of 1
CLOSED = -10.0       # a log_alpha whose test-time mask is exactly 0 (any value <= -log 11 is)
ATTR = "bar_gates"   # the gates' submodule on the gated model (its parameters train with the network's)


# --------------------------------------------------------------------------- the mask parametrisation

def _stretch(s: torch.Tensor) -> torch.Tensor:
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def sample(log_alpha: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A Hard Concrete sample per entry from uniform noise ``u`` in (0, 1): exact 0 and 1 have positive mass."""
    return _stretch(torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA))


def deterministic(log_alpha: torch.Tensor) -> torch.Tensor:
    """The test-time mask: exactly 0 for ``log_alpha <= -log 11``, exactly 1 for ``log_alpha >= log 11``."""
    return _stretch(torch.sigmoid(log_alpha))


def prob_nonzero(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z != 0) of the training-time mask (Louizos et al., Eq. 12): differentiable in ``log_alpha``."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


# --------------------------------------------------------------------------- the budget

def barrier(v, a: float, b: float, cap: float = math.inf) -> torch.Tensor:
    """``f(V; a, b)``: 0 for ``V <= a``, ``x^2 / (1 - x)`` with ``x = (V - a) / (b - a)`` for ``a < V < b``,
    ``cap`` (default infinite) for ``V >= b``; never above ``cap``. ``v``: a number or a tensor."""
    if not a < b:
        raise ValueError(f"the barrier needs a < b (a lower bound below the budget), got a={a}, b={b}")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    v = torch.as_tensor(v, dtype=torch.float64) if not torch.is_tensor(v) else v
    x = (v - a) / (b - a)
    inside = x.clamp(0.0, 1.0)
    f = inside ** 2 / (1 - inside).clamp_min(torch.finfo(inside.dtype).tiny)
    f = torch.where(x >= 1, torch.full_like(f, cap), torch.where(x <= 0, torch.zeros_like(f), f))
    return f.clamp(max=cap)


def progress(t: float, slope: float = 10.0) -> float:
    """Sigmoidal progress from 0 (``t = 0``) to 1 (``t = 1``), rescaled so that it hits both ends exactly."""
    if not 0 <= t <= 1:
        raise ValueError(f"progress is defined on [0, 1], got {t}")
    lo = 1 / (1 + math.exp(slope / 2))
    return (1 / (1 + math.exp(slope * (0.5 - t))) - lo) / (1 - 2 * lo)


def budget_at(t: float, budget: float, tolerance: float = 0.01, slope: float = 10.0) -> float:
    """The moving budget ``b`` (a share of the dense cost) at training progress ``t``: ``1 + tolerance`` at the
    start, the final ``budget`` at the end, along ``progress``."""
    p = progress(t, slope)
    return (1 - p) * (1 + tolerance) + p * budget


@dataclass
class FlopsModel:
    """True FLOPs of a residual network whose blocks keep ``k_l`` of their internal channels:
    ``constant + sum_l per_channel[l] * k_l`` (exact: a kept internal channel costs its conv1 filter and its
    conv2 input channel; nothing else depends on it)."""
    layers: list[str]          # the gated convs (each block's conv1)
    channels: list[int]
    per_channel: list[float]   # FLOPs per kept channel of each layer
    constant: float            # FLOPs that no gate changes
    dense: float

    def flops(self, kept) -> float:
        return self.constant + sum(c * int(k) for c, k in zip(self.per_channel, kept))


def flops_model(model: nn.Module, input_size=(1, 3, 32, 32)) -> FlopsModel:
    """The ``FlopsModel`` of ``model``'s residual blocks (conv1's output channels gated), from ``count``."""
    rows = {r["name"]: r for r in count(model, input_size)["layers"]}
    dense = float(sum(r["flops"] for r in rows.values()))
    layers, channels, per = [], [], []
    for b in residual_blocks(model):
        c1, c2 = rows[f"{b}.conv1"], rows[f"{b}.conv2"]
        n = model.get_submodule(f"{b}.conv1").out_channels
        layers.append(f"{b}.conv1")
        channels.append(n)
        per.append(c1["flops"] / n + (c2["flops"] - c2["bias_flops"]) / n)
    return FlopsModel(layers, channels, per, dense - sum(p * n for p, n in zip(per, channels)), dense)


# --------------------------------------------------------------------------- gates on a network

class Gates(nn.Module):
    """The soft masks of the gated layers: ``theta[i]`` per channel, ``log_alpha = scale * theta``. In training
    mode ``mask(i)`` samples the Hard Concrete (seeded by (seed, step, i)); in eval mode it is deterministic.
    ``step`` (training steps taken, advanced by the penalty) travels in the state dict."""

    def __init__(self, layers: list[str], channels: list[int], init: float = OPEN, scale: float = 1.0,
                 seed: int = 0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.layers, self.scale, self.seed, self.step = list(layers), float(scale), int(seed), 0
        self.theta = nn.ParameterList([nn.Parameter(torch.full((c,), init / scale)) for c in channels])
        self.handles: list = []

    def log_alpha(self, i: int) -> torch.Tensor:
        return self.theta[i] * self.scale

    def mask(self, i: int) -> torch.Tensor:
        la = self.log_alpha(i)
        if not self.training:
            return deterministic(la)
        g = torch.Generator(la.device).manual_seed((self.seed * 1_000_003 + self.step) * 1009 + i)
        u = torch.rand(la.shape, generator=g, device=la.device) * (1 - 2e-6) + 1e-6
        return sample(la, u)

    def kept(self) -> list[int]:
        """Channels each layer's test-time mask keeps (one read from the device)."""
        with torch.no_grad():
            return torch.stack([(deterministic(self.log_alpha(i)) > 0).sum() for i in range(len(self.theta))]).tolist()

    def get_extra_state(self):
        return torch.tensor(self.step)

    def set_extra_state(self, state) -> None:
        self.step = int(state)


def attach(model: nn.Module, init: float = OPEN, scale: float = 1.0, seed: int = 0) -> Gates:
    """Gate the internal channels of every residual block of ``model`` (in place): a ``Gates`` submodule
    (``model.bar_gates``) and a forward hook on each block's bn1 that multiplies its output by the mask."""
    if hasattr(model, ATTR):
        raise ValueError(f"{type(model).__name__} already carries gates ({ATTR}): detach them first")
    layers = [f"{b}.conv1" for b in residual_blocks(model)]
    bns = criteria.filters.bn_after(model, layers)
    p = next(model.parameters())
    gates = Gates(layers, [model.get_submodule(l).out_channels for l in layers], init, scale, seed).to(p.device)
    model.add_module(ATTR, gates)
    for i, l in enumerate(layers):
        hook = (lambda i: lambda m, inp, out: out * gates.mask(i).to(out.dtype).view(1, -1, *[1] * (out.dim() - 2)))(i)
        gates.handles.append(model.get_submodule(bns[l]).register_forward_hook(hook))
    return gates


def detach(model: nn.Module) -> None:
    """Remove the gates and their hooks: ``model`` is the plain network again."""
    gates = getattr(model, ATTR, None)
    if gates is None:
        raise ValueError(f"{type(model).__name__} carries no gates")
    for h in gates.handles:
        h.remove()
    delattr(model, ATTR)


def flops_share(gates: Gates, fm: FlopsModel) -> float:
    """True FLOPs of the network the test-time masks define, as a share of the dense FLOPs."""
    return fm.flops(gates.kept()) / fm.dense


def budget_penalty(gates: Gates, fm: FlopsModel, budget: float, lam: float, total_steps: int, *,
                   tolerance: float = 0.01, margin: float = 1e-4, slope: float = 10.0, cap: float = 1e3):
    """``penalty(model)`` for ``train.fit``: ``lam * f(V; budget - margin, b(t)) * L_S``, ``t`` the share of
    ``total_steps`` taken (``gates.step``, advanced here once per call). ``budget``: the share of the dense true
    FLOPs to keep at the end."""
    if not 0 < budget < 1:
        raise ValueError(f"budget is the share of the dense FLOPs to keep, in (0, 1); got {budget}")
    if not lam >= 0 or total_steps < 1 or not math.isfinite(cap):
        raise ValueError(f"need lam >= 0, total_steps >= 1 and a finite cap; got {lam}, {total_steps}, {cap}")
    if fm.layers != gates.layers:
        raise ValueError("the FLOPs model and the gates name different layers")
    costs: dict = {}  # device -> per-channel FLOPs there (copied once: no step waits for a host copy)

    def penalty(_model):
        b = budget_at(min(gates.step / total_steps, 1.0), budget, tolerance, slope)
        dev = gates.theta[0].device
        if dev not in costs:
            costs[dev] = torch.tensor(fm.per_channel, dtype=torch.float32, device=dev)
        expected, kept = fm.constant, fm.constant
        for i in range(len(gates.theta)):
            la, c = gates.log_alpha(i), costs[dev][i]
            expected = expected + c * prob_nonzero(la).sum()
            kept = kept + c * (deterministic(la.detach()) > 0).sum()
        f = barrier(kept / fm.dense, budget - margin, b, cap).to(torch.float32)
        gates.step += 1
        return lam * f * (expected / fm.dense)
    return penalty


def close_to_budget(gates: Gates, fm: FlopsModel, budget: float) -> int:
    """Close (set to ``CLOSED``) the open channels with the lowest ``log_alpha``, over all layers, until the
    test-time masks keep at most ``budget`` of the dense FLOPs. Returns how many were closed."""
    with torch.no_grad():
        la = torch.cat([gates.log_alpha(i).detach().double().cpu() for i in range(len(gates.theta))])
        cost = torch.cat([torch.full((n,), c, dtype=torch.float64) for n, c in zip(fm.channels, fm.per_channel)])
        is_open = deterministic(la) > 0
        excess = fm.constant + float(cost[is_open].sum()) - budget * fm.dense
        if excess <= 0:
            return 0
        order = torch.sort(la, stable=True).indices
        order = order[is_open[order]]
        n = int(torch.searchsorted(torch.cumsum(cost[order], 0), torch.tensor([excess], dtype=torch.float64)).item()) + 1
        if n > len(order):
            raise ValueError(f"closing every gate leaves {fm.constant / fm.dense:.1%} of the FLOPs, above {budget:.1%}")
        offsets = np.cumsum([0] + fm.channels)
        for j in order[:n].tolist():
            i = int(np.searchsorted(offsets, j, side="right") - 1)
            gates.theta[i][j - offsets[i]] = CLOSED / gates.scale
    return n


def fold(model: nn.Module) -> dict[str, torch.Tensor]:
    """Fold the test-time masks into the BN after each gated conv (``z * (gamma x + beta)``), remove the gates,
    and return the filter keep-masks (``z > 0``): ``surgery.shrink(model, masks)`` is then exact."""
    gates = getattr(model, ATTR, None)
    if gates is None:
        raise ValueError(f"{type(model).__name__} carries no gates")
    bns = criteria.filters.bn_after(model, gates.layers)
    out = {}
    with torch.no_grad():
        for i, l in enumerate(gates.layers):
            z = deterministic(gates.log_alpha(i))
            bn = model.get_submodule(bns[l])
            bn.weight.mul_(z.to(bn.weight.dtype))
            bn.bias.mul_(z.to(bn.bias.dtype))
            out[l] = (z > 0).cpu()
    detach(model)
    return out


def prune(model: nn.Module, data, *, budget: float, lam: float, epochs: int, batch_size: int = 128,
          init: float = OPEN, scale: float = 1.0, tolerance: float = 0.01, margin: float = 1e-4,
          slope: float = 10.0, cap: float = 1e3, input_size=(1, 3, 32, 32), **fit) -> tuple:
    """BAR training of ``model`` (in place) to keep ``budget`` of its true FLOPs; returns ``(masks, info)``.
    Gates are attached (their noise seeded by ``fit``'s ``seed``), the network and gates trained with
    ``train.fit`` (``fit``: its other keyword arguments: lr, seed, checkpoint, ...) and the budget penalty,
    each epoch's FLOPs share and budget added to its curve; then ``close_to_budget``, and ``fold``: ``model``
    is the plain masked network after it."""
    fm = flops_model(model, input_size)
    gates = attach(model, init, scale, fit.get("seed", 0))
    steps = math.ceil(len(data.train_y) / batch_size) * epochs
    pen = budget_penalty(gates, fm, budget, lam, steps, tolerance=tolerance, margin=margin, slope=slope, cap=cap)
    user_on_epoch = fit.pop("on_epoch", None)

    def on_epoch(epoch, _model, history):
        history[-1].update(flops_share=flops_share(gates, fm),
                           budget=budget_at(min(gates.step / steps, 1.0), budget, tolerance, slope))
        if user_on_epoch is not None:
            user_on_epoch(epoch, _model, history)
    curves = train.fit(model, data, epochs=epochs, batch_size=batch_size, penalty=pen, on_epoch=on_epoch,
                       **{"desc": "BAR", **fit})
    share = flops_share(gates, fm)
    closed = close_to_budget(gates, fm, budget)
    masks = fold(model)
    return masks, {"curves": curves, "flops_share_trained": share, "closed_to_fit": closed,
                   "flops_share": fm.flops([int(m.sum()) for m in masks.values()]) / fm.dense}
