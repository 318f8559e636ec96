"""Plans: which runs a study needs, found without training anything.

A study's ``all_runs(profile)`` is what its chapter reads. ``trace(all_runs, profile)`` calls it in
*planning mode*: ``runs.run`` returns a cached record as usual, but for a missing run it returns a
``Placeholder`` (its experiment, config and hash, nothing computed) and notes the run. So the plan,
the chapter and the book can never disagree on which runs exist: they are the same function call.

* **Dependencies** are the runs whose hash appears in a run's config (a fine-tuning's config names its
  baseline and its ranks by hash; that is how the run cache already keys derived runs).
* **Recipes**: each public function that produces a run is decorated with ``@plan.recipe``; a planned
  run remembers the innermost such call (module, function, arguments). Re-calling it outside planning
  mode, once its dependencies are cached, computes exactly that run. This is what ``reprolib.sweep``
  sends to a worker.
* **Cost**: an estimate of training FLOPs, epochs x images x 3 x the forward MACs of the dense model
  (an upper bound for pruned networks), from the run's config.
"""
from __future__ import annotations

import contextvars
import functools
import importlib
import json
from dataclasses import dataclass, field

from . import runs

_PLANNING: contextvars.ContextVar[dict | None] = contextvars.ContextVar("reprolib_planning", default=None)
_RECIPE: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("reprolib_recipe", default=None)


class PlannedRunError(LookupError):
    """Code read a result of a run that is only planned (not computed yet) outside its compute function."""


class Placeholder(dict):
    """The record of a missing run during planning: ``experiment``, ``hash``, ``config``, ``profile``.
    Reading anything else (metrics, weights) raises ``PlannedRunError``."""

    def __missing__(self, key):
        raise PlannedRunError(f"run {self['experiment']}/{self['hash']} is planned, not computed: its {key!r} "
                              "is not known yet")


def is_planned(record: dict) -> bool:
    return isinstance(record, Placeholder)


@dataclass
class Run:
    """One run of a plan."""
    experiment: str
    config: dict
    hash: str
    recipe: tuple | None          # ("module", "function", args, kwargs): the call that computes it
    cached: bool
    deps: list[str] = field(default_factory=list)   # keys ("experiment/hash") of the runs it needs first
    cost_tflop: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.hash}"

    @property
    def timed(self) -> bool:
        """A run that measures latency (its config sets how many timed repeats): it must have the machine to itself."""
        return any(k.endswith("repeats") for k in self.config)

    @property
    def section(self) -> str:
        return f"{self.experiment}:{self.config.get('part', self.experiment)}"


def recipe(fn):
    """Mark a public function that produces a run (``runs.run`` inside): a planned run remembers the
    innermost such call, so that a worker can compute it by calling it again."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _RECIPE.set((fn.__module__, fn.__qualname__, args, kwargs))
        try:
            return fn(*args, **kwargs)
        finally:
            _RECIPE.reset(token)
    return wrapper


def active() -> bool:
    return _PLANNING.get() is not None


def placeholder(experiment: str, config: dict) -> Placeholder:
    """Called by ``runs.run`` for a missing run while planning: note it, return its placeholder."""
    seen = _PLANNING.get()
    h = runs.config_hash(config)
    key = f"{experiment}/{h}"
    if key not in seen:
        seen[key] = Run(experiment, config, h, _RECIPE.get(), cached=False)
    return Placeholder(experiment=experiment, hash=h, config=config, profile=config.get("profile"))


def note_cached(record: dict) -> None:
    """Called by ``runs.run`` for a cached run while planning."""
    seen = _PLANNING.get()
    key = f"{record['experiment']}/{record['hash']}"
    if key not in seen:
        seen[key] = Run(record["experiment"], record["config"], record["hash"], _RECIPE.get(), cached=True)


def trace(fn, *args, **kwargs) -> list[Run]:
    """The runs that ``fn(*args, **kwargs)`` (a study's ``all_runs``) reads, cached or not, in the order
    it asks for them, each with its dependencies and cost."""
    seen: dict[str, Run] = {}
    token = _PLANNING.set(seen)
    try:
        fn(*args, **kwargs)
    finally:
        _PLANNING.reset(token)
    return link(list(seen.values()))


def committed(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` (a study's ``all_runs``) computing nothing: committed runs are their records,
    missing ones placeholders (``is_planned``). For pages that show what exists, e.g. the reproduction summary."""
    token = _PLANNING.set({})
    try:
        return fn(*args, **kwargs)
    finally:
        _PLANNING.reset(token)


def shown(fn, profile: str, *args, **kwargs):
    """What a chapter shows of runs that ``make book`` does not compute (the survey studies of
    ``experiments.SURVEY``, hrank's ``protocol_runs``): under the smoke profile they are computed (seconds, so
    that CI runs their code), under any other only the committed runs are read and the rest are placeholders
    (``is_planned``), computed apart by ``python -m reprolib.sweep``."""
    if profile == "smoke":
        return fn(profile, *args, **kwargs)
    return committed(fn, profile, *args, **kwargs)


def flat(records) -> list:
    """Every record in ``records`` (a record, or lists / dicts of them, as ``all_runs`` returns), placeholders
    included, in order."""
    if isinstance(records, dict) and not isinstance(records, Placeholder) and "hash" not in records:
        return [r for v in records.values() for r in flat(v)]
    if isinstance(records, (list, tuple)):
        return [r for v in records for r in flat(v)]
    return [records]


def done(records) -> list:
    """The computed records in ``records`` (``flat``), placeholders dropped."""
    return [r for r in flat(records) if not is_planned(r)]


def progress(records, command: str | None = None) -> str:
    """'k of n runs committed' for what ``shown`` returned, naming the sweep that computes the rest
    (``command`` where it is not the study's plain sweep, e.g. one with ``--runs``)."""
    runs_ = list({(r["experiment"], r["hash"]): r for r in flat(records)}.values())
    planned = [r for r in runs_ if is_planned(r)]
    missing = sorted({r["experiment"] for r in planned})
    text = f"{len(runs_) - len(planned)} of {len(runs_)} runs computed"
    if missing:
        profile = planned[0]["profile"]
        text += "; the rest: " + (command or "; ".join(f"python -m reprolib.sweep {e} --profile {profile}"
                                                       for e in missing))
    return text


def link(plan: list[Run]) -> list[Run]:
    """Fill each run's dependencies (runs of the plan whose hash its config names) and cost."""
    by_hash = {r.hash: r.key for r in plan}
    for r in plan:
        blob = json.dumps(r.config, sort_keys=True)
        r.deps = sorted({k for h, k in by_hash.items() if h != r.hash and h in blob})
        r.cost_tflop = cost_tflop(r)
    return plan


def upstream(run: Run, plan: list[Run]) -> set[str]:
    """Keys of every run that ``run`` reads, directly or through its dependencies (``link`` filled them)."""
    by_key = {r.key: r for r in plan}
    seen, stack = set(), list(run.deps)
    while stack:
        k = stack.pop()
        if k not in seen:
            seen.add(k)
            stack.extend(by_key[k].deps)
    return seen


def call(recipe_: tuple):
    """Compute a planned run: call its recipe outside planning mode."""
    module, qualname, args, kwargs = recipe_
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj(*args, **kwargs)


# --------------------------------------------------------------------------- cost estimate

# Forward multiply-accumulates per 32x32 (28x28) image of the dense models (reprolib.counting, "true").
_DEFAULT_MODEL = {"baseline": "resnet56", "hrank": "resnet56", "structural": "resnet56",
                  "criteria_benchmark": "resnet56", "thinet_vs_gradient": "vgg16", "weight_pruning": "lenet300"}
_TRAIN_KEYS = ("finetune", "train", "resnet_finetune", "sparsity")


@functools.lru_cache(maxsize=None)
def _macs(model: str) -> int:
    from . import models
    from .counting import count
    size = (1, 1, 28, 28) if model.startswith("lenet") else (1, 3, 32, 32)
    return count(models.create(model), size)["flops"]


def cost_tflop(run: Run) -> float:
    """Training cost of ``run`` in TFLOP: epochs x training images x 3 (forward + backward) x the dense
    model's forward MACs x 2. 0 for runs that train nothing (scores, searches, latency)."""
    c = run.config
    train = next((c[k] for k in _TRAIN_KEYS if isinstance(c.get(k), dict) and "epochs" in c[k]), None)
    epochs = (train or c).get("epochs")
    if not isinstance(epochs, (int, float)) or c.get("part") in ("ranks", "scores", "search", "latency", "sweep"):
        return 0.0
    n = c.get("n_train") or c.get("resnet_n_train") or (60_000 if run.experiment == "weight_pruning" else 50_000)
    model = c.get("model") if isinstance(c.get("model"), str) else _DEFAULT_MODEL.get(run.experiment, "resnet56")
    if run.experiment == "weight_pruning" and c.get("part") in ("resnet", "latency"):
        model = "resnet56"
    if "iterations" in c and isinstance(c.get("iterations"), int):
        epochs *= c["iterations"]
    return epochs * n * 3 * 2 * _macs(model) / 1e12
