"""Train / evaluate / fine-tune with SGD: the whole loop in one screen.

CPU defaults: bf16 autocast and channels_last (both switchable). Seeded and deterministic
on CPU: every epoch draws its shuffling and augmentation from a generator seeded by
(seed, epoch), so a run resumed from its per-epoch checkpoint ends with exactly the
metrics of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
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


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             bf16: bool = False, channels_last: bool = False) -> dict:
    """Loss and top-1 accuracy on uint8 images ``x`` (normalised here)."""
    model.eval()
    loss, correct = 0.0, 0
    for xb, yb in batches(x, y, batch_size):
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with _autocast(bf16):
            out = model(xb).float()
        loss += F.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
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
        penalty=None, desc: str = "train") -> list[dict]:
    """SGD training of ``model`` on ``data`` (a reprolib.data.Cifar10-like object).

    ``checkpoint``: a file written atomically after every epoch and resumed from when present.
    ``on_epoch(epoch, model, history)``: called after each epoch (pruning during training, tests).
    ``penalty(model)``: a scalar added to the loss (e.g. network slimming's sparsity term on BN weights).
    Returns the per-epoch history: lr, train loss/acc, test loss/acc, seconds.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                          weight_decay=weight_decay)
    history, start = [], 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"]
    steps = math.ceil(len(data.train_y) / batch_size)
    sched = dict(lr=lr, epochs=epochs, schedule=schedule, milestones=milestones, gamma=gamma,
                 warmup_epochs=warmup_epochs)
    for epoch in range(start, epochs):
        t0, g = time.time(), torch.Generator().manual_seed(seed * 100_003 + epoch)
        model.train()
        tot_loss, tot_correct, seen = 0.0, 0, 0
        bar = tqdm(batches(data.train_x, data.train_y, batch_size, train=True, g=g), total=steps,
                   desc=f"{desc} {epoch + 1}/{epochs}", leave=False)
        for i, (xb, yb) in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch + i / steps, **sched)
            xb = xb.contiguous(memory_format=fmt)
            with _autocast(bf16):
                out = model(xb)
                loss = F.cross_entropy(out.float(), yb, label_smoothing=label_smoothing)
            if penalty is not None:
                loss = loss + penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += loss.item() * len(yb)
            tot_correct += (out.argmax(1) == yb).sum().item()
            seen += len(yb)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{tot_correct / seen:.3f}")
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
