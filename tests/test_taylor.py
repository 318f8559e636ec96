"""The Taylor criterion scores the tensor that pruning removes: the BN output after a conv, not the conv output."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reprolib import criteria, data, surgery
from reprolib.criteria.filters import activations, removed_output
from reprolib.models import create


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (torch.argsort(torch.argsort(v)).double() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def conv_output_scores(model, layers, batches) -> dict:
    """The old placement, for comparison: per-example |mean of a * dL/da| at the conv output, before its BN."""
    sums, n = {l: 0 for l in layers}, 0
    for logits, y, acts in activations(model, {l: model.get_submodule(l) for l in layers}, batches, grad=True):
        grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), list(acts.values()))
        for (l, a), g in zip(acts.items(), grads):
            sums[l] = sums[l] + (a * g).detach().flatten(2).mean(2).abs().sum(0)
        n += len(y)
    return {l: s / n for l, s in sums.items()}


def calibrated(model: nn.Module, d, seed: int = 0) -> nn.Module:
    """``model`` with random BN scales and shifts and running statistics measured on ``d``'s training images,
    so that a BN's output differs from its input (with fresh BN layers the two coincide)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
            with torch.no_grad():
                m.weight.copy_(0.2 + 1.3 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
    model.train()
    with torch.no_grad():
        for xb, _ in data.batches(d.train_x, d.train_y, 64):
            model(xb)
    return model.eval()


def test_the_removed_tensor_is_the_bn_output_when_a_bn_follows():
    m = create("resnet20")
    assert removed_output(m, ["conv1", "layer1.0.conv2", "layer3.2.conv1", "fc"]) == {
        "conv1": "bn1", "layer1.0.conv2": "layer1.0.bn2", "layer3.2.conv1": "layer3.2.bn1", "fc": "fc"}

    class TwoUsers(nn.Module):  # the conv output goes to a BN and, unnormalised, to the sum
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            a = self.conv(x)
            return (self.bn(a) + a).mean((2, 3))

    with pytest.raises(ValueError, match="'conv' feeds a BatchNorm and also"):
        criteria.get("taylor")(TwoUsers(), ["conv"], [(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))])


def test_a_bn_that_absorbs_a_rescaled_and_shifted_input_leaves_the_scores_unchanged():
    # conv -> BN -> ReLU -> conv -> BN -> ReLU -> pool -> fc. Scale filter k of the first conv by c_k, shift it
    # by d_k, and adjust that BN's running statistics: the BN output, the network and the cost of removing
    # the filter are unchanged, so its score must be. The conv output does change: scored there, it differs.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 10))
    d = data.synthetic_cifar10(128, 8)
    net = calibrated(net, d)
    batches = list(data.batches(d.train_x[:48], d.train_y[:48], 16))
    x = batches[0][0]
    before, out_before = criteria.get("taylor")(net, ["0", "3"], batches), net(x).detach()
    pre_before = conv_output_scores(net, ["0"], batches)["0"]

    c, d = torch.linspace(0.3, 3.0, 6), torch.linspace(-2.0, 2.0, 6)
    conv, bn = net[0], net[1]
    with torch.no_grad():
        conv.weight.mul_(c.view(-1, 1, 1, 1))
        conv.bias.copy_(c * conv.bias + d)
        bn.running_mean.copy_(c * bn.running_mean + d)
        bn.running_var.copy_(c ** 2 * (bn.running_var + bn.eps) - bn.eps)
    assert torch.allclose(net(x), out_before, atol=1e-5)  # the same network

    after = criteria.get("taylor")(net, ["0", "3"], batches)
    for layer in ("0", "3"):
        assert torch.allclose(after[layer], before[layer], rtol=1e-4, atol=1e-7)
    pre_after = conv_output_scores(net, ["0"], batches)["0"]
    assert not torch.allclose(pre_after, pre_before, rtol=0.05)  # the pre-BN placement fails this test


def test_scores_track_the_loss_change_of_removing_each_filter():
    # Brute force: remove each filter as pruning does (apply_masks: the filter and its BN's scale and shift),
    # measure each image's loss change, average |change| over the images (what the per-example score
    # approximates to first order). The BN-output score must rank filters like it; the conv-output one does not.
    torch.manual_seed(0)
    d = data.synthetic_cifar10(256, 8)
    model = calibrated(create("resnet20"), d)
    x, y = next(data.batches(d.train_x[:64], d.train_y[:64], 64))
    layers = ["layer1.0.conv1", "layer1.0.conv2", "layer2.1.conv1", "layer3.2.conv2"]
    ours, conv_out = criteria.get("taylor")(model, layers, [(x, y)]), conv_output_scores(model, layers, [(x, y)])
    with torch.no_grad():
        base = F.cross_entropy(model(x), y, reduction="none")
    rho_ours, rho_conv = [], []
    for layer in layers:
        width = model.get_submodule(layer).out_channels
        change = []
        for k in range(width):
            keep = torch.ones(width, dtype=torch.bool)
            keep[k] = False
            with torch.no_grad():
                pruned = surgery.apply_masks(model, {layer: keep}).eval()
                change.append((F.cross_entropy(pruned(x), y, reduction="none") - base).abs().mean())
        change = torch.stack(change)
        rho_ours.append(spearman(ours[layer], change))
        rho_conv.append(spearman(conv_out[layer], change))
    assert min(rho_ours) > 0.8, rho_ours  # measured 0.88-0.99
    assert sum(rho_ours) / 4 > sum(rho_conv) / 4 + 0.3, (rho_ours, rho_conv)  # conv output: 0.12-0.75
