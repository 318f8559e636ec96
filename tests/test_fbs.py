"""reprolib.fbs: k-WTA, the all-pass start, the real-FLOPs counter, the skipping implementation."""
import pytest
import torch
import torch.nn as nn

from reprolib import fbs
from reprolib.counting import count
from reprolib.models.resnet_cifar import ResNetCifar
from toy_bn import trained_looking


def _resnet8(seed=0):
    """ResNet-8 (one block per stage) with BN statistics and gammas that are not the identity."""
    torch.manual_seed(seed)
    return trained_looking(ResNetCifar(8), seed)


def _random_gates(model, seed=1, bias=0.0):
    g = torch.Generator().manual_seed(seed)
    for gate in fbs.gates(model):
        gate.fc.weight.data = torch.randn(gate.fc.weight.shape, generator=g)
        gate.fc.bias.data = torch.randn(gate.fc.bias.shape, generator=g) * 0.5 + bias
    return model


@pytest.mark.parametrize("c,d,k", [(16, 0.5, 8), (64, 0.3, 19), (32, 0.3, 10), (16, 0.75, 12), (10, 0.25, 3),
                                   (16, 0.01, 1), (16, 1.0, 16)])
def test_winners_is_round_d_times_c_halves_up_at_least_one(c, d, k):
    assert fbs.winners(c, d) == k


def test_wta_keeps_exactly_the_k_largest_of_each_image():
    torch.manual_seed(0)
    g = torch.relu(torch.randn(50, 16))  # many exact zeros, as after the gate's ReLU
    g[3] = 0.7  # a row of ties: the lower indices win
    for d in (0.25, 0.5, 0.75, 1.0):
        k = fbs.winners(16, d)
        out = fbs.wta(g, k)
        mask = fbs.wta_mask(g, k)
        assert (mask.sum(1) == k).all()
        for row, m, o in zip(g, mask, out):
            kth = torch.sort(row, descending=True).values[k - 1]
            assert (row[m] >= kth).all() and (row[~m] <= kth).all()  # brute force: the k largest
            assert torch.equal(o, torch.where(m, row, torch.zeros_like(row)))
        assert torch.equal(mask[3], torch.arange(16) < k)


def test_wta_passes_gradient_to_the_winners_only():
    g = torch.tensor([[0.1, 0.9, 0.5, 0.3]], requires_grad=True)
    fbs.wta(g, 2).sum().backward()
    assert g.grad.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_bad_density_and_k_are_refused():
    with pytest.raises(ValueError, match="density"):
        fbs.winners(16, 0.0)
    with pytest.raises(ValueError, match="winners of 4"):
        fbs.wta_mask(torch.ones(1, 4), 5)
    with pytest.raises(ValueError, match="no residual blocks"):
        fbs.gated(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_all_pass_gates_at_density_one_compute_the_base_network():
    base = _resnet8()
    model = fbs.gated(base, 1.0).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
    assert len(fbs.gates(model)) == 6  # two gated convs in each of the three blocks


def test_gated_conv_and_gate_flops_equal_a_hand_count():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    # 5 of 8 inputs, 6 of 16 filters, 4x4 output: 5 * 6 * 9 * 16
    assert fbs.gated_conv_flops(conv, 5, 6, 16) == 4320
    conv_b = nn.Conv2d(8, 16, 3, padding=1, bias=True)
    assert fbs.gated_conv_flops(conv_b, 5, 6, 16) == 4320 + 6 * 16
    # pool 5 channels of 8x8 (320 adds), FC 5 -> 16 (80 MACs + 16 bias adds), boost 6 channels of 4x4 (96)
    assert fbs.gate_flops(5, 64, 16, 6, 16) == 320 + 80 + 16 + 96


def test_flops_per_image_of_a_gated_resnet8_equals_a_hand_count():
    model = fbs.gated(_resnet8(), 0.5).eval()  # all-pass gates: exactly k channels computed everywhere
    f = fbs.flops_per_image(model, torch.randn(3, 3, 32, 32))
    # kept: 8 of 16 (block 1), 16 of 32 (block 2), 32 of 64 (block 3); maps 32x32, 16x16, 8x8
    convs = (16 * 8 * 9 * 1024 + 8 * 8 * 9 * 1024        # block 1: conv1 dense input, conv2 sparse in and out
             + 16 * 16 * 9 * 256 + 16 * 16 * 9 * 256       # block 2 (stride 2)
             + 32 * 32 * 9 * 64 + 32 * 32 * 9 * 64)        # block 3 (stride 2)
    gates = ((16 * 1024 + 16 * 16 + 16 + 8 * 1024) + (8 * 1024 + 8 * 16 + 16 + 8 * 1024)
             + (16 * 1024 + 16 * 32 + 32 + 16 * 256) + (16 * 256 + 16 * 32 + 32 + 16 * 256)
             + (32 * 256 + 32 * 64 + 64 + 32 * 64) + (32 * 64 + 32 * 64 + 64 + 32 * 64))
    fixed = 3 * 16 * 9 * 1024 + 64 * 10 + 10  # stem conv and classifier
    assert f["convs"].tolist() == [convs] * 3
    assert f["gates"].tolist() == [gates] * 3
    assert f["total"].tolist() == [convs + gates + fixed] * 3
    # at density 1 the convs cost what the dense network's do
    dense = fbs.flops_per_image(fbs.gated(_resnet8(), 1.0), torch.randn(1, 3, 32, 32))
    assert int(dense["convs"] + dense["fixed"]) == count(_resnet8(), (1, 3, 32, 32))["flops"]


def test_flops_per_image_counts_only_nonzero_gates():
    model = _random_gates(fbs.gated(_resnet8(), 0.5), bias=-1.5).eval()  # many saliencies at 0
    x = torch.randn(6, 3, 32, 32)
    f = fbs.flops_per_image(model, x)
    blk = model.layer1[0]
    p1, p2 = [], []
    h1 = blk.gate1.register_forward_hook(lambda m, i, o: p1.append(o))
    h2 = blk.gate2.register_forward_hook(lambda m, i, o: p2.append(o))
    with torch.no_grad():
        model(x)
    h1.remove(), h2.remove()
    n1, n2 = (p1[0] > 0).sum(1), (p2[0] > 0).sum(1)
    assert (n1 <= 8).all() and (n2 <= 8).all() and (n1 < 8).any()  # ReLU zeros among the winners are skipped
    assert f["active"]["layer1.0.gate1"] == pytest.approx(n1.double().mean().item())
    assert f["total"].unique().numel() > 1  # the work depends on the image


def test_the_sliced_network_computes_the_masked_one():
    model = _random_gates(fbs.gated(_resnet8(), 0.5)).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        masked = model(x)
        sliced = fbs.Sliced(model)(x)
    assert torch.allclose(sliced, masked, atol=1e-4, rtol=1e-4)
    # at a density where some gates keep a single channel, and with winners at 0 (skipped too)
    fbs.set_density(model, 0.1)
    zeros = _random_gates(fbs.gated(_resnet8(), 0.5), bias=-1.5).eval()
    with torch.no_grad():
        assert torch.allclose(fbs.Sliced(model)(x), model(x), atol=1e-4, rtol=1e-4)
        assert torch.allclose(fbs.Sliced(zeros)(x), zeros(x), atol=1e-4, rtol=1e-4)


def test_gates_that_keep_nothing_skip_whole_convs():
    model = fbs.gated(_resnet8(), 0.5).eval()
    model.layer1[0].gate1.fc.bias.data.fill_(-1.0)  # weight 0: g = 0 everywhere, conv1 computes nothing
    model.layer2[0].gate2.fc.bias.data.fill_(-1.0)  # the block adds nothing to its shortcut
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fbs.Sliced(model)(x), model(x), atol=1e-4, rtol=1e-4)
    f = fbs.flops_per_image(model, x)
    assert f["active"]["layer1.0.gate1"] == 0 and f["active"]["layer2.0.gate2"] == 0
    full = fbs.flops_per_image(fbs.gated(_resnet8(), 0.5), x)
    # block 1 loses conv1 (16 x 8 x 9 x 1024) and conv2 (8 x 8 x 9 x 1024); block 2 its conv2 (16 x 16 x 9 x 256)
    assert (full["convs"] - f["convs"]).tolist() == [16 * 8 * 9 * 1024 + 8 * 8 * 9 * 1024 + 16 * 16 * 9 * 256] * 3


def test_penalty_is_the_l1_of_the_last_saliencies():
    model = _random_gates(fbs.gated(_resnet8(), 0.5)).train()
    model(torch.randn(4, 3, 32, 32))
    expected = sum(g.saliency.abs().sum(1).mean() for g in fbs.gates(model))
    assert fbs.penalty(1e-3)(model).item() == pytest.approx(1e-3 * expected.item())
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # the gates learn through the winners
    assert fbs.gates(model)[0].fc.weight.grad.abs().sum() > 0
