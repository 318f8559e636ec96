"""reprolib.experiments.survey_dynamic: the plan of the smoke profile, found without training anything."""
from collections import Counter

import pytest

from reprolib import plan, runs, sweep
from reprolib.experiments import survey_dynamic as sd

SD = "survey_dynamic"


def test_the_smoke_plan_lists_every_run_in_dependency_order_without_training():
    p = plan.trace(sd.all_runs, "smoke")
    assert not list(runs.results_dir().glob("*/*.json"))  # nothing computed
    assert not any(r.cached for r in p)
    parts = Counter((r.experiment, r.config.get("part")) for r in p)
    assert parts == Counter({(SD, "fbs"): 2, (SD, "fbs_latency"): 1, (SD, "amc_search"): 1, (SD, "amc_finetune"): 1,
                             (SD, "blocks_uniform_finetune"): 1, ("baseline", None): 1,
                             ("criteria_benchmark", "scores"): 1, ("criteria_benchmark", "search"): 2,
                             ("criteria_benchmark", "finetune"): 2})
    by = {(r.experiment, r.config.get("part"), r.config.get("density"), r.config.get("scope")): r for r in p}
    base = by[("baseline", None, None, None)]
    fbs1, fbs05 = by[(SD, "fbs", 1.0, None)], by[(SD, "fbs", 0.5, None)]
    assert fbs1.deps == [base.key] and set(fbs05.deps) == {base.key, fbs1.key}  # densities in turn, from 1.0
    assert fbs05.recipe[:2] == ("reprolib.experiments.survey_dynamic", "fbs_train") and fbs05.recipe[2] == ("smoke", 0.5)
    search = by[(SD, "amc_search", None, None)]
    scores = by[("criteria_benchmark", "scores", None, None)]
    assert set(search.deps) == {base.key, scores.key}
    assert by[(SD, "amc_finetune", None, None)].deps == [search.key]
    latency = by[(SD, "fbs_latency", None, None)]
    static = by[("criteria_benchmark", "search", None, "uniform")]
    assert {fbs1.key, fbs05.key, static.key} <= set(latency.deps)
    # the latency run alone is timed, and the sweep puts it last, every run after what it reads
    assert [r.key for r in p if r.timed] == [latency.key]
    order = [r.key for r in sweep.missing_in_order(p)]
    assert order[-1] == latency.key and set(order) == {r.key for r in p}
    for r in p:
        assert r.recipe is not None and all(order.index(d) < order.index(r.key) for d in r.deps)
    # AMC is held to the criteria benchmark's recipe: the same fine-tuning as its reference rows
    ref = by[("criteria_benchmark", "finetune", None, "uniform")]
    for part in ("amc_finetune", "blocks_uniform_finetune"):
        c = by[(SD, part, None, None)].config
        assert (c["finetune"], c["n_train"], c["n_test"], c["target"]) == \
            (ref.config["finetune"], ref.config["n_train"], ref.config["n_test"], ref.config["target"])


def test_presets_refuse_unknown_profiles_and_densities():
    with pytest.raises(ValueError, match="no 'paper' preset"):
        sd.preset("paper")
    with pytest.raises(ValueError, match="not one of"):
        sd.fbs_train("smoke", 0.9)
