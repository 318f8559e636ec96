"""The source document's own method (Otlu & Sikdokur, Section 4, Figure 3): prune, during
training, the filters whose gradients are outliers of their layer.

Intuition of the document: a large gradient means the filter still explains the loss badly, so
filters with unusually large gradients, batch after batch, are the irrelevant ones. Every
``prune_every`` (5) epochs:

1. ``gradient_norms``: on a sample of mini-batches, the gradient of every conv kernel; per filter,
   the norm of each k x k (per-input-channel) gradient slice, averaged over input channels.
   These gradients are computed with ``torch.autograd.grad`` and thrown away: no optimizer step,
   ``.grad`` untouched, BN running statistics restored ("the gradients are not applied back").
2. ``outlier_scores``: per batch and layer, a filter gets +1 when its average norm is above the
   layer's mean + s * std for that batch.
3. ``select_prune``: per layer, filters whose score is above the layer's mean + s * std of the
   scores are pruned, layer after layer, filter after filter, while the model's remaining
   parameters / initial parameters is still above ``r``.
4. ``prune_step``: removes them for real (``surgery.vgg.remove_filters``; the last conv layer
   included, its Linear consumer shrinks) and adds ``epsilon`` to the weights of the surviving filters.

``train_with_pruning`` runs ``reprolib.train.fit`` with this done every ``prune_every`` epochs and
a fresh optimizer after every real shrink (fit builds its optimizer once, from the parameters the
model had when it started).

Where the document leaves room, the reading followed here:

* "r >= [remaining parameters] / [initial parameters]" as the condition to prune cannot be meant
  literally (pruning would never start from a ratio of 1): we prune while the ratio is **above**
  r, so it ends at or just below r. Parameters are the whole model's (``model.parameters()``,
  BN and classifier included), initial = before the first pruning.
* The order in which candidates are taken when the ratio runs out is not given: we follow the
  pseudo code's loops (layers in forward order, filters in index order).
* Which mini-batches and how many ("a randomized sample of them"): ``n_batches`` (default 32)
  fresh shuffled, augmented training batches drawn at the pruning epoch (seeded), the model in
  train mode as in training, plain cross-entropy. The value is ours.
* "std" is the population standard deviation (numpy's default, ddof=0); s defaults to 1 and
  epsilon to 1e-4 (the document gives neither value). epsilon is added to every kernel weight of
  every surviving filter of the scored layers (not to biases), at every pruning step, as in Figure 3.
* "After each 5 epochs we pruned the network until the model is compressed with the given
  ratio": one scoring + pruning round per event (``max_rounds=1``), events at epochs 5, 10, 15 of
  20 (not after the last epoch, which would leave no training to recover), none once the ratio
  is reached. An event may prune fewer filters than needed: only outliers are candidates. Set
  ``max_rounds`` > 1 to repeat rounds within an event until r is reached.
* A layer keeps at least one filter (the document does not say; an empty layer breaks the net).
* r here is a parameter ratio while ThiNet's r (same column of the document's Table 1) is a
  per-layer share of kept channels: the two methods are not compressed alike at equal r.
"""
from __future__ import annotations

import inspect
import tempfile
from itertools import islice
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import register, replayable
from ..surgery.vgg import conv_names, param_count, remove_filters


# --------------------------------------------------------------------------- scoring

def gradient_norms(model: nn.Module, layers: list[str], batches, n_batches: int | None = None,
                   loss_fn=F.cross_entropy) -> dict[str, torch.Tensor]:
    """Per batch and filter, the mean over input channels of the norm of each kernel slice's
    gradient: ``{layer: [batches, out_channels]}``. Uses the first ``n_batches`` of ``batches``
    ((images, labels) pairs). Nothing of the model changes: gradients are returned, not stored
    in ``.grad`` nor applied; BN running statistics are restored. Works inside ``torch.no_grad()`` and on
    frozen weights (``requires_grad`` is switched on for the pass and restored). Runs on the model's device."""
    weights = [model.get_submodule(n).weight for n in layers]
    dev = weights[0].device
    frozen = [w for w in weights if not w.requires_grad]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    was_training = model.training
    model.train()
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    try:
        for w in frozen:
            w.requires_grad_(True)
        for xb, yb in tqdm(islice(batches, n_batches), total=n_batches, desc="gradient norms", leave=False):
            xb, yb = xb.to(dev), yb.to(dev)
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_fn(model(xb).float(), yb), weights)
            for n, g in zip(layers, grads):
                rows[n].append(g.detach().reshape(g.shape[0], g.shape[1], -1).norm(dim=2).mean(1))
    finally:
        for w in frozen:
            w.requires_grad_(False)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        model.train(was_training)
    if not rows[layers[0]]:
        raise ValueError("gradient_norms got no batches: pass a non-empty iterable of (images, labels)")
    return {n: torch.stack(v) for n, v in rows.items()}


def _above(v: torch.Tensor, s: float, dim: int) -> torch.Tensor:
    """v > mean + s * std along ``dim`` (population std)."""
    return v > v.mean(dim, keepdim=True) + s * v.std(dim, correction=0, keepdim=True)


def outlier_scores(norms: dict[str, torch.Tensor], s: float = 1.0) -> dict[str, torch.Tensor]:
    """Per layer and filter, the number of batches where the filter's average gradient norm is
    above its layer's mean + s * std in that batch: ``{layer: int64 [out_channels]}``."""
    return {n: _above(v, s, 1).sum(0) for n, v in norms.items()}


@register("gradient_outlier")
def gradient_outlier(model: nn.Module, layers: list[str], batches=None, *, s: float = 1.0,
                     n_batches: int | None = None) -> dict[str, torch.Tensor]:
    """Importance for ``reprolib.masks``: minus the outlier score (higher = fewer batches with an
    outlying gradient = kept first). The method itself prunes by threshold, see ``select_prune``."""
    if batches is None:
        raise ValueError("gradient_outlier needs batches of (images, labels) to compute gradients")
    scores = outlier_scores(gradient_norms(model, list(layers), iter(batches), n_batches), s)
    return {n: -v.float() for n, v in scores.items()}


# --------------------------------------------------------------------------- pruning

def select_prune(model: nn.Module, scores: dict[str, torch.Tensor], r: float, initial_params: int,
                 s: float = 1.0, min_keep: int = 1) -> dict[str, list[int]]:
    """Filters to prune per layer: those whose score is above the layer's mean + s * std, taken in
    layer order then filter order while ``param_count / initial_params > r`` (counted as if the
    ones chosen so far were removed) and while the layer keeps ``min_keep`` filters."""
    if not 0 < r <= 1:
        raise ValueError(f"r is the share of parameters kept and must be in (0, 1]; got {r}")
    kept = {n: model.get_submodule(n).out_channels for n in scores}
    chosen: dict[str, list[int]] = {n: [] for n in scores}
    for n, v in scores.items():
        for f in _above(v.float(), s, 0).nonzero().flatten().tolist():
            if param_count(model, kept) / initial_params <= r:
                return chosen
            if kept[n] <= min_keep:
                break
            chosen[n].append(f)
            kept[n] -= 1
    return chosen


def prune_step(model: nn.Module, batches, r: float, *, initial_params: int | None = None, s: float = 1.0,
               epsilon: float = 1e-4, n_batches: int | None = 32, max_rounds: int = 1) -> dict:
    """One pruning event on all conv layers (the last included), in place: up to ``max_rounds``
    rounds of scoring, selection, real removal and +epsilon, stopping early once the parameter
    ratio is at most ``r`` or a round finds no candidate. ``batches``: a list of (images, labels)
    or a function ``round -> iterable``. Returns a record: filters pruned per layer, channels
    left, params and ratio."""
    fresh = replayable(batches, "prune_step")
    layers = conv_names(model)
    initial = initial_params or param_count(model)
    pruned = {n: 0 for n in layers}
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        if param_count(model) / initial <= r:
            rounds -= 1
            break
        scores = outlier_scores(gradient_norms(model, layers, iter(fresh(rounds - 1)), n_batches), s)
        chosen = select_prune(model, scores, r, initial, s)
        with torch.no_grad():
            for n in layers:
                conv = model.get_submodule(n)
                if chosen[n]:
                    drop = torch.zeros(conv.out_channels, dtype=torch.bool)
                    drop[chosen[n]] = True
                    remove_filters(model, n, ~drop)
                    pruned[n] += len(chosen[n])
                model.get_submodule(n).weight.add_(epsilon)  # every filter left survived this round
        if not any(chosen.values()):
            break
    params = param_count(model)
    return {"rounds": rounds, "pruned": pruned, "pruned_total": sum(pruned.values()),
            "channels": {n: model.get_submodule(n).out_channels for n in layers},
            "params": params, "initial_params": initial, "ratio": params / initial}


# --------------------------------------------------------------------------- training with pruning

class Pruned(Exception):
    """Raised by the pruning callback after a real shrink: ``train.fit``'s optimizer still holds
    the removed parameters, so that fit must stop; ``train_with_pruning`` resumes it with a fresh
    optimizer at the next epoch."""

    def __init__(self, epoch: int, history: list[dict], record: dict):
        super().__init__(f"model pruned after epoch {epoch}: continue with a fresh optimizer")
        self.epoch, self.history, self.record = epoch, history, record


def pruning_callback(data, *, epochs: int, r: float, initial_params: int, prune_every: int = 5,
                     s: float = 1.0, epsilon: float = 1e-4, n_batches: int = 32, batch_size: int = 128,
                     max_rounds: int = 1, seed: int = 0, records: list | None = None, on_prune=None):
    """``on_epoch(epoch, model, history)`` for ``train.fit``: after every ``prune_every``-th epoch
    before the last, while the parameter ratio is above ``r``, one ``prune_step`` on fresh shuffled
    training batches (seeded by seed, epoch, round). When filters were removed it appends the
    record to ``records``, calls ``on_prune(epoch, model, record)`` and raises ``Pruned``: catch it
    and resume with a fresh optimizer (``train_with_pruning`` does)."""
    if prune_every < 1:
        raise ValueError(f"prune_every must be a positive number of epochs; got {prune_every}")

    def on_epoch(epoch: int, model: nn.Module, history: list[dict]) -> None:
        if epoch % prune_every or epoch >= epochs or param_count(model) / initial_params <= r:
            return

        from ..data import batches as data_batches  # here: reprolib.data loads torchvision, criteria stay light

        def fresh(round_: int):
            g = torch.Generator().manual_seed((seed * 1_000 + epoch) * 1_000 + round_)
            return data_batches(data.train_x, data.train_y, batch_size, train=True, g=g)

        record = {"epoch": epoch, **prune_step(model, fresh, r, initial_params=initial_params, s=s,
                                                epsilon=epsilon, n_batches=n_batches, max_rounds=max_rounds)}
        if records is not None:
            records.append(record)
        if on_prune is not None:
            on_prune(epoch, model, record)
        if record["pruned_total"]:
            raise Pruned(epoch, list(history), record)

    return on_epoch


def _fit_default(name: str):
    from .. import train
    return inspect.signature(train.fit).parameters[name].default


def train_with_pruning(model: nn.Module, data, *, epochs: int, r: float, prune_every: int = 5, s: float = 1.0,
                       epsilon: float = 1e-4, n_batches: int = 32, max_rounds: int = 1, seed: int = 0,
                       on_prune=None, **fit_kwargs) -> tuple[list[dict], list[dict]]:
    """Train ``model`` with ``train.fit`` for ``epochs`` epochs, pruning every ``prune_every``
    epochs (the document: 20 epochs, every 5). ``fit_kwargs`` go to ``train.fit`` (``lr`` is
    required). Returns ``(history, records)``: fit's per-epoch history over the whole run and one
    record per pruning event.

    After a real shrink, training resumes through fit's own checkpoint mechanism (a temporary
    file): same epoch counter, so the learning-rate schedule and the per-epoch shuffling go on as
    in an uninterrupted run, but with a fresh optimizer (no momentum carried over) on the new
    parameters."""
    from .. import train  # here: reprolib.train loads torchvision (through reprolib.data), criteria stay light

    for own in ("checkpoint", "on_epoch"):
        if own in fit_kwargs:
            raise ValueError(f"train_with_pruning manages fit's {own!r} itself; do not pass it")
    if "lr" not in fit_kwargs:
        raise ValueError("pass lr=... (train.fit's learning rate)")
    opt_kw = {k: fit_kwargs.get(k, _fit_default(k)) for k in ("momentum", "nesterov", "weight_decay")}
    records: list[dict] = []
    on_epoch = pruning_callback(data, epochs=epochs, r=r, initial_params=param_count(model),
                                prune_every=prune_every, s=s, epsilon=epsilon, n_batches=n_batches,
                                batch_size=fit_kwargs.get("batch_size", _fit_default("batch_size")),
                                max_rounds=max_rounds, seed=seed, records=records, on_prune=on_prune)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "resume.pt"
        while True:
            try:
                history = train.fit(model, data, epochs=epochs, seed=seed, checkpoint=ckpt, on_epoch=on_epoch,
                                    **fit_kwargs)
                return history, records
            except Pruned as stop:
                opt = torch.optim.SGD(model.parameters(), lr=fit_kwargs["lr"], **opt_kw)
                train.save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "epoch": stop.epoch, "history": stop.history}, ckpt)
