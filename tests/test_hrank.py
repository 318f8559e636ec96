"""The HRank experiment's helpers: the middle-group sweep and the control masks."""
import pytest
import torch

from reprolib import masks as masks_mod, spec
from reprolib.experiments import hrank
from reprolib.models import create


def test_middle_spec_changes_only_layers_2_to_36():
    base = spec.parse(spec.table1()[1], n_layers=55)
    swept = spec.parse(hrank.middle_spec(0.25), n_layers=55)
    assert swept[1:36] == [0.25] * 35
    assert swept[:1] + swept[36:] == base[:1] + base[36:]
    assert spec.format(spec.parse(hrank.middle_spec(0.6))) == spec.format(base)  # spec 1 is its own 0.6 point


def test_controls_prune_the_same_number_of_filters_per_layer_as_rank():
    torch.manual_seed(0)
    model = create("resnet56")
    rates = spec.parse(spec.table1()[5], n_layers=55)
    convs = masks_mod.conv_layers(model)
    fake_ranks = {"ranks": {c: torch.rand(model.get_submodule(c).out_channels).tolist() for c in convs}}
    by = {c: hrank.masks_for(model, rates, c, 0, fake_ranks) for c in ("hrank", "l1norm", "random")}
    for c in convs:
        n = model.get_submodule(c).out_channels
        kept = {k: int(m[c].sum()) for k, m in by.items()}
        assert set(kept.values()) == {n - int(n * rates[convs.index(c)])}, (c, kept)
    assert any(not torch.equal(by["hrank"][c], by["random"][c]) for c in convs)
    assert torch.equal(hrank.masks_for(model, rates, "random", 0, None)["layer1.0.conv1"],
                       hrank.masks_for(model, rates, "random", 0, None)["layer1.0.conv1"])


def test_protocol_runs_are_the_studys_30_epochs_on_all_images_and_differ_from_the_budget_runs():
    from reprolib import plan, sweep
    budget = {r.hash for r in plan.trace(hrank.all_runs, "budget")}
    proto = [r for r in plan.trace(hrank.protocol_runs, "budget") if r.config.get("part") == "finetune"]
    # 7 specs + spec 1 at lr 0.005 and 0.05 (0.01 is Table 1's spec-1 run) + 2 controls, one seed
    assert len(proto) == 11 and not budget & {r.hash for r in proto}
    for r in proto:
        ft = r.config["finetune"]
        assert r.config["n_train"] is None and ft["epochs"] == 30 and r.config["profile"] == "budget"
    assert sorted(r.config["finetune"]["lr"] for r in proto if r.config["criterion"] == "hrank") == \
        [0.005] + [0.01] * 7 + [0.05]
    assert {r.config["criterion"] for r in proto} == {"hrank", "l1norm", "random"}
    assert hrank.protocol_runs("smoke") == {}  # only the budget profile has the section
    with pytest.raises(SystemExit, match="no such function"):
        sweep.build(["hrank"], "budget", "nope")


def test_the_summary_note_gives_drops_as_points_lost_with_the_seed_spread():
    note = hrank.drop_note([70.0, 71.0, 72.0], dense=89.74, paper_acc=92.57, dense_paper=93.26)
    assert "drop from ours 18.74 points, seed std 1.00" in note  # 89.74 - 71.0: positive when accuracy is lost
    assert note.endswith(": 0.69")  # the paper's 93.26 - 92.57
    assert hrank.drop_note([88.0], dense=89.74, paper_acc=92.57).endswith("drop from ours 1.74 points, one seed")


def test_lr_rows_judge_the_best_rate_against_the_seed_spread():
    verdicts = lambda lrs, sd: [(r.ours, r.verdict) for r in hrank.lr_rows("c", lrs, sd, "std", "p")]  # noqa: E731
    lrs = {0.005: 88.0, 0.01: 87.5, 0.05: 87.0}
    # 0.005 ahead of every other rate by more than the spread: Section 3.7 reproduced, the Abstract's 0.05 not
    assert verdicts(lrs, 0.2) == [(0.005, "reproduced"), (0.005, "not reproduced")]
    # ahead of 0.01 by less than the spread, but of 0.05 by more; then within it, or no spread at all
    assert verdicts(lrs, 0.6) == [(0.005, "not comparable"), (0.005, "not reproduced")]
    assert verdicts(lrs, 1.5) == [(0.005, "not comparable"), (0.005, "not comparable")]
    assert verdicts(lrs, None) == [(0.005, "not comparable"), (0.005, "not comparable")]
    assert verdicts({0.01: 87.5}, 0.2) == [(None, "not run yet"), (None, "not run yet")]
    best_05 = {0.005: 86.0, 0.01: 87.5, 0.05: 88.0}
    assert verdicts(best_05, 0.2) == [(0.05, "not reproduced"), (0.05, "reproduced")]
