"""The survey's element-wise runs (reprolib.experiments.survey_elementwise): the plan of the smoke profile
without training, the presets the chapter shares, and every recipe computed on a tiny network."""
import pytest
import torch
import torch.nn as nn

from reprolib import masks as masks_mod, models, plan, runs
from reprolib.experiments import survey_elementwise as se, weight_pruning as wp
from test_weight_pruning import fake_grey_folder


def test_the_smoke_plan_lists_every_run_without_training():
    p = se.preset("smoke")
    planned = plan.trace(se.all_runs, "smoke")
    assert not any(r.cached for r in planned) and not list(runs.results_dir().glob("*/*.json"))
    mine = [r for r in planned if r.experiment == se.EXPERIMENT]
    n_models = len(p["models"]) * len(p["datasets"])
    parts = [r.config["part"] for r in mine]
    assert parts.count("oneshot_retrained") == n_models * len(se.METHODS)
    assert parts.count("gradual") == n_models * len(p["sparsities"])
    assert parts.count("regularised") == parts.count("regularised_curve") == n_models * len(p["regularisers"])
    dense = {r.key for r in planned if r.experiment == wp.EXPERIMENT and r.config["part"] == "dense"}
    assert len(dense) == n_models
    by_key = {r.key: r for r in planned}
    for r in mine:  # each run is computed by a recipe of this module, after the runs it reads
        assert r.recipe[0] == se.__name__ and r.recipe[1] == r.config["part"]
        if r.config["part"] == "regularised_curve":
            assert [by_key[k].config["part"] for k in r.deps] == ["regularised"]
        else:
            assert len(r.deps) == 1 and r.deps[0] in dense
        assert r.cost_tflop > 0 or r.config["part"] in ("oneshot_retrained", "regularised_curve")
    neighbours = [r for r in planned if r.experiment == wp.EXPERIMENT and r.config["part"] == "curve"]
    assert len(neighbours) == n_models * len(wp.CRITERIA) * len(wp.MODES)


@pytest.mark.parametrize("profile", ["smoke", "budget"])
def test_the_data_sparsities_and_retraining_are_the_weight_pruning_chapters(profile):
    mine, theirs = se.preset(profile), wp.PRESETS[profile]
    for key in ("n_train", "n_test", "retrain", "sparsities", "scope", "models"):
        assert mine[key] == theirs[key], key
    assert set(mine["datasets"]) <= set(theirs["datasets"])
    with pytest.raises(ValueError, match="no 'paper' preset"):
        se.preset("paper")


def test_magnitude_counts_and_random_scores():
    torch.manual_seed(0)
    net = models.create("lenet300")
    layers = wp.weight_layers(net)
    counts = se.magnitude_counts(net, layers, 0.9, "global")
    masks = masks_mod.weight_masks({n: net.get_submodule(n).weight.abs() for n in layers}, 0.9, "global")
    assert counts == {n: int((~m).sum()) for n, m in masks.items()}
    assert sum(counts.values()) == int(sum(m.numel() for m in masks.values()) * 0.9)
    a, b = se.random_scores(net, layers, 0), se.random_scores(net, layers, 0)
    assert all(torch.equal(a[n], b[n]) and a[n].shape == net.get_submodule(n).weight.shape for n in layers)


def _tiny(num_classes: int = 10):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 6), nn.ReLU(), nn.Linear(6, num_classes))


def test_every_recipe_on_a_tiny_network(tmp_path, monkeypatch):
    monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(fake_grey_folder(tmp_path / "fashion", n_train=1024, n_test=32)))
    monkeypatch.setitem(models._REGISTRY, "tiny", _tiny)
    monkeypatch.setitem(se.PRESETS, "smoke", dict(se.PRESETS["smoke"], models=["tiny"]))
    out = {k: v for k, v in se.all_runs("smoke").items() if k != "neighbours"}
    total = 784 * 6 + 6 * 10
    for r in out["oneshot_retrained"] + out["regularised"]:
        assert [row["sparsity"] for row in r["rows"]] == [int(total * s) / total for s in (0.5, 0.9)]
        assert all(row["pruned_stay_zero"] for row in r["rows"])
    by_method = {r["config"]["method"]: r for r in out["oneshot_retrained"]}
    for a, b in zip(by_method["obs"]["rows"], by_method["magnitude"]["rows"]):
        assert a["layer_sparsity"] == b["layer_sparsity"]  # OBS takes as many weights per layer as magnitude
    for r in out["gradual"]:
        m = r["metrics"]
        assert m["sparsity"] == int(total * r["config"]["final_sparsity"]) / total and m["pruned_stay_zero"]
        # 16 steps (1,024 images, batch 64), pruning over the first half every 2 steps: the cubic reaches s_f at step 8
        assert [u["step"] for u in r["mask_updates"]] == [2, 4, 6, 8]
        assert r["schedule"] == {"t0": 0, "n": 4, "dt": 2, "total_steps": 16}
        assert r["mask_updates"][-1]["target"] == pytest.approx(r["config"]["final_sparsity"])
    for r in out["regularised"]:
        t = [row["threshold"] for row in r["rows"]]
        assert t == sorted(t) and t[0] > 0
    assert {r["config"]["regulariser"] for r in out["regularised"]} == {"sensitivity", "l2"}
