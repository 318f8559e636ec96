"""reprolib.amc: units and state by hand, the action limit against shrunk networks, the DDPG agent on a toy."""
import numpy as np
import pytest
import torch

from reprolib import amc, criteria, surgery
from reprolib.counting import count
from reprolib.models import create
from reprolib.models.resnet_cifar import ResNetCifar
from toy_bn import trained_looking

CIFAR = (1, 3, 32, 32)


def test_units_and_state_of_resnet8_by_hand():
    model = ResNetCifar(8)
    us = amc.units(model)
    assert [u.name for u in us] == ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"]
    assert [u.consumer for u in us] == ["layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2"]
    # per kept filter: its own MACs (Cin * 9 * output pixels) + conv2's MACs on it (Cout2 * 9 * pixels)
    assert [u.coef for u in us] == [16 * 9 * 1024 + 16 * 9 * 1024, 16 * 9 * 256 + 32 * 9 * 256, 32 * 9 * 64 + 64 * 9 * 64]
    dense = 3 * 16 * 9 * 1024 + 2 * 16 * 16 * 9 * 1024 + (16 * 32 + 32 * 32) * 9 * 256 + (32 * 64 + 64 * 64) * 9 * 64 + 650
    assert amc.dense_flops(model) == dense == 12_239_498
    env = amc.Environment(us, dense, target=0.0)
    s0 = env.reset()
    #                 t   n    c  h  w  stride k  FLOPs[t]  reduced  rest                          a_prev
    expected0 = [0.0, 0.0, 0.0, 1, 1, 0.0, 0.0, 1.0, 0.0, 2 * 110592 * 32 / dense, 0.0]
    assert s0 == pytest.approx(expected0)
    s1, taken, done = env.step(0.5)  # 8 of 16 filters
    assert taken == 0.5 and not done
    expected1 = [0.5, 1 / 3, 0.0, 1, 1, 1.0, 0.0, 0.0, 8 * 294912 / dense, 55296 * 64 / dense, 0.5]
    assert s1 == pytest.approx(expected1)
    assert list(amc.FEATURES) == ["t", "n", "c", "h", "w", "stride", "k", "flops", "reduced", "rest", "a_prev"]


@pytest.mark.parametrize("target", [0.2, 0.5, 0.7])
@pytest.mark.parametrize("policy", ["none", "random", "most"])
def test_the_action_limit_reaches_the_target_in_true_flops(target, policy):
    model = trained_looking(create("resnet20"))
    us, dense = amc.units(model), amc.dense_flops(model)
    env = amc.Environment(us, dense, target)
    rng = np.random.default_rng(0)
    env.reset()
    done = False
    while not done:
        a = {"none": 0.0, "random": rng.uniform(0, 0.8), "most": 0.8}[policy]
        _, _, done = env.step(a)
    scores = criteria.get("l1norm")(model, [u.name for u in us])
    small = surgery.shrink(model, amc.masks_for(model, scores, env.kept()))
    true = count(small, CIFAR)["flops"]
    assert true == env.flops()  # the linear FLOPs model of the units is exact
    assert true <= (1 - target) * dense
    if policy == "none":  # the limit prunes no more than needed: one filter less in the last unit would miss
        last = us[-1]
        assert true + last.coef > (1 - target) * dense


def test_unreachable_targets_and_bad_actions_are_refused():
    us = amc.units(ResNetCifar(8))
    with pytest.raises(ValueError, match="below the target"):
        amc.Environment(us, amc.dense_flops(ResNetCifar(8)), 0.85)
    with pytest.raises(ValueError, match="a_max"):
        amc.Environment(us, 10**7, 0.1, a_max=1.0)


def test_masked_evaluation_equals_the_shrunk_network():
    model = trained_looking(create("resnet20"))
    us = amc.units(model)
    scores = criteria.get("l1norm")(model, [u.name for u in us])
    kept = {u.name: max(1, u.n // (i % 3 + 2)) for i, u in enumerate(us)}
    masks = amc.masks_for(model, scores, kept)
    x = torch.randn(4, 3, 32, 32)
    before = model(x).detach()
    with torch.no_grad(), amc.Masked(model)(masks) as m:
        masked = m(x)
    with torch.no_grad():
        shrunk = surgery.shrink(model, masks)(x)
        assert torch.allclose(masked, shrunk, atol=1e-4, rtol=1e-4)
        assert torch.equal(model(x), before)  # restored
    for name, keep in masks.items():  # the highest L1 norms are kept
        s = scores[name]
        assert keep.sum() == kept[name] and s[keep].min() >= s[~keep].max()


def test_uniform_control_is_the_smallest_share_that_meets_the_target():
    model = create("resnet20")
    us, dense = amc.units(model), amc.dense_flops(model)
    env = amc.Environment(us, dense, 0.5)
    kept = amc.uniform_kept(env)
    removed = sum(u.coef * (u.n - kept[u.name]) for u in us)
    assert removed >= env.need
    shares = np.array([1 - kept[u.name] / u.n for u in us])
    widths = np.array([u.n for u in us])
    assert np.all(np.abs(shares - shares.max()) <= 1 / widths)  # one share, up to each width's rounding
    # minimal: with one filter more in every unit the target is missed
    assert sum(u.coef * (u.n - kept[u.name] - 1) for u in us) < env.need


def test_ddpg_finds_the_best_policy_of_a_toy_landscape():
    """Three units of 1,000 filters, no FLOPs constraint, reward -||a - a*||^2: the paper's agent settings
    (100 random episodes, 300 more) find a* and the final actor's greedy policy is near it."""
    best = np.array([0.1, 0.6, 0.3])
    us = [amc.Unit(f"u{i}", f"v{i}", 1000, 10, 8, 8, 1, 3, 1) for i in range(3)]

    def reward(kept):
        a = np.array([1 - kept[f"u{i}"] / 1000 for i in range(3)])
        return -float(((a - best) ** 2).sum())

    res = amc.search(amc.Environment(us, 10**6, 0.0), reward, episodes=400, warmup=100, seed=0)
    assert np.abs(np.array(res["best"]["actions"]) - best).max() <= 0.05
    assert res["best"]["reward"] >= -0.005
    # the actor learnt: from about -0.14 (all actions near 0.4 at the start) to near the optimum
    assert res["greedy"]["reward"] >= -0.05
    assert res["best"]["episode"] >= 100  # found by the agent, after the random warm-up
