"""BAR (Lemaire et al. 2019): Hard Concrete masks, the barrier and its moving budget, the exact FLOPs model,
folding the gates into the network, and a tiny run that ends inside its budget."""
import math

import pytest
import torch

from reprolib import bar, data, surgery
from reprolib.counting import count
from reprolib.models import create
from reprolib.models.resnet_cifar import ResNetCifar


def test_masks_are_exactly_zero_and_one_where_the_hard_concrete_is():
    # Test time: s = sigmoid(log_alpha) stretched to (-0.1, 1.1) and clamped: 0 iff log_alpha <= -log 11.
    la = torch.tensor([-10.0, -math.log(11) - 1e-4, -math.log(11) + 1e-2, 0.0, math.log(11), 5.0])
    z = bar.deterministic(la)
    assert z[0] == 0 and z[1] == 0 and 0 < z[2] < 0.01
    assert z[3] == pytest.approx(0.5 * 1.2 - 0.1) and z[4] == 1 and z[5] == 1
    # Training: low noise closes the gate exactly, high noise opens it exactly (a plain sigmoid never does).
    assert bar.sample(torch.tensor(0.0), torch.tensor(0.01)) == 0
    assert bar.sample(torch.tensor(0.0), torch.tensor(0.99)) == 1
    mid = bar.sample(torch.tensor(0.0), torch.tensor(0.5))
    assert mid == pytest.approx(0.5)  # logit(0.5) = 0: s = sigmoid(0)


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 1.0, math.log(11)])
def test_probability_of_an_open_gate_is_the_share_of_noise_that_opens_it(log_alpha):
    n = 200_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # a uniform grid of noise values
    share = float((bar.sample(torch.tensor(log_alpha, dtype=torch.float64), u) > 0).double().mean())
    p = float(bar.prob_nonzero(torch.tensor(log_alpha, dtype=torch.float64)))
    assert abs(share - p) < 2 / n
    # Louizos et al.'s closed form, by hand at log_alpha = 0: sigmoid((2/3) log 11)
    assert float(bar.prob_nonzero(torch.tensor(0.0))) == pytest.approx(1 / (1 + 11 ** (-2 / 3)), rel=1e-6)


def test_barrier_is_zero_below_a_finite_inside_and_unbounded_at_the_budget():
    a, b = 0.4, 0.6
    assert float(bar.barrier(0.3, a, b)) == 0 and float(bar.barrier(0.4, a, b)) == 0
    assert float(bar.barrier(0.5, a, b)) == pytest.approx(0.5)  # x = 1/2: (1/4) / (1/2)
    inside = [float(bar.barrier(v, a, b)) for v in torch.linspace(0.41, 0.599, 50).tolist()]
    assert all(math.isfinite(f) for f in inside) and all(y > x for x, y in zip(inside, inside[1:]))
    assert float(bar.barrier(b - 1e-7, a, b)) > 1e5
    assert math.isinf(float(bar.barrier(0.6, a, b))) and math.isinf(float(bar.barrier(0.7, a, b)))
    assert float(bar.barrier(0.7, a, b, cap=10.0)) == 10 and float(bar.barrier(0.599, a, b, cap=10.0)) == 10
    with pytest.raises(ValueError, match="a < b"):
        bar.barrier(0.5, 0.6, 0.6)


def test_the_budget_moves_from_above_the_dense_cost_to_the_target():
    assert bar.progress(0.0) == pytest.approx(0) and bar.progress(1.0) == pytest.approx(1)
    assert bar.progress(0.5) == pytest.approx(0.5)
    bs = [bar.budget_at(t / 20, 0.5, tolerance=0.01) for t in range(21)]
    assert bs[0] == pytest.approx(1.01) and bs[-1] == pytest.approx(0.5)
    assert all(y < x for x, y in zip(bs, bs[1:]))


def _random_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)


def test_flops_model_and_folding_match_the_shrunk_network_exactly():
    torch.manual_seed(0)
    model = create("resnet20").eval()
    _random_bn(model)
    fm = bar.flops_model(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        dense_out = model(x)
        gates = bar.attach(model)
        gates.eval()
        assert torch.equal(model(x), dense_out)  # log_alpha = log 11: every test-time mask is 1
        for t in gates.theta:
            t.copy_(torch.randn(t.shape) * 3)
        gates.theta[3].fill_(bar.CLOSED)  # layer2.0 closed entirely: its branch is gone
        gated = model(x)
    kept = gates.kept()
    assert kept[3] == 0 and 0 < sum(kept) < sum(fm.channels)
    masks = bar.fold(model)
    assert not hasattr(model, bar.ATTR) and [int(m.sum()) for m in masks.values()] == kept
    small = surgery.shrink(model, masks)
    with torch.no_grad():
        assert (model(x) - gated).abs().max() < 1e-5 and (small.eval()(x) - gated).abs().max() < 1e-5
    assert count(small, (1, 3, 32, 32))["flops"] == fm.flops(kept)
    assert fm.flops(fm.channels) == fm.dense == count(create("resnet20"), (1, 3, 32, 32))["flops"]


def _gated(init=bar.OPEN):
    torch.manual_seed(0)
    model = ResNetCifar(8)
    fm = bar.flops_model(model)
    return model, fm, bar.attach(model, init=init)


def test_penalty_pushes_costly_gates_shut_and_grows_as_the_budget_nears():
    model, fm, gates = _gated(init=1.0)
    pen = bar.budget_penalty(gates, fm, 0.5, lam=1.0, total_steps=100, cap=1e6)
    first = pen(model)
    assert gates.step == 1 and torch.isfinite(first) and first > 0
    first.backward()
    grads = [t.grad for t in gates.theta]
    assert all((g > 0).all() for g in grads)  # SGD lowers every log_alpha
    # equal log_alpha: a stage-1 channel (more FLOPs each) is pushed harder than a stage-3 one
    assert grads[0][0] > grads[2][0]
    bar.close_to_budget(gates, fm, 0.7)  # V = 0.7 or just below; the moving budget b stays above it until t ~ 0.5
    values = []
    for step in (0, 20, 35, 45):  # the same gates, later in training: b has moved closer to V
        gates.step = step
        values.append(float(pen(model).detach()))
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert all(y > x for x, y in zip(values, values[1:]))


def test_penalty_vanishes_once_the_masks_are_below_the_budget():
    model, fm, gates = _gated()
    with torch.no_grad():
        for t in gates.theta:
            t[: len(t) * 3 // 4] = bar.CLOSED
    assert bar.flops_share(gates, fm) < 0.5
    pen = bar.budget_penalty(gates, fm, 0.5, lam=1.0, total_steps=10)
    value = pen(model)
    assert value == 0
    value.backward()
    assert all((t.grad == 0).all() for t in gates.theta)


def test_close_to_budget_closes_the_lowest_gates_and_no_more():
    model, fm, gates = _gated()
    with torch.no_grad():
        for i, t in enumerate(gates.theta):
            t.copy_(torch.linspace(3.0, 4.0, len(t)) + i)  # all open; layer 0's first channels lowest
    before = torch.cat([gates.log_alpha(i).detach().clone() for i in range(3)])
    closed = bar.close_to_budget(gates, fm, 0.6)
    assert closed > 0 and bar.flops_share(gates, fm) <= 0.6
    shut = torch.cat([gates.log_alpha(i).detach() for i in range(3)]) <= -math.log(11)
    assert int(shut.sum()) == closed and before[~shut].min() > before[shut].max()  # the lowest, over all layers
    assert shut[:16].all() and shut[16:48].any()  # all of layer 0 and part of layer 1 (16 + 32 + 64 channels)
    # one fewer closed would be over the budget
    kept = gates.kept()
    last = max(i for i in range(3) if kept[i] < fm.channels[i])
    assert (fm.flops([k + (i == last) for i, k in enumerate(kept)]) / fm.dense) > 0.6
    assert bar.close_to_budget(gates, fm, 0.6) == 0


def test_gates_travel_in_the_state_dict_with_their_step():
    model, fm, gates = _gated()
    with torch.no_grad():
        gates.theta[1].fill_(0.123)
    gates.step = 17
    gates.train()
    noise = gates.mask(1)
    other, _, again = _gated()
    other.load_state_dict(model.state_dict())
    assert again.step == 17 and torch.equal(again.theta[1], gates.theta[1])
    again.train()
    assert torch.equal(again.mask(1), noise)  # the same step draws the same mask: resumed runs match


def test_a_tiny_bar_run_ends_inside_its_budget_as_a_plain_network():
    torch.manual_seed(0)
    model = create("resnet20")
    d = data.synthetic_cifar10(n_train=64, n_test=32)
    masks, info = bar.prune(model, d, budget=0.5, lam=1.0, scale=10.0, epochs=2, batch_size=32, lr=0.05, bf16=False)
    assert not hasattr(model, bar.ATTR) and info["flops_share"] <= 0.5
    assert len(info["curves"]) == 2 and all("flops_share" in c and "budget" in c for c in info["curves"])
    small = surgery.shrink(model, masks)
    assert count(small, (1, 3, 32, 32))["flops"] / count(create("resnet20"), (1, 3, 32, 32))["flops"] == \
        pytest.approx(info["flops_share"])


def test_bad_inputs_are_refused():
    model, fm, gates = _gated()
    with pytest.raises(ValueError, match="share of the dense FLOPs to keep"):
        bar.budget_penalty(gates, fm, 1.5, lam=1.0, total_steps=10)
    with pytest.raises(ValueError, match="already carries gates"):
        bar.attach(model)
    with pytest.raises(ValueError, match="progress is defined"):
        bar.progress(1.5)
