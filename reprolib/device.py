"""The one device the whole library runs on, resolved in one place.

``$REPROLIB_DEVICE`` names it (``cpu``, ``cuda``, ``cuda:1``); unset, it is the first CUDA device when
there is one, else the CPU. Models, the decoded datasets, augmentation, evaluation, the criteria's
scoring passes, surgery and the latency timers all use ``current()``. A run's results file records
``describe()`` (where it ran); the device is not part of the run's config hash: a run is the same
experiment on any device.

On the CPU nothing changes against a library without this module: the same operations in the same
order (the committed results stay valid). On CUDA the training loop draws its random numbers with a
generator on the device and synchronises only once an epoch.
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
from pathlib import Path

import torch

ENV = "REPROLIB_DEVICE"
_FORM = re.compile(r"(cpu|cuda)(?::(\d+))?")


class DeviceError(RuntimeError):
    """``$REPROLIB_DEVICE`` names no device, or one this machine does not have."""


def resolve(value: str | None, what: str = ENV) -> torch.device:
    """The device ``value`` names (``None`` or empty: CUDA when available, else CPU), checked against this
    machine; ``what`` names where the value came from in errors. CUDA devices come back with their index
    (``cuda`` -> ``cuda:0``), so that tensors' devices compare equal to it."""
    raw = (value or "").strip()
    value = raw.lower()
    if not value:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    instead = f"set {ENV}=cpu or unset it" if what == ENV else "use 'cpu'"
    m = _FORM.fullmatch(value)
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise DeviceError(f"{what}={raw!r} is not a device: use 'cpu', 'cuda' or 'cuda:<index>' (e.g. cuda:1)"
                          + (f", or unset {ENV} to use CUDA when available, else the CPU" if what == ENV else ""))
    if m.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"{what}={raw} but this machine has no CUDA device (torch.cuda.is_available() is "
                          f"False): {instead}")
    index = int(m.group(2)) if m.group(2) is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"{what}={raw} but this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def current() -> torch.device:
    """The library's device: ``$REPROLIB_DEVICE``, else CUDA when available, else the CPU (read each call)."""
    return resolve(os.environ.get(ENV))


def of(module: torch.nn.Module) -> torch.device:
    """Where ``module`` lives: the device of its first parameter (or buffer); the CPU when it has none."""
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device``'s type (``torch.autocast("cuda" | "cpu")``), or nothing when ``bf16`` is off."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; the CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, name = line.partition(":")
            if key.strip() in ("model name", "Model name") and name.strip():
                return name.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(device: torch.device | None = None) -> str:
    """``device`` (default ``current()``) in words, for results files: the GPU's name, or the CPU's model
    and torch's intra-op thread count (training results depend on it)."""
    device = current() if device is None else torch.device(device)
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)} ({device})"
    threads = torch.get_num_threads()
    return f"CPU {cpu_name()}, {threads} thread{'s' if threads != 1 else ''}"
