"""Memory format and precision chosen per network, by measuring, instead of one global default.

Which layout is fastest depends on the network's widths: on this CPU channels_last runs the dense
ResNet-56's 16-channel convolutions faster, while a shrunk network with 7-channel layers may not
gain from it, and bf16 autocast helps wide layers but not narrow ones. So each network is timed in
every candidate format, side by side (round-robin, medians), and the fastest is kept.

    fmt, ms = formats.pick_inference({"fold": fold_bn(small)}, (128, 3, 32, 32))
    net = formats.prepare(fold_bn(small), fmt)                 # ready to call on NCHW fp32 input
    fmt, ips = formats.pick_training(small, batch_size=128)     # fastest training step

A format is ``{"memory_format": "contiguous" | "channels_last", "bf16": bool}``; for inference the
candidates are fp32 only by default (bf16 changes outputs well beyond the 1e-4 the equivalence
checks allow), for training bf16 autocast is a candidate too.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .counting import latency_interleaved

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
INFERENCE = ({"memory_format": "contiguous", "bf16": False}, {"memory_format": "channels_last", "bf16": False})
TRAINING = tuple({"memory_format": m, "bf16": b} for b in (False, True) for m in ("contiguous", "channels_last"))


def name(fmt: Mapping) -> str:
    """A short label: ``fp32``, ``fp32+cl``, ``bf16``, ``bf16+cl``."""
    _check(fmt)
    return ("bf16" if fmt["bf16"] else "fp32") + ("+cl" if fmt["memory_format"] == "channels_last" else "")


def _check(fmt: Mapping) -> None:
    if not isinstance(fmt, Mapping) or not {"memory_format", "bf16"} <= set(fmt):
        raise ValueError(f"a format is a dict with keys 'memory_format' and 'bf16', got {fmt!r}")
    if fmt["memory_format"] not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory_format {fmt['memory_format']!r}: choose one of {sorted(MEMORY_FORMATS)}")


class Formatted(nn.Module):
    """``module`` run in a format: the input converted to its memory format, bf16 autocast if asked.
    Takes and returns ordinary tensors, so that it replaces the plain module anywhere."""

    def __init__(self, module: nn.Module, fmt: Mapping):
        super().__init__()
        _check(fmt)
        self.fmt = dict(fmt)
        self.memory_format = MEMORY_FORMATS[fmt["memory_format"]]
        self.module = module.to(memory_format=self.memory_format)

    def forward(self, x):
        x = x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x
        if self.fmt["bf16"]:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self.module(x).float()
        return self.module(x)


def prepare(model: nn.Module, fmt: Mapping) -> Formatted:
    """A copy of ``model`` that runs in ``fmt`` (see ``Formatted``)."""
    return Formatted(copy.deepcopy(model), fmt)


def pick_inference(variants: Mapping[str, nn.Module], input_size: Sequence[int], *,
                   candidates: Sequence[Mapping] = INFERENCE, repeats: int = 10, warmup: int = 3,
                   threads: int | None = None) -> tuple[dict, dict[str, float]]:
    """The fastest (variant, format) for inference: every variant (e.g. ``{"fold": fold_bn(net),
    "fold+fuse": ...}``, all computing the same function) in every candidate format, timed
    round-robin at ``input_size``. Returns ``({"variant", "memory_format", "bf16", "ms"}, {label: ms})``."""
    if not variants:
        raise ValueError("pick_inference needs at least one variant to time")
    if not candidates:
        raise ValueError("pick_inference needs at least one candidate format")
    nets = {f"{v}|{name(fmt)}": Formatted(copy.deepcopy(m).eval(), fmt) for v, m in variants.items() for fmt in candidates}
    t = latency_interleaved(nets, input_size, repeats=repeats, warmup=warmup, threads=threads)
    ms = {k: r["median_ms"] for k, r in t.items()}
    best = min(ms, key=ms.get)
    fmt = nets[best].fmt
    return {"variant": best.split("|")[0], **fmt, "ms": ms[best]}, ms


def train_step(model: nn.Module, fmt: Mapping, batch_size: int, image: Sequence[int] = (3, 32, 32),
               num_classes: int = 10, lr: float = 0.01):
    """A function running one SGD step (momentum 0.9, Nesterov, weight decay 5e-4: the library's
    fine-tuning recipe) of ``model`` in ``fmt`` on a fixed random batch; returns its seconds.
    ``model`` is trained in place: pass a copy."""
    _check(fmt)
    mf = MEMORY_FORMATS[fmt["memory_format"]]
    model = model.to(memory_format=mf).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *image), generator=g).contiguous(memory_format=mf)
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(fmt["bf16"])):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0
    return step


def training_throughput(models: Mapping[str, tuple[nn.Module, Mapping]], batch_size: int = 128, *,
                        repeats: int = 5, warmup: int = 2, threads: int | None = None) -> dict[str, dict]:
    """Training steps of several ``(model, format)`` pairs timed round-robin (copies are trained):
    ``{label: {"median_ms", "images_per_s", "batch_size", "threads", "repeats"}}``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        steps = {k: train_step(copy.deepcopy(m), fmt, batch_size) for k, (m, fmt) in models.items()}
        for _ in range(warmup):
            for s in steps.values():
                s()
        times = {k: [] for k in steps}
        for _ in range(repeats):
            for k, s in steps.items():
                times[k].append(s())
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(old)
    out = {}
    for k, t in times.items():
        ms = float(np.median(t)) * 1e3
        out[k] = {"median_ms": ms, "images_per_s": batch_size / ms * 1e3, "batch_size": batch_size,
                  "threads": used, "repeats": repeats}
    return out


def pick_training(model: nn.Module, batch_size: int = 128, *, candidates: Sequence[Mapping] = TRAINING,
                  repeats: int = 5, warmup: int = 2, threads: int | None = None) -> tuple[dict, dict[str, float]]:
    """The format in which ``model`` trains fastest: ``({"memory_format", "bf16", "images_per_s"},
    {label: images_per_s})`` from ``training_throughput`` over ``candidates``."""
    if not candidates:
        raise ValueError("pick_training needs at least one candidate format")
    t = training_throughput({name(f): (model, f) for f in candidates}, batch_size, repeats=repeats, warmup=warmup,
                            threads=threads)
    ips = {k: v["images_per_s"] for k, v in t.items()}
    best = max(ips, key=ips.get)
    fmt = next(f for f in candidates if name(f) == best)
    return {**fmt, "images_per_s": ips[best]}, ips
