"""The survey-regularisers study: its plan (every run found without training) and its random control."""
from collections import Counter

import pytest
import torch

from reprolib import plan, profiles, runs
from reprolib.experiments import survey_regularisers as sr


def test_plan_of_the_smoke_study_lists_every_run_in_dependency_order_without_training():
    p = plan.trace(sr.all_runs, "smoke")
    assert not list(runs.results_dir().glob("*/*.json")) and not any(r.cached for r in p)
    ours = [r for r in p if r.experiment == sr.EXPERIMENT]
    (base,) = [r for r in p if r.experiment == "baseline"]
    assert {r.experiment for r in p} == {sr.EXPERIMENT, "baseline"}
    # 2 trainings; 3 points x (method + control) prunes; 3 points x 1 seed x (method + control) fine-tunings
    assert Counter(r.config["part"] for r in ours) == {"regularise": 2, "prune": 6, "finetune": 6}
    keys = {r.key for r in p}
    assert all(r.recipe is not None and set(r.deps) <= keys for r in p)
    reg = {r.config["method"]: r.key for r in ours if r.config["part"] == "regularise"}
    prunes = {r.key: r for r in ours if r.config["part"] == "prune"}
    for r in prunes.values():
        assert {reg[r.config["method"]], base.key} <= set(r.deps) and r.cost_tflop == 0
        if r.config["control_seed"] is not None:  # the control needs the method's masks
            (of,) = [k for k in r.deps if k in prunes]
            assert prunes[of].config["control_seed"] is None and prunes[of].config["rule"] == r.config["rule"]
    cb = profiles.get("criteria_benchmark", "smoke")
    for r in ours:
        if r.config["part"] == "finetune":
            (dep,) = [k for k in r.deps if k in prunes]
            assert (prunes[dep].config["control_seed"] is not None) == r.config["control"]
            assert r.config["finetune"] == cb["finetune"] and r.config["n_train"] == cb["n_train"]  # one recipe
        if r.config["part"] in ("regularise", "finetune"):
            assert r.cost_tflop > 0
    assert {r.config["rule"] for r in prunes.values()} == {"threshold", "flops", "gates"}


def test_presets_and_arguments_are_checked():
    with pytest.raises(ValueError, match="no 'paper' preset"):
        sr.preset("paper")
    with pytest.raises(ValueError, match="unknown method"):
        sr.regularise("smoke", "obs")
    with pytest.raises(ValueError, match="prunes by rule"):
        sr.prune("smoke", "bar", "threshold")


def test_random_control_keeps_each_layers_count_and_depends_only_on_its_seed():
    keep = {"a": torch.tensor([True, False, True, True, False, False]), "b": torch.zeros(4, dtype=torch.bool)}
    r0, r0b, r1 = sr.random_like(keep, 0), sr.random_like(keep, 0), sr.random_like(keep, 1)
    assert {n: int(k.sum()) for n, k in r0.items()} == {"a": 3, "b": 0}
    assert all(torch.equal(r0[n], r0b[n]) for n in keep)
    draws = {tuple(sr.random_like(keep, s)["a"].tolist()) for s in range(30)}
    assert len(draws) > 5  # not the same channels every time
