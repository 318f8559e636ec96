"""Counting parameters, FLOPs and latency, under two conventions.

FLOPs here are multiply-accumulates (MACs), as in the pruning literature and fvcore.
Counts are for the whole ``input_size`` (batch included): use batch 1 for per-image numbers.

* ``convention="hrank"``: the rule of HRank's ``get_flops.py`` (Lin et al. 2020), which produces
  the numbers in its tables. Only Conv2d and Linear count; BN, ReLU, pooling and the option-A
  shortcut padding are free. ``rates`` (one per Conv2d, ``model.modules()`` order) prunes a conv's
  *output* channels only: it keeps all its input channels, even when the previous conv was pruned.
  With ``kept = Cout - floor(r * Cout)``:

  - conv params = Cin/groups * kept * k*k  (+ kept if the conv has a bias: HRank scales every
    conv parameter tensor, bias included, by the kept fraction);
  - conv FLOPs  = Cin/groups * kept * k*k * Hout*Wout  (no bias term);
  - Linear (never pruned) params = FLOPs = in*out + out  (HRank counts the bias add as a FLOP).

  For ResNet-56 on 32x32 this gives 848,954 params (848,304 conv weights + 640 + 10 fc) and
  125,485,706 FLOPs (125,485,056 conv + 640 + 10 fc): both of HRank's unpruned numbers exactly.

* ``convention="true"``: the modules the model really has. params = every parameter's numel
  (BN included). flops = Conv2d and Linear MACs with their bias adds:
  Cin/groups * Cout * k*k * Hout*Wout (+ Cout*Hout*Wout with a bias), in*out (+ out with a bias).
  BN, ReLU, pooling and residual additions are not in ``flops`` (BN folds into the conv at
  inference; the rest is memory-bound). fvcore, by contrast, counts eval-mode BN as
  numel * (2 if affine else 1) and adaptive average pooling as numel of its input; the first is
  reported separately as ``norm_flops``, so ``flops + norm_flops`` is the comparable total.
  fvcore ignores bias adds: each layer row carries its ``bias_flops`` for that comparison.
  ``conv_activations`` (``"true"`` only): the elements the convolutions read and write, the sum of
  every Conv2d call's input and output numel. A FLOPs ratio is quadratic in a layer's kept fraction
  when its input and output are both narrowed, this count only linear; on a CPU a convolution with
  fewer than 16 channels takes a time that follows its width, that is this count, not its FLOPs
  (``benchmarks/shrink_latency.py``'s single-convolution widths).

Latency: ``latency`` times one model, ``latency_interleaved`` several round-robin so that machine
noise hits all of them alike. For stable CPU timings start Python with
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184`` in the environment (glibc
otherwise returns and re-faults large activation buffers on every forward pass).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm
import torch.nn as nn

from . import device as devices

CONVENTIONS = ("true", "hrank")


def _trace(model: nn.Module, input_size: Sequence[int]) -> dict[nn.Module, list[tuple]]:
    """Input and output shapes of every Conv2d / Linear / BatchNorm call in one forward pass on zeros."""
    calls: dict[nn.Module, list[tuple]] = {}
    hook = lambda m, inp, out: calls.setdefault(m, []).append((tuple(inp[0].shape), tuple(out.shape)))
    kinds = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(tuple(input_size), device=p.device if p is not None else "cpu")
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls


def _check_rates(rates: Sequence[float] | None, n_convs: int) -> list[float]:
    if rates is None:
        return [0.0] * n_convs
    rates = list(rates)
    if len(rates) != n_convs:
        raise ValueError(f"rates has the wrong length: expected {n_convs} rates (one per conv), got {len(rates)}")
    for i, r in enumerate(rates):
        if not 0 <= r < 1:  # also rejects NaN
            raise ValueError(f"rates[{i}] = {r} is outside [0, 1)")
    return rates


def count(model: nn.Module, input_size: Sequence[int], convention: str = "true",
          rates: Sequence[float] | None = None) -> dict:
    """Params and FLOPs (MACs) of ``model`` on an input of ``input_size`` under ``convention``.

    Returns ``{"params", "flops", "layers", "convention"}`` and, for ``"true"``, ``"norm_flops"`` and
    ``"conv_activations"``.
    ``layers`` has one row per Conv2d / Linear: ``{name, type, params, flops, bias_flops}``.
    ``rates`` (per-conv prune rates) is only meaningful, and only accepted, for ``"hrank"``.
    See the module docstring for the exact rules.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    if rates is not None and convention != "hrank":
        raise ValueError("rates are only used by the 'hrank' convention")
    hrank = convention == "hrank"
    calls = _trace(model, input_size)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    rate = dict(zip(convs, _check_rates(rates, len(convs))))

    layers, norm_flops = [], 0
    for name, m in model.named_modules():
        shapes = calls.get(m, [])
        if isinstance(m, nn.Conv2d):
            kept = m.out_channels - int(rate[m] * m.out_channels)  # floor, as HRank's int()
            per_pixel = m.in_channels // m.groups * kept * m.kernel_size[0] * m.kernel_size[1]
            has_bias = m.bias is not None
            pixels = sum(int(np.prod(out[:1] + out[2:])) for _, out in shapes)  # N * Hout * Wout
            bias_flops = 0 if hrank or not has_bias else kept * pixels
            params = per_pixel + kept * has_bias
            flops = per_pixel * pixels + bias_flops
        elif isinstance(m, nn.Linear):
            rows = sum(int(np.prod(inp[:-1])) for inp, _ in shapes)  # every leading dim is a batch dim
            has_bias = m.bias is not None
            bias_flops = m.out_features * rows * has_bias
            params = m.in_features * m.out_features + m.out_features * has_bias
            flops = m.in_features * m.out_features * rows + bias_flops
        else:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                norm_flops += sum(int(np.prod(out)) * (2 if m.affine else 1) for _, out in shapes)
            continue
        layers.append(dict(name=name, type=type(m).__name__, params=params, flops=flops, bias_flops=bias_flops))

    result = dict(convention=convention, flops=sum(l["flops"] for l in layers), layers=layers)
    if hrank:
        result["params"] = sum(l["params"] for l in layers)
    else:
        result["params"] = sum(p.numel() for p in model.parameters())
        result["norm_flops"] = norm_flops
        result["conv_activations"] = sum(int(np.prod(i)) + int(np.prod(o)) for m in convs for i, o in calls.get(m, []))
    return result


# ----------------------------------------------------------------------------- latency

def _forward_timer(model: nn.Module, input_size: Sequence[int]):
    """A function that runs one forward pass of ``model`` on a fixed random input (on the model's device)
    and returns its seconds. On CUDA, whose kernels run asynchronously, the clock reads come after
    synchronising with the device: queued work first, then the pass itself."""
    dev = devices.of(model)
    x = torch.randn(tuple(input_size), device=dev)

    def run() -> float:
        devices.synchronize(dev)
        t0 = time.perf_counter()
        model(x)
        devices.synchronize(dev)
        return time.perf_counter() - t0
    return run


def _summary(seconds: list[float], input_size: Sequence[int], threads: int) -> dict:
    ms = np.asarray(seconds) * 1e3
    return dict(median_ms=float(np.median(ms)), p10_ms=float(np.percentile(ms, 10)),
                p90_ms=float(np.percentile(ms, 90)), batch_size=int(input_size[0]), threads=threads,
                repeats=len(seconds))


def latency_interleaved(models: dict[str, nn.Module], input_size: Sequence[int], repeats: int = 20,
                        warmup: int = 5, threads: int | None = None) -> dict[str, dict]:
    """Forward-pass latency of several models, timed round-robin (one pass of each per round).

    Returns ``{name: {median_ms, p10_ms, p90_ms, batch_size, threads, repeats}}``. Models are put
    in eval mode (and left there); ``threads`` sets torch's intra-op threads for the measurement only.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        with torch.inference_mode():
            runs = {name: _forward_timer(m.eval(), input_size) for name, m in models.items()}
            for _ in range(warmup):
                for run in runs.values():
                    run()
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(repeats):
                for name, run in runs.items():
                    times[name].append(run())
    finally:
        torch.set_num_threads(old_threads)
    return {name: _summary(t, input_size, used) for name, t in times.items()}


def latency_table(models: dict[str, nn.Module], batches: Sequence[int], repeats: int, warmup: int = 2,
                  image: Sequence[int] = (3, 32, 32)) -> tuple[dict[str, dict[str, float]], int]:
    """``({name: {"ms_b<batch>": median ms}}, threads)``: ``latency_interleaved`` at each batch size."""
    rows: dict[str, dict[str, float]] = {name: {} for name in models}
    threads = torch.get_num_threads()
    for b in batches:
        t = latency_interleaved(models, (b, *image), repeats=repeats, warmup=warmup)
        for name, v in t.items():
            rows[name][f"ms_b{b}"] = v["median_ms"]
        threads = t[next(iter(t))]["threads"]
    return rows, threads


def latency(model: nn.Module, input_size: Sequence[int], *, repeats: int = 20, warmup: int = 5,
            threads: int | None = None) -> dict:
    """Forward-pass latency of one model: ``{median_ms, p10_ms, p90_ms, batch_size, threads, repeats}``."""
    return latency_interleaved({"model": model}, input_size, repeats, warmup, threads)["model"]


def closest(n: int, reduction, target: float, desc: str) -> int:
    """Binary search over ``n`` candidates whose FLOPs ``reduction(i)`` grows with i: the index whose reduction
    is closest to ``target`` (the first reaching it, or the one before). Shared by every equal-FLOPs search."""
    lo, hi = 0, n - 1
    with tqdm(desc=desc, leave=False) as bar:
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if reduction(mid) >= target else (mid + 1, hi)
            bar.update()
    return min([i for i in (lo - 1, lo) if i >= 0], key=lambda i: abs(reduction(i) - target))
