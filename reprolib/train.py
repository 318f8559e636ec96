"""Train / evaluate / fine-tune with SGD: the whole loop in one screen.

Runs on the library's device (``reprolib.device``: ``$REPROLIB_DEVICE``, else CUDA when available,
else the CPU). Defaults: bf16 autocast (on the device's type) and channels_last (both switchable).
Seeded and deterministic on CPU: every epoch draws its shuffling and augmentation from a generator
(on the device) seeded by (seed, epoch), so a run resumed from its per-epoch checkpoint ends with
exactly the metrics of an uninterrupted run. No training step waits for the device: losses and
correct counts are summed there and read once an epoch.
"""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import device as devices
from .data import batches


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def lr_at(t: float, *, lr: float, epochs: int, schedule: str = "cosine", milestones=(), gamma: float = 0.1,
          warmup_epochs: float = 0.0) -> float:
    """Learning rate at fractional epoch ``t``: "cosine" to 0, "step" (x gamma at each milestone
    epoch), or "constant"; optional linear warm-up."""
    if t < warmup_epochs:
        return lr * (t + 1e-3) / warmup_epochs
    if schedule == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * min(t / epochs, 1.0)))
    if schedule == "step":
        return lr * gamma ** sum(t >= m for m in milestones)
    if schedule == "constant":
        return lr
    raise ValueError(f"unknown schedule {schedule!r}: choose 'cosine', 'step' or 'constant'")


class _Totals:
    """Sums of loss x batch size and of correct predictions, kept on the device in float64 and read once
    (``read``): the loop never waits for the device. The float64 adds are those the loop did before with
    Python floats (``loss.item() * len(yb)``), in the same order: the epoch means are the same numbers.

    ``show(bar)`` puts the running means on a progress bar. On CUDA it shows a copy to pinned host memory
    started at an earlier call, once a CUDA event says it has arrived: showing never synchronises."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)
        self.seen = 0
        self._cuda = device.type == "cuda"
        self._host = torch.zeros(2, dtype=torch.float64, pin_memory=self._cuda)
        self._view = self._host.numpy()  # the host copy, read without a torch call
        self._pending = None  # (CUDA event, images) of the copy in flight

    def add(self, loss_sum: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch: ``loss_sum`` its summed loss (float64), ``out`` its logits, ``y`` its labels."""
        self.sums += torch.stack((loss_sum, (out.argmax(1) == y).sum().double()))
        self.seen += len(y)

    def show(self, bar) -> None:
        if not self._cuda:  # the CPU: the copy is immediate, show the sums of now
            self._host.copy_(self.sums)
            self._pending = (None, self.seen)
        elif self._pending is not None and not self._pending[0].query():
            return  # the previous copy has not arrived yet
        if self._pending is not None and self._pending[1]:
            seen = self._pending[1]
            bar.set_postfix(loss=f"{self._view[0] / seen:.3f}", acc=f"{self._view[1] / seen:.3f}")
        if self._cuda:
            self._host.copy_(self.sums, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (event, self.seen)

    def read(self) -> tuple[float, int]:
        """(sum of loss x batch size, correct predictions): the one read that waits for the device."""
        loss, correct = self.sums.tolist()
        return loss, int(correct)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             bf16: bool = False, channels_last: bool = False) -> dict:
    """Loss and top-1 accuracy on uint8 images ``x`` (normalised here), on the model's device."""
    model.eval()
    dev = devices.of(model)
    totals = _Totals(dev)
    for xb, yb in batches(x, y, batch_size):
        xb, yb = xb.to(dev), yb.to(dev)  # no copy when they are there already
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with devices.autocast(dev, bf16):
            out = model(xb).float()
        totals.add(F.cross_entropy(out, yb, reduction="sum").double(), out, yb)
    loss, correct = totals.read()
    return {"loss": loss / len(y), "acc": correct / len(y)}


def save_atomic(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(model: nn.Module, data, *, epochs: int, lr: float, batch_size: int = 128, momentum: float = 0.9,
        nesterov: bool = False, weight_decay: float = 5e-4, schedule: str = "cosine", milestones=(),
        gamma: float = 0.1, warmup_epochs: float = 0.0, label_smoothing: float = 0.0, bf16: bool = True,
        channels_last: bool = True, seed: int = 0, checkpoint: Path | None = None, on_epoch=None,
        penalty=None, on_step=None, desc: str = "train", device: torch.device | str | None = None) -> list[dict]:
    """SGD training of ``model`` on ``data`` (a reprolib.data.Cifar10-like object), on ``device``
    (default: ``reprolib.device.current()``), where the model and the data are moved (the data once:
    ``data.to`` keeps its copy) and stay.

    ``checkpoint``: a file written atomically after every epoch and resumed from when present.
    ``on_epoch(epoch, model, history)``: called after each epoch (pruning during training, tests).
    ``penalty(model)``: a scalar added to the loss (e.g. network slimming's sparsity term on BN weights).
    ``on_step(step, model, xb, yb)``: called after each optimizer step, with ``step`` the number of steps
    taken since the start of training (resumed epochs counted) and the step's normalised batch
    (masks updated during training, e.g. reprolib.gradual; decoupled regularisers).
    Returns the per-epoch history: lr, train loss/acc, test loss/acc, seconds.

    No step waits for the device: losses and correct counts add up on it (``_Totals``), read once an
    epoch; shuffling and augmentation draw from a generator on the device, seeded by (seed, epoch).
    """
    dev = devices.current() if device is None else devices.resolve(str(device), what="fit(device=...)")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(dev, memory_format=fmt)
    data = data.to(dev) if hasattr(data, "to") else data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                          weight_decay=weight_decay)
    history, start = [], 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=True, map_location=dev)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"]
    steps = math.ceil(len(data.train_y) / batch_size)
    sched = dict(lr=lr, epochs=epochs, schedule=schedule, milestones=milestones, gamma=gamma,
                 warmup_epochs=warmup_epochs)
    for epoch in range(start, epochs):
        t0, g = time.time(), torch.Generator(dev).manual_seed(seed * 100_003 + epoch)
        model.train()
        totals = _Totals(dev)
        bar = tqdm(batches(data.train_x, data.train_y, batch_size, train=True, g=g), total=steps,
                   desc=f"{desc} {epoch + 1}/{epochs}", leave=False)
        for i, (xb, yb) in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch + i / steps, **sched)
            xb, yb = xb.to(dev).contiguous(memory_format=fmt), yb.to(dev)
            with devices.autocast(dev, bf16):
                out = model(xb)
                loss = F.cross_entropy(out.float(), yb, label_smoothing=label_smoothing)
            if penalty is not None:
                loss = loss + penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(epoch * steps + i + 1, model, xb, yb)
            totals.add(loss.detach().double() * len(yb), out, yb)
            if i % 20 == 0:
                totals.show(bar)
        (tot_loss, tot_correct), seen = totals.read(), totals.seen
        test = evaluate(model, data.test_x, data.test_y, bf16=bf16, channels_last=channels_last)
        history.append({"epoch": epoch + 1, "lr": lr_at(epoch, **sched), "train_loss": tot_loss / seen,
                        "train_acc": tot_correct / seen, "test_loss": test["loss"], "test_acc": test["acc"],
                        "seconds": time.time() - t0})
        if on_epoch is not None:
            on_epoch(epoch + 1, model, history)
        if checkpoint is not None:
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                         "history": history}, checkpoint)
    model.to(memory_format=torch.contiguous_format)
    return history
