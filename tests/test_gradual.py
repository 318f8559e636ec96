"""Gradual magnitude pruning with Zhu & Gupta's cubic schedule (reprolib.gradual), and train.fit's on_step hook."""
import pytest
import torch

from reprolib import masks as masks_mod, train
from reprolib.experiments import weight_pruning as wp
from reprolib.gradual import GradualMagnitude, cubic_sparsity, schedule_for, update_steps
from reprolib.models import create
from test_weight_pruning import grey_data


def test_the_cubic_schedule_by_hand():
    sched = dict(final_sparsity=0.8, initial_sparsity=0.0, t0=10, n=4, dt=5)  # pruning from step 10 to step 30
    assert cubic_sparsity(10, **sched) == 0.0
    assert cubic_sparsity(15, **sched) == pytest.approx(0.8 - 0.8 * 0.75 ** 3)  # = 0.4625
    assert cubic_sparsity(20, **sched) == pytest.approx(0.7)  # halfway: 0.8 - 0.8 / 8
    assert cubic_sparsity(30, **sched) == pytest.approx(0.8)
    assert cubic_sparsity(3, **sched) == 0.0 and cubic_sparsity(99, **sched) == pytest.approx(0.8)
    assert cubic_sparsity(20, **dict(sched, initial_sparsity=0.4)) == pytest.approx(0.8 - 0.4 / 8)
    assert update_steps(t0=10, n=4, dt=5) == [10, 15, 20, 25, 30]
    assert schedule_for(1000, begin=0.1, end=0.6, dt=100) == {"t0": 100, "n": 5, "dt": 100}
    with pytest.raises(ValueError, match="no pruning step"):
        schedule_for(100, begin=0.0, end=0.5, dt=60)
    with pytest.raises(ValueError, match="below initial_sparsity"):
        cubic_sparsity(0, final_sparsity=0.2, initial_sparsity=0.5, n=1, dt=1)


def _fit(model, d, **kw):
    args = dict(epochs=3, lr=0.05, batch_size=16, momentum=0.9, weight_decay=5e-4, bf16=False, channels_last=False,
                seed=1)
    return train.fit(model, d, **{**args, **kw})


def test_on_step_sees_every_step_and_a_hook_that_does_nothing_changes_nothing(tmp_path):
    d = grey_data(64, 16)  # 4 steps an epoch
    torch.manual_seed(0)
    plain = create("lenet300")
    _fit(plain, d)
    torch.manual_seed(0)
    hooked, seen = create("lenet300"), []
    _fit(hooked, d, on_step=lambda step, model, xb, yb: seen.append((step, len(yb))))
    assert seen == [(s, 16) for s in range(1, 13)]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), hooked.state_dict().values()))

    def kill(epoch, model, history):
        if epoch == 2:
            raise KeyboardInterrupt
    torch.manual_seed(0)
    resumed, seen = create("lenet300"), []
    with pytest.raises(KeyboardInterrupt):
        _fit(resumed, d, checkpoint=tmp_path / "c.pt", on_epoch=kill)
    _fit(resumed, d, checkpoint=tmp_path / "c.pt", on_step=lambda step, *_: seen.append(step))
    assert seen == list(range(5, 13))  # resumed after epoch 1: the step count goes on


class Recorder:
    """Wraps a GradualMagnitude: the masks after each update, and whether the pruned weights were zero after
    every step."""

    def __init__(self, pruner):
        self.pruner, self.masks, self.zero_after_every_step = pruner, [], True

    def __call__(self, step, model, xb, yb):
        self.pruner(step, model, xb, yb)
        if self.pruner.is_update(step):
            self.masks.append({n: m.clone() for n, m in self.pruner.masks.items()})
        if self.pruner.masks is not None:
            self.zero_after_every_step &= wp.pruned_are_zero(model, self.pruner.masks)


@pytest.mark.parametrize("scope", ["global", "local"])
def test_masks_follow_the_schedule_only_lose_entries_and_pruned_weights_stay_zero(scope):
    d = grey_data(64, 16)
    torch.manual_seed(0)
    model = create("lenet300")
    layers = wp.weight_layers(model)
    pruner = GradualMagnitude(model, layers, final_sparsity=0.9, t0=2, n=4, dt=2, scope=scope)  # updates at 2..10
    rec = Recorder(pruner)
    _fit(model, d, on_step=rec)
    assert [h["step"] for h in pruner.history] == [2, 4, 6, 8, 10]
    for h in pruner.history:
        assert h["target"] == pytest.approx(cubic_sparsity(h["step"], final_sparsity=0.9, t0=2, n=4, dt=2))
    total = sum(m.numel() for m in pruner.masks.values())
    if scope == "global":
        for h in pruner.history:  # int(total * s) weights pruned at each update
            assert h["sparsity"] == pytest.approx(int(total * h["target"]) / total)
    else:
        for n, m in pruner.masks.items():  # each layer pruned to 90% on its own
            assert int((~m).sum()) == int(m.numel() * 0.9)
    for before, after in zip(rec.masks, rec.masks[1:]):
        assert all((after[n] <= before[n]).all() for n in layers)  # kept now implies kept before
    assert rec.zero_after_every_step and wp.pruned_are_zero(model, pruner.masks)
    assert masks_mod.sparsity(pruner.masks) == pytest.approx(pruner.history[-1]["sparsity"])
    # the kept weights are the largest magnitudes of the weights at the last update (no ties at zero)
    assert all(model.get_submodule(n).weight[m].ne(0).float().mean() > 0.99 for n, m in pruner.masks.items())


def test_a_resumed_run_ends_with_the_masks_and_weights_of_an_uninterrupted_one(tmp_path):
    d = grey_data(64, 16)

    def run(checkpoint, on_epoch=None, model=None):
        if model is None:
            torch.manual_seed(0)
            model = create("lenet300")
        pruner = GradualMagnitude(model, wp.weight_layers(model), final_sparsity=0.8, t0=0, n=4, dt=2)
        _fit(model, d, checkpoint=checkpoint, on_epoch=on_epoch, on_step=pruner)
        return model, pruner

    full, full_pruner = run(None)

    def kill(epoch, model, history):
        if epoch == 2:
            raise KeyboardInterrupt
    torch.manual_seed(0)
    model = create("lenet300")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "c.pt", kill, model)
    resumed, resumed_pruner = run(tmp_path / "c.pt", model=model)  # a new pruner: masks rebuilt from the zeros
    assert all(torch.equal(full_pruner.masks[n], resumed_pruner.masks[n]) for n in full_pruner.masks)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))


def test_bad_arguments_are_clear():
    model = create("lenet300")
    with pytest.raises(ValueError, match="not a Conv2d or Linear"):
        GradualMagnitude(model, ["2"], final_sparsity=0.5, n=2, dt=1)
    with pytest.raises(ValueError, match="unknown scope"):
        GradualMagnitude(model, ["1"], final_sparsity=0.5, n=2, dt=1, scope="layer")
    with pytest.raises(ValueError, match="n >= 1"):
        GradualMagnitude(model, ["1"], final_sparsity=0.5, n=0, dt=1)
