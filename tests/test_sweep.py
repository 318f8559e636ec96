"""reprolib.sweep: plans (what the chapters read, found without training), inline and Ray executors."""
import json
import os
from pathlib import Path

import pytest
import torch

from reprolib import plan, runs, sweep
from reprolib.experiments import hrank

TESTS = Path(__file__).resolve().parent


def _records(root: Path) -> dict[str, dict]:
    return {f"{f.parent.name}/{f.stem}": json.loads(f.read_text()) for f in sorted(root.glob("*/*.json"))}


def test_plan_lists_missing_runs_without_training_and_orders_dependencies():
    p = sweep.build(["hrank"], "smoke")
    assert p and not any(r.cached for r in p)  # empty results folder: nothing cached, nothing trained
    assert not list(runs.results_dir().glob("*/*.json"))
    keys = {r.key for r in p}
    ranks = [r for r in p if r.config.get("part") == "ranks"]
    base = [r for r in p if r.experiment == "baseline"]
    assert len(ranks) == 1 and len(base) == 1
    for r in p:
        if r.config.get("criterion") == "hrank":  # a fine-tuning by HRank's ranks needs the ranks and the baseline
            assert set(r.deps) == {ranks[0].key, base[0].key}
        assert set(r.deps) <= keys and r.recipe is not None
    order = [r.key for r in sweep.missing_in_order(p)]
    for r in p:
        assert all(order.index(d) < order.index(r.key) for d in r.deps)
    # the plan is what the chapter reads: the same runs as all_runs, by hash
    assert {r.hash for r in p if r.config.get("part") == "finetune"} == \
        {runs.config_hash(c) for c in _finetune_configs()}


def _finetune_configs():
    seen = []
    for section in plan.trace(hrank.all_runs, "smoke"):
        if section.config.get("part") == "finetune":
            seen.append(section.config)
    return seen


def test_placeholder_refuses_results_that_do_not_exist_yet():
    ph = plan.Placeholder(experiment="x", hash="abc", config={}, profile=None)
    with pytest.raises(plan.PlannedRunError, match="x/abc is planned"):
        ph["metrics"]


def test_progress_counts_computed_runs_and_names_the_command_for_the_rest():
    done = {"experiment": "x", "hash": "a1", "config": {}, "metrics": {}}
    rest = [plan.Placeholder(experiment=e, hash=h, config={}, profile="budget") for e, h in (("x", "b2"), ("y", "c3"))]
    assert plan.progress([done, done] + rest) == ("1 of 3 runs computed; the rest: python -m reprolib.sweep x "
                                                  "--profile budget; python -m reprolib.sweep y --profile budget")
    assert plan.progress({"a": [done], "b": rest}, "make it") == "1 of 3 runs computed; the rest: make it"
    assert plan.progress([done], "make it") == "1 of 1 runs computed"


def test_upstream_follows_dependencies_transitively_and_only_upward():
    # a <- b <- c, d alone, e reads a and d: what each run needs shipped to its worker
    runs_ = [plan.Run("x", {}, h, None, False, deps) for h, deps in
             (("a", []), ("b", ["x/a"]), ("c", ["x/b"]), ("d", []), ("e", ["x/a", "x/d"]))]
    up = {r.hash: plan.upstream(r, runs_) for r in runs_}
    assert up == {"a": set(), "b": {"x/a"}, "c": {"x/a", "x/b"}, "d": set(), "e": {"x/a", "x/d"}}


def test_a_worker_may_not_compute_a_dependency_that_was_not_shipped(monkeypatch):
    monkeypatch.setenv(sweep.ONLY_RUN, "hrank/000000000000")
    with pytest.raises(runs.NotCachedError, match="did not ship"):
        runs.run("hrank", {"part": "other"}, lambda c, p: {"metrics": {}})


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray = pytest.importorskip("ray")
    cache = tmp_path_factory.mktemp("ray-cache")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS), "REPROLIB_CACHE": str(cache),
                                       "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def _sweep(executor, experiment, results: Path, monkeypatch):
    monkeypatch.setenv("REPROLIB_RESULTS", str(results))
    p = sweep.build([experiment], "smoke")
    todo = sweep.missing_in_order(p)
    threads = torch.get_num_threads()
    try:
        if executor == "ray":
            failed = sweep.run_ray(p, todo, address=None, cpus=1, gpus=0)
        else:
            failed = sweep.run_inline(todo, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert failed == []
    return _records(results)


def test_ray_sweep_gives_the_inline_records(local_ray, tmp_path, monkeypatch):
    inline = _sweep("inline", "hrank", tmp_path / "inline", monkeypatch)
    ray_ = _sweep("ray", "hrank", tmp_path / "ray", monkeypatch)
    assert set(ray_) == set(inline) and len(inline) >= 5
    for k in inline:
        assert ray_[k]["metrics"] == inline[k]["metrics"], k
    # weights travel back through the object store
    assert {f.name for f in (tmp_path / "ray" / "baseline").glob("*.pt")} == \
        {f.name for f in (tmp_path / "inline" / "baseline").glob("*.pt")}
    # dependency order: every fine-tuning by HRank's ranks started after its ranks were written
    ranks = next(r for r in ray_.values() if r["config"].get("part") == "ranks")
    for r in ray_.values():
        if r["config"].get("ranks"):
            start = _t(r["created"]) - r["wall_time_s"]
            assert start >= _t(ranks["created"]) - 1


def _t(stamp: str) -> float:
    import datetime
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def test_a_killed_worker_is_retried_and_resumes_to_the_same_record(local_ray, tmp_path, monkeypatch):
    import sweep_fixture
    monkeypatch.syspath_prepend(str(TESTS))
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("REPROLIB_RESULTS", str(tmp_path / "ray"))
    p = plan.trace(sweep_fixture.all_runs, str(marker))
    assert sweep.run_ray(p, sweep.missing_in_order(p), address=None, cpus=1, gpus=0, retries=2) == []
    assert marker.exists()  # the first attempt died
    (rec,) = _records(tmp_path / "ray").values()
    # the same run, uninterrupted, in this process
    monkeypatch.setenv("REPROLIB_RESULTS", str(tmp_path / "inline"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = sweep_fixture.flaky(str(marker))
    finally:
        torch.set_num_threads(threads)
    assert rec["metrics"] == ref["metrics"] and rec["hash"] == ref["hash"]


def test_skip_timed_leaves_the_latency_runs_out_and_names_them(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(sweep, "run_inline", lambda todo, threads=None: seen.append([r.key for r in todo]) or [])
    p = sweep.build(["criteria_benchmark"], "smoke")
    timed = {r.key for r in p if r.timed}
    assert timed  # the chapter's latency run
    assert sweep.main(["criteria_benchmark", "--profile", "smoke", "--skip-timed"]) == 0
    assert seen and not timed & set(seen[0]) and len(seen[0]) == sum(not r.cached for r in p) - len(timed)
    assert all(k in capsys.readouterr().out for k in timed)
    assert sweep.main(["criteria_benchmark", "--profile", "smoke"]) == 0  # without the flag they are computed, last
    assert set(seen[1][-len(timed):]) == timed
