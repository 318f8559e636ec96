"""Content-addressed run cache: a run is a config dict; its hash names
``data/results/<experiment>/<hash>.json`` (config, metrics, per-epoch curves, dataset copy,
profile, wall time, library versions) and, when the run keeps weights, ``<hash>.pt`` beside it.
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

REPO = Path(__file__).resolve().parent.parent


class NotCachedError(RuntimeError):
    """A run is not in the cache and REPROLIB_CACHED_ONLY=1 forbids computing it."""


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
    return json.loads(p.read_text()) if p.exists() else None


def run(experiment: str, config: dict, fn: Callable[[dict, dict], dict]) -> dict:
    """Return the cached record of (experiment, config), or call ``fn(config, paths)`` and cache it.

    ``fn`` returns a dict with at least ``metrics`` (and typically ``curves`` and ``dataset``);
    it may save weights to ``paths["weights"]`` and resume from ``paths["checkpoint"]``.
    """
    cached = load(experiment, config)
    if cached is not None:
        return cached
    if os.environ.get("REPROLIB_CACHED_ONLY") == "1":
        raise NotCachedError(
            f"no cached result for experiment {experiment!r}, config {config_hash(config)} "
            f"({paths(experiment, config)['json']}); REPROLIB_CACHED_ONLY=1 forbids training. Unset it "
            "(e.g. `make book` trains what is missing) or commit the results file.")
    p = paths(experiment, config)
    t0 = time.time()
    out = fn(config, p)
    record = {"experiment": experiment, "hash": config_hash(config), "config": config,
              "profile": config.get("profile"), "wall_time_s": round(time.time() - t0, 1),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(), **out}
    write_json_atomic(record, p["json"])
    if p["checkpoint"].exists():
        p["checkpoint"].unlink()
    return record


def all_records(experiment: str) -> list[dict]:
    """Every cached record of an experiment (for tables across configs)."""
    base = results_dir() / experiment
    return [json.loads(f.read_text()) for f in sorted(base.glob("*.json"))]
