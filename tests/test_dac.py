"""DAC (Li et al., WACV 2019): the depthwise + pointwise decomposition is exact at full rank and the best rank-r
approximation per input channel below it; FLOPs follow r/N + r/k^2; and no data is touched."""
import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reprolib import dac
from reprolib.counting import count
from reprolib.models import create


def conv(cin=4, cout=6, k=3, stride=1, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=1, bias=bias).double()


@pytest.mark.parametrize("stride,bias", [(1, True), (2, False)])
def test_full_rank_is_exact(stride, bias):
    c = conv(stride=stride, bias=bias)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    seq = dac.decompose_conv(c, dac.max_rank(c))                 # min(6, 9) = 6
    assert seq[0].groups == 4 and seq[0].out_channels == 24 and seq[1].kernel_size == (1, 1)
    assert torch.allclose(seq(x), c(x), atol=1e-12)


def effective_kernels(seq, c):
    """The conv weight the decomposition computes: pointwise x depthwise, per input channel."""
    dw = seq[0].weight.reshape(c.in_channels, -1, 9)               # [C, r, k^2]
    pw = seq[1].weight.reshape(c.out_channels, c.in_channels, -1)  # [N, C, r]
    return torch.einsum("ncr,crk->nck", pw, dw).detach()


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_truncation_is_the_best_rank_r_approximation_of_each_channel(rank):
    c = conv(cout=8)
    seq = dac.decompose_conv(c, rank)
    eff = effective_kernels(seq, c)
    w = c.weight.detach().reshape(8, 4, 9)
    x = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    assert torch.allclose(seq(x), F.conv2d(x, eff.reshape(8, 4, 3, 3), c.bias, padding=1), atol=1e-12)
    for ch in range(4):
        s = torch.linalg.svdvals(w[:, ch])
        err = (w[:, ch] - eff[:, ch]).norm()
        assert torch.linalg.matrix_rank(eff[:, ch]) == rank
        assert err == pytest.approx(float(s[rank:].pow(2).sum().sqrt()), abs=1e-10)  # Eckart-Young minimum
        g = torch.Generator().manual_seed(ch)                       # any other rank-r factorisation does worse
        other = torch.randn(8, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, 9, generator=g,
                                                                                    dtype=torch.float64)
        proj = other @ torch.linalg.pinv(other) @ w[:, ch]          # best fit within another column space
        assert (w[:, ch] - proj).norm() >= err - 1e-12


def test_flops_follow_r_over_n_plus_r_over_k_squared():
    c = conv(cin=8, cout=16, bias=False).float()
    for r in (1, 3, 5):
        seq = dac.decompose_conv(c, r)
        ratio = count(seq, (1, 8, 10, 10))["flops"] / count(c, (1, 8, 10, 10))["flops"]
        assert ratio == pytest.approx(r / 16 + r / 9, rel=1e-6)
        assert dac.flops_ratio(c, r) == pytest.approx(r / 16 + r / 9)


def test_ranks_follow_the_energy_threshold_and_skip_layers_without_gain():
    model = create("resnet20").eval()
    for tau in (0.5, 0.9):
        ranks = dac.ranks_at(model, tau)
        for name, r in ranks.items():
            e = dac.energy(model.get_submodule(name))
            assert e[r - 1] >= tau - 1e-9 and (r == 1 or e[r - 2] < tau)
            assert dac.flops_ratio(model.get_submodule(name), r) < 1
    assert dac.ranks_at(model, 1.0) == {}                      # full rank never pays: r/N + r/9 >= 1 at r = 9


def test_dac_is_data_free():
    """No parameter takes data; decompose never runs the model; the FLOPs search runs it on zeros only."""
    for fn in (dac.accelerate, dac.ranks_for_flops, dac.decompose, dac.decompose_conv):
        assert not {"batches", "data", "x", "images"} & set(inspect.signature(fn).parameters)
    model = create("resnet20").eval()

    def refuse(module, args):
        raise AssertionError("decompose ran the model")
    h = model.register_forward_pre_hook(refuse)
    dac.decompose(model, {"conv1": 2, "layer2.0.conv1": 1})
    h.remove()
    with dac.forward_audit(model) as seen:
        small, found = dac.accelerate(model, 0.5)
    assert seen["calls"] == found["evaluations"] + 1 and seen["nonzero_inputs"] == 0   # + the dense count
    assert abs(found["flops_reduction"] - 0.5) < 0.05
    assert found["flops_reduction"] == pytest.approx(1 - count(small, (1, 3, 32, 32))["flops"] /
                                                     count(model, (1, 3, 32, 32))["flops"])
    x = torch.randn(2, 3, 32, 32)
    with dac.forward_audit(model) as after:                   # the audit does see real inputs
        model(x)
    assert after == {"calls": 1, "nonzero_inputs": 1}
    small(x)                                                  # copies made under the audit stop counting after it
    assert seen["nonzero_inputs"] == 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="rank must be in"):
        dac.decompose_conv(conv(), 10)
    with pytest.raises(ValueError, match="ungrouped"):
        dac.decompose_conv(nn.Conv2d(4, 4, 3, groups=2), 1)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        dac.ranks_for_flops(create("resnet20"), 1.5)
