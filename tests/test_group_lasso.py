"""SSL (Wen et al. 2016): the group-lasso penalty, its gradient, the pruning rule and the shrunk network's size."""
import pytest
import torch
import torch.nn as nn

from reprolib import group_lasso as gl, surgery
from reprolib.counting import count
from reprolib.models import create
from reprolib.models.resnet_cifar import ResNetCifar


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.conv2 = nn.Conv2d(4, 5, 3, bias=False)


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(Block())


def test_penalty_gradient_is_lam_times_each_group_over_its_norm():
    # By hand: d/dW of lam * ||W_g|| is lam * W_g / ||W_g||, summed over every group a weight belongs to.
    model = tiny()
    w1, w2 = model[0].conv1.weight, model[0].conv2.weight
    lam = {"filter": 0.3, "channel": 0.7, "depth": 0.2}
    pen = gl.penalty(model, ["0"], lam)(model)
    a1, a2 = w1.detach().double(), w2.detach().double()
    expected = (0.3 * (sum(a1[n].norm() for n in range(4)) + sum(a2[n].norm() for n in range(5)))
                + 0.7 * sum(a2[:, c].norm() for c in range(4))
                + 0.2 * torch.cat([a1.flatten(), a2.flatten()]).norm())
    assert torch.isclose(pen.double(), expected, rtol=1e-6)
    pen.backward()
    depth = torch.cat([a1.flatten(), a2.flatten()]).norm()
    g1 = 0.3 * a1 / a1.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 0.2 * a1 / depth
    g2 = (0.3 * a2 / a2.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
          + 0.7 * a2 / a2.transpose(0, 1).flatten(1).norm(dim=1).view(1, -1, 1, 1) + 0.2 * a2 / depth)
    assert torch.allclose(w1.grad.double(), g1, atol=1e-6)
    assert torch.allclose(w2.grad.double(), g2, atol=1e-6)


def test_a_zero_group_adds_nothing_gets_no_nan_and_is_pruned():
    model = tiny()
    with torch.no_grad():
        model[0].conv1.weight[2] = 0        # conv1's filter 2: internal channel 2
        model[0].conv2.weight[:, 3] = 0     # conv2's channel 3: internal channel 3, from the other side
        model[0].conv2.weight[4] = 0        # conv2's filter 4
    w1 = model[0].conv1.weight.detach()
    pen = gl.penalty(model, ["0"], {"filter": 1.0})(model)
    assert torch.isclose(pen, sum(w1[n].norm() for n in (0, 1, 3)) + sum(model[0].conv2.weight[n].norm()
                                                                          for n in range(4)))
    pen.backward()
    assert torch.isfinite(model[0].conv1.weight.grad).all()
    assert model[0].conv1.weight.grad[2].abs().max() == 0  # the subgradient 0 at 0
    masks = gl.masks(model, ["0"], threshold=1e-6)
    assert masks["0.conv1"].tolist() == [True, True, False, False]
    assert masks["0.conv2"].tolist() == [True, True, True, True, False]


def test_a_branch_below_the_threshold_loses_both_convs():
    model = tiny()
    with torch.no_grad():
        for c in (model[0].conv1, model[0].conv2):
            c.weight.mul_(1e-4)
    with torch.no_grad():
        norms = gl.group_norms(model, ["0"])
    t = 2 * float(norms["depth"]["0"])
    masks = gl.masks(model, ["0"], threshold=t)
    assert not masks["0.conv1"].any() and not masks["0.conv2"].any()
    assert gl.masks(model, ["0"], threshold=float(norms["depth"]["0"]) / 1e6)["0.conv1"].all()


def _expected_counts(model, kept1: dict, kept2: dict):
    """Params and FLOPs of a CIFAR ResNet whose block b keeps kept1[b] internal channels and kept2[b] of
    conv2's filters (a block with kept1 = kept2 = 0 is gone), by the closed form: conv k*k*Cin*Cout (+ Hout*Wout
    for FLOPs), BN 2 per channel, fc in*out + out; the residual stream keeps every channel (only stage-1 conv2
    filters are pruned, whose channels the stem also writes)."""
    params = 3 * 16 * 9 + 2 * 16 + 64 * 10 + 10
    flops = 3 * 16 * 9 * 32 * 32 + 64 * 10 + 10
    for b in gl.residual_blocks(model):
        blk = model.get_submodule(b)
        cin, c, cout = blk.conv1.in_channels, blk.conv1.out_channels, blk.conv2.out_channels
        side = {16: 32, 32: 16, 64: 8}[cout]
        k1, k2 = kept1.get(b, c), kept2.get(b, cout)
        params += cin * k1 * 9 + 2 * k1 + k1 * k2 * 9 + 2 * k2
        flops += (cin * k1 * 9 + k1 * k2 * 9) * side * side
    return params, flops


def test_ssl_masks_shrink_to_a_network_of_independently_counted_size():
    torch.manual_seed(0)
    model = create("resnet20").eval()
    blocks = gl.residual_blocks(model)
    with torch.no_grad():
        model.layer1[0].conv1.weight[[1, 5]] = 0       # filter groups: internal 16 -> 13 with the channel below
        model.layer1[0].conv2.weight[:, 7] = 0         # channel group
        model.layer1[1].conv2.weight[[0, 3]] = 0       # conv2 filter groups (stage 1: the stem writes them too)
        for c in (model.layer2[1].conv1, model.layer2[1].conv2):
            c.weight.zero_()                           # the whole branch (depth group)
        model.layer3[2].conv1.weight[:10] = 0          # internal 64 -> 54
    masks = gl.masks(model, blocks, threshold=1e-3)
    kept1 = {"layer1.0": 13, "layer2.1": 0, "layer3.2": 54}
    kept2 = {"layer1.1": 14, "layer2.1": 0}
    assert {n: int(k.sum()) for n, k in masks.items() if int(k.sum()) != len(k)} == \
        {"layer1.0.conv1": 13, "layer1.1.conv2": 14, "layer2.1.conv1": 0, "layer2.1.conv2": 0, "layer3.2.conv1": 54}
    small = surgery.shrink(model, masks)
    true = count(small, (1, 3, 32, 32))
    assert (true["params"], true["flops"]) == _expected_counts(model, kept1, kept2)
    assert _expected_counts(model, {}, {}) == (count(model, (1, 3, 32, 32))["params"],
                                               count(model, (1, 3, 32, 32))["flops"])


def test_the_flops_threshold_is_the_closest_reachable_one():
    torch.manual_seed(0)
    model = ResNetCifar(8).eval()
    blocks = gl.residual_blocks(model)
    found = gl.threshold_for_flops(model, blocks, 0.4)
    cands = gl.candidate_thresholds(model, blocks)
    i = cands.index(found["threshold"])
    dense = count(model, (1, 3, 32, 32))["flops"]

    def reduction(t):
        return 1 - count(surgery.shrink(model, gl.masks(model, blocks, t)), (1, 3, 32, 32))["flops"] / dense
    assert reduction(cands[i]) == pytest.approx(found["flops_reduction"])
    for j in [j for j in (i - 1, i + 1) if 0 <= j < len(cands)]:  # both neighbours land farther from the target
        assert abs(reduction(cands[j]) - 0.4) >= abs(found["flops_reduction"] - 0.4)
    with pytest.raises(ValueError, match="removes only"):
        gl.threshold_for_flops(model, blocks, 0.9999)


def test_bad_inputs_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="unknown group kinds"):
        gl.penalty(model, ["0"], {"shape": 1.0})
    with pytest.raises(ValueError, match="must be >= 0"):
        gl.penalty(model, ["0"], {"filter": -1.0})
    with pytest.raises(ValueError, match="threshold must be > 0"):
        gl.masks(model, ["0"], 0.0)
    with pytest.raises(ValueError, match="not residual blocks"):
        gl.masks(model, ["1"], 0.1)
    with pytest.raises(ValueError, match="no residual blocks"):
        gl.residual_blocks(nn.Sequential(nn.Conv2d(3, 4, 3)))
