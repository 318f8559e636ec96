"""The library as inference code calls it: every criterion, the masks and the surgery work inside
``torch.no_grad()``, on an eval-mode model and on a frozen one (``requires_grad`` off), give what they give
in the plain setting, and leave the caller's model as it was (mode, ``requires_grad`` flags, weights, BN
statistics)."""
import contextlib

import pytest
import torch
import torch.nn as nn

from reprolib import criteria, masks, surgery
from reprolib.criteria import gradient_outlier as go
from reprolib.criteria import thinet
from reprolib.criteria.channels import internal_layers
from reprolib.models import create
from reprolib.models.vgg import VGG
from reprolib.surgery import vgg as vgg_surgery

CONDITIONS = ["no_grad", "eval", "frozen", "no_grad+eval+frozen"]


def random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics and affine terms away from the identity, so that train-mode and eval-mode BN differ."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data = torch.rand(m.num_features, generator=g) * 0.4 + 0.2
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.3
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def resnet():
    torch.manual_seed(0)
    return random_bn(create("resnet20")).train()


def tiny_vgg():
    torch.manual_seed(0)
    return random_bn(VGG((8, "M", 8, "M", 16, "M", 16, "M", 16))).train()


def batches(n=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


def snapshot(model: nn.Module):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_unchanged(model, before):
    modes, flags, state = snapshot(model)
    assert modes == before[0], "the model's train/eval mode changed"
    assert flags == before[1], "the model's requires_grad flags changed"
    assert all(torch.equal(state[k], before[2][k]) for k in state), "the model's weights or BN statistics changed"


def under(model: nn.Module, condition: str):
    """Put ``model`` in ``condition`` (eval / frozen) and return the context to call the library in (no_grad)."""
    if "eval" in condition:
        model.eval()
    if "frozen" in condition:
        model.requires_grad_(False)
    return torch.no_grad() if "no_grad" in condition else contextlib.nullcontext()


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("name", criteria.available())
def test_every_criterion_and_its_masks_work_under_no_grad_eval_and_frozen(name, condition):
    # input-channel criteria (lasso, kse, dcp) score only the filters that feed exactly one conv
    net = resnet()
    layers = (internal_layers(net) if getattr(criteria.get(name), "input_channels", False) else masks.conv_layers(net))[:3]
    expected = criteria.get(name)(resnet(), layers, batches())
    model = resnet()
    ctx = under(model, condition)
    before = snapshot(model)
    with ctx:
        scores = criteria.get(name)(model, layers, batches())
        keep = (masks.from_scores(scores, 0.5) if criteria.LEVELS[name] == "filter"
                else masks.weight_masks(scores, 0.5))
    assert_unchanged(model, before)
    for n in layers:
        torch.testing.assert_close(scores[n], expected[n])
    ref = (masks.from_scores(expected, 0.5) if criteria.LEVELS[name] == "filter" else masks.weight_masks(expected, 0.5))
    assert all(torch.equal(keep[n], ref[n]) for n in layers)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_shrink_under_no_grad_equals_the_masked_model(condition):
    model = resnet()
    keep = masks.from_scores(criteria.get("l1norm")(model, masks.conv_layers(model)), 0.4)
    ctx = under(model, condition)
    before = snapshot(model)
    with ctx:
        small = surgery.shrink(model, keep)
        masked = surgery.apply_masks(model, keep)
    assert_unchanged(model, before)
    # the shrunk network comes in the model's mode, every module of it (no .eval() needed before use)
    assert all(m.training == model.training for m in small.modules())
    assert all(p.requires_grad == ("frozen" not in condition) for p in small.parameters())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # equal in eval mode, which an eval-mode caller's shrunk network is already in
        torch.testing.assert_close(small.eval()(x) if model.training else small(x), masked.eval()(x),
                                   rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("condition", CONDITIONS)
def test_thinet_and_gradient_outlier_pruning_work_under_no_grad_eval_and_frozen(condition):
    """The two in-place pruners (ThiNet's samples + surgery, the gradient-outlier step) pick the same filters as
    in the plain setting, and the pruned model keeps the caller's mode and frozen flags."""
    data = batches(4, 16, seed=3)

    def prune(model):
        thinet.thinet_prune(model, [x for x, _ in data], 0.5, n_samples=400)
        go.prune_step(model, data, 0.7, n_batches=4, max_rounds=3)
        return {n: model.get_submodule(n).out_channels for n in vgg_surgery.conv_names(model)}

    expected = prune(tiny_vgg())
    model = tiny_vgg()
    with under(model, condition):
        got = prune(model)
    dense = tiny_vgg()
    assert got == expected and any(got[n] < dense.get_submodule(n).out_channels for n in got)
    assert all(m.training == ("eval" not in condition) for m in model.modules())
    assert all(p.requires_grad == ("frozen" not in condition) for p in model.parameters())
