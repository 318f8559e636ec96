"""Compute the runs that the chapters need: in this process, or as Ray tasks on a local or a real cluster.

    python -m reprolib.sweep EXPERIMENT|all --profile P [--dry-run]
           [--executor inline|ray] [--address ADDR] [--cpus-per-run N] [--gpus-per-run G] [--skip-timed]
           [--runs FUNCTION]

The plan of a study is its ``all_runs(profile)`` traced in planning mode (``reprolib.plan``): the same call
its chapter makes, so the sweep and the book cannot disagree on which runs exist. ``--dry-run`` prints it.
``--runs FUNCTION`` plans another function of the study instead: runs that a chapter shows only where they
are committed, too long for ``make book`` to compute (hrank's ``protocol_runs``, the study's 30 epochs).

* ``inline``: each missing run is computed here, dependencies first.
* ``ray``: each missing run is a Ray task with its resource request (``--cpus-per-run`` threads, so CPU
  training stays deterministic for that thread count; ``--gpus-per-run``). A task gets the results files
  of the runs it depends on through the object store (the baseline's weights included), computes its run
  in a private results folder and returns the new files; the driver writes them to ``data/results/``.
  Workers need neither the results folder nor a shared filesystem, only the data set and this package.
  Without ``--address`` a local cluster on this machine is started; ``--address auto`` or ``ray://...``
  joins a running one (``ray start --head`` / ``ray start --address``).
A worker that dies is retried (``--retries``); a run that still fails is reported at the end while the
rest of the sweep completes. Ctrl-C stops; rerunning resumes from the cache and the per-epoch checkpoints.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from . import plan as plan_mod, profiles, runs
from .experiments import NAMES, SURVEY

# The studies whose chapters the sweep fills (the baseline is a dependency of the ResNet-56 ones).
STUDIES = tuple(n for n in NAMES if n != "baseline")
ONLY_RUN = "REPROLIB_ONLY_RUN"  # in a worker: the one run it may compute (a missing dependency is an error)


def build(experiments: list[str], profile: str, runs_fn: str | None = None) -> list[plan_mod.Run]:
    """The plan of ``experiments`` (study names) under ``profile``: every run their chapters read, once;
    with ``runs_fn``, the runs of that function of the study instead (e.g. hrank's ``protocol_runs``)."""
    merged: dict[str, plan_mod.Run] = {}
    for name in experiments:
        module = importlib.import_module(f"reprolib.experiments.{name}")
        if profile not in module.PRESETS and len(experiments) > 1:
            print(f"{name}: no {profile!r} preset, left out")
            continue
        # what the chapter reads: chapter_runs where a study has one (ThiNet), else all_runs
        fn = module.run if name == "baseline" else getattr(module, "chapter_runs", module.all_runs)
        if runs_fn is not None:
            if not callable(getattr(module, runs_fn, None)) or runs_fn.startswith("_"):
                raise SystemExit(f"error: --runs {runs_fn}: reprolib.experiments.{name} has no such function "
                                 "(e.g. hrank's protocol_runs)")
            fn = getattr(module, runs_fn)
        for r in plan_mod.trace(fn, profile):
            merged.setdefault(r.key, r)
    return plan_mod.link(list(merged.values()))


def missing_in_order(plan: list[plan_mod.Run]) -> list[plan_mod.Run]:
    """The runs still to compute, every one after the runs it depends on, timed runs (latency) last."""
    by_key, done, order = {r.key: r for r in plan}, set(), []

    def visit(r, stack=()):
        if r.key in done:
            return
        if r.key in stack:
            raise RuntimeError(f"dependency cycle through {r.key}")
        for d in r.deps:
            visit(by_key[d], stack + (r.key,))
        done.add(r.key)
        if not r.cached:
            order.append(r)
    for r in plan:
        visit(r)
    return [r for r in order if not r.timed] + [r for r in order if r.timed]


def table(plan: list[plan_mod.Run]) -> str:
    """Cached / missing runs per section, and the estimated training cost of the missing ones."""
    rows, total = {}, 0.0
    for r in plan:
        row = rows.setdefault(r.section, Counter())
        row["cached" if r.cached else "missing"] += 1
        if not r.cached:
            row["tflop"] += r.cost_tflop
            total += r.cost_tflop
    width = max([len(s) for s in rows] + [7])
    lines = [f"{'section':<{width}}  cached  missing  est. TFLOP (missing)"]
    for s, c in rows.items():
        lines.append(f"{s:<{width}}  {c['cached']:>6}  {c['missing']:>7}  {c['tflop']:>10.0f}")
    n_missing = sum(not r.cached for r in plan)
    # Measured: dense ResNet-56 training at 599 img/s on this 2-core CPU = 3 x 2 x 125.5M x 599 = 0.45 TFLOP/s.
    lines.append(f"{len(plan)} runs, {n_missing} missing, about {total:.0f} TFLOP of training "
                 f"(upper bound: dense-model FLOPs; ~{total / 0.45 / 3600:.1f} h on 2 CPU cores at 0.45 TFLOP/s)")
    return "\n".join(lines)


def _headline(record: dict) -> str:
    m = record.get("metrics", {})
    k = next((k for k in ("test_acc", "test_acc_shrunk") if k in m), next(iter(m), None))
    return f"{k}={m[k]:.4f}" if isinstance(m.get(k), float) else (f"{k}={m[k]}" if k else "")


# --------------------------------------------------------------------------- executors

def run_inline(todo: list[plan_mod.Run], threads: int | None = None) -> list[tuple[str, str]]:
    """Compute each run here, in order; returns the failures as (run, error)."""
    if threads:
        import torch
        torch.set_num_threads(threads)
    failed, bar = [], tqdm(todo, desc="sweep (inline)", unit="run")
    for r in bar:
        if any(f[0] in r.deps for f in failed):
            failed.append((r.key, "skipped: a run it depends on failed"))
            continue
        try:
            plan_mod.call(r.recipe)
            rec = runs.load(r.experiment, r.config)
            if rec is None:
                raise RuntimeError(f"its recipe {r.recipe[0]}.{r.recipe[1]} did not write {r.key}")
            bar.set_postfix_str(f"{r.key}: {_headline(rec)}")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # the rest of the sweep goes on; reported at the end
            failed.append((r.key, f"{type(e).__name__}: {e}"))
    return failed


def _files_of(experiment: str, h: str, root: Path) -> dict[str, bytes]:
    """Every results file of one run under ``root`` (its JSON, weights and any other file named by its hash)."""
    return {f"{experiment}/{f.name}": f.read_bytes() for f in sorted((root / experiment).glob(f"{h}*")) if f.is_file()}


def _execute(recipe: tuple, key: str, threads: int, *blobs: dict) -> dict[str, bytes]:
    """A Ray task: write the dependency files into a private results folder, compute ``key`` by calling its
    recipe there with ``threads`` threads, return the files it wrote."""
    import torch
    torch.set_num_threads(threads)
    saved = {k: os.environ.get(k) for k in ("REPROLIB_RESULTS", ONLY_RUN, "REPROLIB_CACHED_ONLY")}
    with tempfile.TemporaryDirectory(prefix="reprolib-task-") as tmp:
        for blob in blobs:
            for rel, data in blob.items():
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / rel).write_bytes(data)
        os.environ.update({"REPROLIB_RESULTS": tmp, ONLY_RUN: key})
        os.environ.pop("REPROLIB_CACHED_ONLY", None)
        try:
            plan_mod.call(recipe)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        experiment, h = key.split("/")
        out = _files_of(experiment, h, Path(tmp))
    if f"{key}.json" not in out:
        raise RuntimeError(f"the task's recipe {recipe[0]}.{recipe[1]} did not write {key}")
    return out


def _write_files(files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = runs.results_dir() / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def run_ray(plan: list[plan_mod.Run], todo: list[plan_mod.Run], *, address: str | None, cpus: int, gpus: float,
            retries: int = 2, runtime_env: dict | None = None) -> list[tuple[str, str]]:
    """Submit each missing run as a Ray task, dependencies as object refs; the driver writes the results."""
    import ray
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
        ray.init(address=address, **kwargs) if address else ray.init(num_cpus=os.cpu_count(), **kwargs)
    task = ray.remote(_execute).options(num_cpus=cpus, num_gpus=gpus, max_retries=retries)
    # A timed run (latency) reserves every CPU of a node, so that nothing trains beside it, and waits for the rest.
    node_cpus = int(max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=cpus))
    timed_task = ray.remote(_execute).options(num_cpus=max(node_cpus, cpus), num_gpus=gpus, max_retries=retries)
    by_key = {r.key: r for r in plan}
    cached_refs, refs, waiting = {}, {}, {}

    def submit(r):
        blobs = []
        for k in sorted(plan_mod.upstream(r, plan)):
            d = by_key[k]
            if d.cached:
                if k not in cached_refs:
                    cached_refs[k] = ray.put(_files_of(d.experiment, d.hash, runs.results_dir()))
                blobs.append(cached_refs[k])
            else:
                blobs.append(refs[k])
        refs[r.key] = (timed_task if r.timed else task).remote(r.recipe, r.key, cpus, *blobs)
        waiting[refs[r.key]] = r
    timed = [r for r in todo if r.timed]
    for r in todo:
        if not r.timed:
            submit(r)
    failed, bar = [], tqdm(total=len(todo), desc="sweep (ray)", unit="run")
    try:
        while waiting or timed:
            if timed and not any(not r.timed for r in waiting.values()):
                for r in timed:  # every training run is done: now the machine is quiet for the timed ones
                    submit(r)
                timed = []
            ready, _ = ray.wait(list(waiting), num_returns=1)
            r = waiting.pop(ready[0])
            try:
                files = ray.get(ready[0])
                _write_files(files)
                rec = runs.load(r.experiment, r.config)
                bar.set_postfix_str(f"{r.key}: {_headline(rec)}; running {min(len(waiting), _slots(cpus))}, "
                                    f"failed {len(failed)}")
            except Exception as e:
                cause = getattr(e, "cause", None) or e
                failed.append((r.key, f"{type(cause).__name__}: {str(cause).splitlines()[-1] if str(cause) else ''}"))
                bar.set_postfix_str(f"{r.key} failed; failed {len(failed)}")
            bar.update()
    except KeyboardInterrupt:
        for ref in waiting:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return failed


def _slots(cpus: int) -> int:
    import ray
    return max(1, int(ray.available_resources().get("CPU", 0) + 0.5) // max(cpus, 1) + 1)


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    ap = profiles.cli_parser(__doc__)  # --profile; a bad $REPROLIB_DEVICE ends here with one line
    ap.add_argument("experiment", choices=("all",) + NAMES + SURVEY)
    ap.add_argument("--dry-run", action="store_true", help="print the plan (cached / missing, cost) and exit")
    ap.add_argument("--executor", default="inline", choices=("inline", "ray"))
    ap.add_argument("--address", default=None, help="a running Ray cluster (auto, or ray://host:10001)")
    ap.add_argument("--cpus-per-run", type=int, default=1, help="CPU threads per run (default 1)")
    ap.add_argument("--gpus-per-run", type=float, default=0, help="GPUs per run with --executor ray (default 0)")
    ap.add_argument("--retries", type=int, default=2, help="retries of a run whose worker died (default 2)")
    ap.add_argument("--runs", default=None, metavar="FUNCTION",
                    help="the runs of this function of the study instead of its chapter's (e.g. hrank's protocol_runs)")
    ap.add_argument("--skip-timed", action="store_true",
                    help="leave out the timed runs (latency), to time them later alone on a quiet machine")
    a = ap.parse_args(argv)
    profile = a.profile or profiles.default_profile()
    plan = build(list(STUDIES) if a.experiment == "all" else [a.experiment], profile, a.runs)
    print(table(plan))
    todo = missing_in_order(plan)
    if a.skip_timed and any(r.timed for r in todo):
        print("left out (timed, --skip-timed): " + ", ".join(r.key for r in todo if r.timed))
        todo = [r for r in todo if not r.timed]
    if a.dry_run or not todo:
        return 0
    t0 = time.time()
    try:
        if a.executor == "ray":
            failed = run_ray(plan, todo, address=a.address, cpus=a.cpus_per_run, gpus=a.gpus_per_run,
                             retries=a.retries)
        else:
            failed = run_inline(todo, a.cpus_per_run)
    except KeyboardInterrupt:
        print("\nstopped. Finished runs are in the results folder; rerun the same command to resume "
              "(running ones continue from their per-epoch checkpoints).", file=sys.stderr)
        return 130
    print(f"{len(todo) - len(failed)} of {len(todo)} runs computed in {(time.time() - t0) / 60:.1f} min")
    for key, err in failed:
        print(f"FAILED {key}: {err}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
