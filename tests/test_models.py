import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reprolib.models import available, create
from reprolib.models.resnet_cifar import PadShortcut


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'resnet57'.*resnet56"):
        create("resnet57")


@pytest.mark.parametrize("name,convs,params", [
    ("resnet20", 19, 269_722), ("resnet56", 55, 853_018), ("resnet110", 109, 1_727_962),
    ("vgg16", 13, 14_991_946)])
def test_cifar_models_have_the_published_layout(name, convs, params):
    m = create(name)
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == convs
    assert sum(p.numel() for p in m.parameters()) == params
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_lenets_and_resnet50_run():
    assert create("lenet300")(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert create("lenet5")(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in create("resnet50").parameters()) == 25_557_032
    assert set(available()) >= {"resnet20", "resnet32", "resnet56", "resnet110", "vgg16", "lenet300", "lenet5", "resnet50"}


def test_option_a_shortcut_is_hranks_padding():
    x = torch.randn(2, 16, 32, 32)
    y = PadShortcut(32)(x)
    assert torch.equal(y, F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))
    assert y.shape == (2, 32, 16, 16) and y[:, :8].abs().sum() == 0 and torch.equal(y[:, 8:24], x[:, :, ::2, ::2])


def test_resnet56_stage_boundaries_use_the_padding_shortcut():
    m = create("resnet56")
    assert isinstance(m.layer2[0].shortcut, PadShortcut) and isinstance(m.layer3[0].shortcut, PadShortcut)
    assert isinstance(m.layer1[0].shortcut, nn.Identity) and isinstance(m.layer2[1].shortcut, nn.Identity)
    assert len(m.layer1) == len(m.layer2) == len(m.layer3) == 9


def _bn2_grads_after_sgd(model, steps=3):
    """Every block's (bn2 weight grad, bn2 bias grad) after ``steps`` SGD steps on random images."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return [(m.bn2.weight.grad, m.bn2.bias.grad) for m in model.modules() if hasattr(m, "bn2")]


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet56", "resnet110"])
def test_every_residual_channel_trains(name):
    """Every block's bn2 channel gets a gradient: none is dead from initialisation."""
    torch.manual_seed(0)
    for gw, gb in _bn2_grads_after_sgd(create(name).train()):
        assert ((gw != 0) | (gb != 0)).all()


def test_zero_init_residual_kills_the_zero_padded_channels():
    """The guard above fails on the old definition: with the option-A shortcut, zero-initialised bn2
    weights leave the padded channels at exactly 0 on both paths, so they never get a gradient."""
    torch.manual_seed(0)
    grads = _bn2_grads_after_sgd(create("resnet56", zero_init_residual=True).train())
    dead = sum(int(((gw == 0) & (gb == 0)).sum()) for gw, gb in grads)
    assert dead == 576  # 16 of 32 in each of 9 stage-2 blocks, 48 of 64 in each of 9 stage-3 blocks


def test_no_committed_resnet_baseline_has_dead_residual_channels():
    """The weights of every committed CIFAR ResNet baseline: no bn2 channel with weight and bias both 0."""
    import json
    from pathlib import Path
    base = Path(__file__).resolve().parent.parent / "data" / "results" / "baseline"
    checked = 0
    for rec in map(json.loads, map(Path.read_text, sorted(base.glob("*.json")))):
        if not rec["config"]["model"].startswith("resnet"):
            continue
        state = torch.load(base / rec["weights"], weights_only=True)
        for k in state:
            if k.endswith("bn2.weight"):
                dead = (state[k] == 0) & (state[k.replace("weight", "bias")] == 0)
                assert not dead.any(), f"{rec['hash']}: {int(dead.sum())} dead channels in {k[:-7]}"
        checked += 1
    assert checked >= 1, "no ResNet baseline is committed"
