"""KSE (Li et al. 2019): kernel sparsity, kernel entropy and their indicator, against a hand computation and a
literal loop; the mapping of input channels to the previous conv's filters."""
import math

import pytest
import torch
import torch.nn as nn

from reprolib import criteria
from reprolib.criteria import kse


def hand_weights():
    """N = 4 filters, C = 3 input channels, 1 x 1 kernels: each kernel is one number."""
    cols = [[0.0, 1.0, 2.0, 4.0],      # channel 0
            [0.0, 0.0, 0.0, 6.0],      # channel 1
            [0.0, 1.0, 1.0, 2.0]]      # channel 2
    return torch.tensor(cols).T.reshape(4, 3, 1, 1)


def test_indicator_matches_a_hand_computation():
    """k = 1 neighbour. Channel 0: nearest distances 1, 1, 1, 2 -> p = (.2, .2, .2, .4), e = 1.921928 bits, s = 7;
    channel 1: 0, 0, 0, 6 -> p = (0, 0, 0, 1), e = 0, s = 6; channel 2: 1, 0, 0, 1 -> e = 1, s = 4.
    Min-max: s = (1, 2/3, 0), e = (1, 0, 1/1.921928); v = sqrt(s / (1 + e)) = (0.707107, 0.816497, 0),
    normalised (0.866025, 1, 0). Sparsity alone would rank channel 0 first."""
    w = hand_weights()
    assert kse.kernel_sparsity(w).tolist() == [7.0, 6.0, 4.0]
    e0 = -(3 * 0.2 * math.log2(0.2) + 0.4 * math.log2(0.4))
    assert torch.allclose(kse.kernel_entropy(w, k=1), torch.tensor([e0, 0.0, 1.0], dtype=torch.float64))
    v = kse.indicator(w, k=1)
    assert torch.allclose(v, torch.tensor([math.sqrt(0.5) / math.sqrt(2 / 3), 1.0, 0.0], dtype=torch.float64))
    # k = 2: channel 0 sums 1+2, 1+1, 1+2, 2+3 = (3, 2, 3, 5); channel 1: (0, 0, 0, 12); channel 2: (2, 1, 1, 2)
    def h(d):
        p = torch.tensor(d, dtype=torch.float64) / sum(d)
        return float(-(p[p > 0] * torch.log2(p[p > 0])).sum())
    assert torch.allclose(kse.kernel_entropy(w, k=2), torch.tensor([h([3, 2, 3, 5]), 0.0, h([2, 1, 1, 2])],
                                                                   dtype=torch.float64))


def entropy_loop(w, k):
    """The released code's density_entropy, literally: per channel, per kernel, the k nearest others."""
    n, c = w.shape[:2]
    out = []
    for ch in range(c):
        ker = [w[i, ch].flatten().double() for i in range(n)]
        dms = []
        for i in range(n):
            d = sorted(float((ker[i] - ker[j]).norm()) for j in range(n) if j != i)
            dms.append(sum(d[:k]))
        tot = sum(dms)
        out.append(-sum(x / tot * math.log2(x / tot) for x in dms if x > 0))
    return torch.tensor(out, dtype=torch.float64)


def test_entropy_equals_the_literal_loop_on_random_kernels():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 5, 3, 3, generator=g)
    assert torch.allclose(kse.kernel_entropy(w), entropy_loop(w, 5), atol=1e-10)
    assert torch.allclose(kse.kernel_entropy(w[:4]), entropy_loop(w[:4], 3), atol=1e-10)  # N <= k: N - 1 neighbours


def test_degenerate_layers_do_not_divide_by_zero():
    w = torch.ones(6, 3, 3, 3)                           # every channel alike, every kernel alike
    assert torch.equal(kse.indicator(w), torch.zeros(3, dtype=torch.float64))


def test_the_registry_scores_the_previous_convs_filters_by_the_next_convs_input_channels():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.b(torch.relu(self.bn(self.a(x)))) + 0

    m = Pair()
    with torch.no_grad():
        m.b.weight.copy_(hand_weights())
    s = criteria.get("kse")(m, ["a"], k=1)
    assert list(s) == ["a"] and torch.allclose(s["a"], kse.indicator(hand_weights(), k=1).float())
    with pytest.raises(ValueError, match="before any conv"):
        criteria.get("kse")(m, ["b"])                    # b's output feeds no conv
