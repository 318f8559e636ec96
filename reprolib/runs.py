"""Content-addressed run cache: a run is a config dict; its hash names
``data/results/<experiment>/<hash>.json`` (config, metrics, per-epoch curves, dataset copy,
profile, wall time, library versions, the device in words) and, when the run keeps weights, ``<hash>.pt`` beside it.
A rerun with the same config reads the file instead of training.

``$REPROLIB_RESULTS`` moves the results folder (the tests use a temporary one).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from . import device

REPO = Path(__file__).resolve().parent.parent


class NotCachedError(RuntimeError):
    """A run is not in the cache and REPROLIB_CACHED_ONLY=1 forbids computing it."""


class DamagedResultError(RuntimeError):
    """A results file (record or weights) exists but cannot be read: cut short by an interrupted copy or
    download, or edited by hand."""


def _damaged(path: Path, why: Exception, record: Path) -> DamagedResultError:
    """The error for a damaged ``path`` of the run whose record is ``record``: which file, why, and the two
    remedies (recompute the run, or restore the committed copy)."""
    files = " ".join(str(f) for f in dict.fromkeys([record, path]) if f.exists())
    try:
        rel = path.resolve().relative_to(REPO)
    except ValueError:
        rel = path
    return DamagedResultError(
        f"{path} is damaged and cannot be read ({type(why).__name__}: {str(why)[:200]}). Delete it "
        f"(rm {files}) so that the run is recomputed, or, if the file is committed, restore it with "
        f"`git checkout -- {rel}`.")


def read_record(path: Path) -> dict:
    """The record stored in the results file ``path``; a file that does not parse is a DamagedResultError."""
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(Path(path), e, Path(path)) from e
    if not isinstance(record, dict):
        raise _damaged(Path(path), TypeError(f"a {type(record).__name__}, not a record"), Path(path))
    return record


def load_weights(path: Path, **kwargs) -> dict:
    """The state dict in a run's weights file ``<hash>.pt`` (``torch.load(..., weights_only=True)``, ``kwargs``
    e.g. ``map_location``). A file that does not load is a DamagedResultError: deleting the weights alone
    would not recompute them (the record ``<hash>.json`` is still cached), so the remedy names both."""
    path = Path(path)
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as e:  # a cut zip archive, garbage, an empty file: torch raises many kinds
        raise _damaged(path, e, path.with_suffix(".json")) from e


def results_dir() -> Path:
    return Path(os.environ.get("REPROLIB_RESULTS", REPO / "data" / "results"))


def checkpoint_dir() -> Path:
    return Path(os.environ.get("REPROLIB_CACHE", REPO / "data" / "cache")) / "checkpoints"


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def paths(experiment: str, config: dict) -> dict[str, Path]:
    h = config_hash(config)
    base = results_dir() / experiment
    return {"json": base / f"{h}.json", "weights": base / f"{h}.pt",
            "checkpoint": checkpoint_dir() / experiment / f"{h}.pt"}


def versions() -> dict:
    import torchvision
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "git_commit": commit, "platform": platform.platform(), "processor": platform.machine(),
            "threads": torch.get_num_threads()}


def write_json_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load(experiment: str, config: dict) -> dict | None:
    p = paths(experiment, config)["json"]
    return read_record(p) if p.exists() else None


def run(experiment: str, config: dict, fn: Callable[[dict, dict], dict]) -> dict:
    """Return the cached record of (experiment, config), or call ``fn(config, paths)`` and cache it.

    ``fn`` returns a dict with at least ``metrics`` (and typically ``curves`` and ``dataset``);
    it may save weights to ``paths["weights"]`` and resume from ``paths["checkpoint"]``.
    """
    from . import plan  # planning mode (reprolib.plan.trace): note the run instead of computing it
    cached = load(experiment, config)
    if cached is not None:
        if plan.active():
            plan.note_cached(cached)
        return cached
    if plan.active():
        return plan.placeholder(experiment, config)
    only = os.environ.get("REPROLIB_ONLY_RUN")  # set by reprolib.sweep in a worker: the one run it computes
    if only and only != f"{experiment}/{config_hash(config)}":
        raise NotCachedError(f"run {only} needs {experiment}/{config_hash(config)}, which the sweep did not ship "
                             "to this worker: its hash is missing from the run's config (reprolib.plan.link)")
    if os.environ.get("REPROLIB_CACHED_ONLY") == "1":
        raise NotCachedError(
            f"no cached result for experiment {experiment!r}, config {config_hash(config)} "
            f"({paths(experiment, config)['json']}); REPROLIB_CACHED_ONLY=1 forbids training. Unset it "
            "(e.g. `make book` trains what is missing) or commit the results file.")
    p = paths(experiment, config)
    where = device.describe()  # where it runs, in words; not in the config: the hash is the same on any device
    t0 = time.time()
    out = fn(config, p)
    record = {"experiment": experiment, "hash": config_hash(config), "config": config,
              "profile": config.get("profile"), "wall_time_s": round(time.time() - t0, 1),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(), "device": where, **out}
    write_json_atomic(record, p["json"])
    if p["checkpoint"].exists():
        p["checkpoint"].unlink()
    return record


def all_records(experiment: str) -> list[dict]:
    """Every cached record of an experiment (for tables across configs)."""
    base = results_dir() / experiment
    return [read_record(f) for f in sorted(base.glob("*.json"))]
