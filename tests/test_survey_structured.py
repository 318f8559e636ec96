"""survey_structured: its plan (every run the chapter reads, found without training) and its presets beside the
criteria benchmark's."""
import json

from reprolib import plan, runs, sweep
from reprolib.experiments import criteria_benchmark as cb
from reprolib.experiments import survey_structured as ss


def test_the_smoke_plan_lists_every_run_in_dependency_order_without_training():
    p = plan.trace(ss.all_runs, "smoke")
    assert p and not any(r.cached for r in p)
    assert not list(runs.results_dir().glob("*/*.json"))          # planning computed nothing
    parts = {}
    for r in p:
        parts.setdefault(r.config.get("part", r.experiment), []).append(r)
    pre = ss.preset("smoke")
    n_points = len(pre["criteria"]) * sum(len(t) for t in pre["targets"].values())
    assert len(parts["finetune"]) == n_points * len(pre["seeds"])
    assert len(parts["search"]) == n_points
    assert {r.config["criterion"] for r in parts["scores"]} == set(pre["criteria"])
    assert len(parts["lasso_finetune"]) == sum(len(t) for t in pre["targets"].values()) * len(pre["seeds"])
    assert len(parts["dac"]) == len(pre["dac_targets"]) * len(pre["seeds"])
    assert len(parts["selection_comparison"]) == 1 and len(parts["baseline"]) == 1
    base = parts["baseline"][0].key
    by_key = {r.key: r for r in p}
    for r in p:
        assert set(r.deps) <= set(by_key) and r.recipe is not None
        if r.experiment == ss.EXPERIMENT:
            assert base in plan.upstream(r, p)                            # everything starts from the benchmark's baseline
    for r in parts["finetune"] + parts["lasso_finetune"]:
        search = next(s for s in parts["search"] if s.key in r.deps)
        assert search.config["criterion"] == r.config["criterion"]
        assert r.cost_tflop > 0
    scores_of = {s.config["criterion"]: s for s in parts["scores"]}
    assert scores_of["lasso"].config["layers"] == "internal" and "definition" in scores_of["dcp"].config
    assert "score_batches" not in scores_of["kse"].config       # KSE reads weights only
    for r in parts["dac"]:                                     # DAC's config names no data for the decomposition
        assert not {"score_batches", "score_batch", "batches"} & set(r.config)
    order = [r.key for r in sweep.missing_in_order(p)]
    for r in p:
        assert all(order.index(d) < order.index(r.key) for d in r.deps)
    json.dumps([r.config for r in p])                          # configs are JSON (the run cache's key)


def test_the_budget_rows_sit_beside_the_criteria_benchmarks():
    mine, theirs = ss.preset("budget"), cb.PRESETS["budget"]
    for key in ("baseline", "targets", "seeds", "score_batches", "score_batch", "n_train", "n_test", "finetune"):
        assert mine[key] == theirs[key]
    assert mine["dac_targets"] == theirs["targets"]["uniform"]
    assert {"lasso", "kse", "dcp", "random"} <= set(mine["criteria"])
