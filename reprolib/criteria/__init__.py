"""Pruning criteria behind one interface, looked up by name (as Torch-Pruning's importances).

    from reprolib import criteria
    scores = criteria.get("l1norm")(model, layers, batches)   # {layer name: importance tensor}

Every criterion is a function ``fn(model, layers, batches=None, **options) -> dict[str, Tensor]``:

* ``layers``: qualified names of the Conv2d / Linear modules to score (``model.get_submodule``);
* ``batches``: an iterable of ``(images, labels)`` normalised batches (``reprolib.data.batches``),
  or ``None`` for criteria that need no data;
* the result maps each layer name to its importance: shape ``(out_channels,)`` for ``level="filter"``
  criteria, the weight's shape for ``level="weight"`` criteria. **Higher means more important**
  (kept first); ``reprolib.masks`` turns scores and rates into keep-masks.
"""
from __future__ import annotations

from typing import Callable

_REGISTRY: dict[str, Callable] = {}
LEVELS: dict[str, str] = {}


def register(name: str, level: str = "filter"):
    """Decorator: make ``fn`` available as ``criteria.get(name)``; ``level`` is "filter" or "weight"."""
    if level not in ("filter", "weight"):
        raise ValueError(f"level must be 'filter' or 'weight', got {level!r}")

    def deco(fn):
        _REGISTRY[name] = fn
        LEVELS[name] = level
        fn.criterion_name, fn.level = name, level
        return fn
    return deco


def available(level: str | None = None) -> list[str]:
    return sorted(n for n in _REGISTRY if level is None or LEVELS[n] == level)


def get(name: str) -> Callable:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; available: {', '.join(available())}") from None


def replayable(batches, who: str):
    """``batches`` as a function returning a fresh iterable on each call (a criterion that reads the data
    more than once): a list is replayed, a function is used as it is, a generator is refused."""
    if callable(batches):
        return batches
    if iter(batches) is batches:
        raise TypeError(f"{who} reads the batches more than once: pass a list of batches or a function "
                        "returning a fresh iterable (e.g. lambda *_: data.batches(x, y, 128)), not a generator")
    return lambda *_: batches


# Fill the registry (each module registers its criteria on import).
from . import filters, weights  # noqa: E402,F401
from . import thinet, gradient_outlier  # noqa: E402,F401
from . import obs  # noqa: E402,F401
from . import lasso, kse, dcp  # noqa: E402,F401  (input-channel criteria: see channels.py)
