import json
import re

import pytest

from reprolib import models, profiles, runs, train
from reprolib.experiments import baseline


def test_hash_ignores_key_order_but_not_values():
    assert runs.config_hash({"a": 1, "b": [1, 2]}) == runs.config_hash({"b": [1, 2], "a": 1})
    assert runs.config_hash({"a": 1}) != runs.config_hash({"a": 2})


def test_run_writes_a_complete_record_then_reads_it_back():
    calls = []

    def fn(config, paths):
        calls.append(config)
        return {"metrics": {"test_acc": 0.5}, "curves": [{"epoch": 1}], "dataset": "synthetic"}

    cfg = {"model": "resnet20", "lr": 0.1, "profile": "smoke"}
    rec = runs.run("demo", cfg, fn)
    again = runs.run("demo", dict(cfg), fn)
    assert len(calls) == 1 and again == rec
    path = runs.results_dir() / "demo" / f"{runs.config_hash(cfg)}.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["config"] == cfg and on_disk["profile"] == "smoke" and on_disk["dataset"] == "synthetic"
    assert on_disk["metrics"]["test_acc"] == 0.5 and on_disk["wall_time_s"] >= 0
    assert {"torch", "torchvision", "python", "threads"} <= set(on_disk["versions"])
    runs.run("demo", dict(cfg, lr=0.2), fn)
    assert len(calls) == 2 and len(runs.all_records("demo")) == 2


def test_cached_only_mode_refuses_to_train(monkeypatch):
    monkeypatch.setenv("REPROLIB_CACHED_ONLY", "1")
    with pytest.raises(runs.NotCachedError, match="no cached result for experiment 'demo'"):
        runs.run("demo", {"x": 1}, lambda c, p: {"metrics": {}})


def test_profiles_default_and_errors(monkeypatch):
    monkeypatch.delenv("REPROLIB_PROFILE", raising=False)
    assert profiles.get("baseline")["profile"] == "budget"
    monkeypatch.setenv("REPROLIB_PROFILE", "smoke")
    assert profiles.get("baseline")["profile"] == "smoke"
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        profiles.get("baseline", "fast")
    with pytest.raises(ValueError, match="unknown experiment 'hrank9'"):
        profiles.get("hrank9", "smoke")


def test_baseline_smoke_run_end_to_end(monkeypatch):
    """The smoke baseline on synthetic data: trains, caches, and its weights reload."""
    rec = baseline.run("smoke", dataset="synthetic", n_train=256, n_test=128)
    assert rec["dataset"] == "synthetic" and rec["model"] == "resnet20" and rec["profile"] == "smoke"
    assert len(rec["curves"]) == rec["config"]["epochs"] and 0 <= rec["metrics"]["test_acc"] <= 1
    model = baseline.load_model(rec)
    assert sum(p.numel() for p in model.parameters()) == 269_722
    assert not runs.paths("baseline", rec["config"])["checkpoint"].exists()  # removed once the run is done


def test_damaged_results_and_weights_files_name_the_file_and_the_remedy(monkeypatch):
    """A record or weights file cut to its first 200 bytes (an interrupted copy) stops with an error naming the
    file and the remedies, and the first remedy (delete, recompute) works."""
    def quick_train(config, paths):  # stands in for training: the model's initial weights, saved as the run does
        model = models.create(config["model"], **config["model_kwargs"])
        train.save_atomic(model.state_dict(), paths["weights"])
        return {"model": config["model"], "metrics": {"test_acc": 0.1}, "weights": paths["weights"].name}
    monkeypatch.setattr(baseline, "_train", quick_train)
    rec = baseline.run("smoke", dataset="synthetic")
    p = runs.paths("baseline", rec["config"])
    baseline.load_model(rec)

    p["weights"].write_bytes(p["weights"].read_bytes()[:200])
    with pytest.raises(runs.DamagedResultError) as err:
        baseline.load_model(rec)
    msg = str(err.value)  # deleting the weights alone would not recompute them: the record is named too
    assert msg.startswith(f"{p['weights']} is damaged") and f"rm {p['json']} {p['weights']}" in msg
    assert "git checkout -- " in msg

    p["json"].write_text(p["json"].read_text()[:200])
    for call in (lambda: baseline.run("smoke", dataset="synthetic"), lambda: runs.all_records("baseline")):
        with pytest.raises(runs.DamagedResultError, match=r"(?s)" + re.escape(f"{p['json']} is damaged")
                           + r".*JSONDecodeError.*rm .*git checkout -- "):
            call()

    p["json"].unlink()
    p["weights"].unlink()
    again = baseline.run("smoke", dataset="synthetic")
    assert again["hash"] == rec["hash"] and baseline.load_model(again) is not None
