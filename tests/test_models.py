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
