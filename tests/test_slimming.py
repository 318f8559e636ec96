"""Network slimming: held masks stay zero through training; three growing global iterations."""
import pytest
import torch

from reprolib import data, masks as masks_mod, slimming, surgery, train
from reprolib.models import create


def tiny_data():
    return data.synthetic_cifar10(n_train=64, n_test=32)


def test_held_masks_stay_exactly_zero_while_training():
    torch.manual_seed(0)
    model = create("resnet20")
    keep = torch.ones(16, dtype=torch.bool)
    keep[[2, 7]] = False
    masks = {"layer1.0.conv1": keep}
    model.load_state_dict(surgery.apply_masks(model, masks).state_dict())
    hooks = surgery.hold_masks(model, masks)
    train.fit(model, tiny_data(), epochs=1, lr=0.1, batch_size=16, weight_decay=5e-4, nesterov=True, bf16=False)
    for h in hooks:
        h.remove()
    conv, bn = model.layer1[0].conv1, model.layer1[0].bn1
    assert conv.weight[~keep].abs().max() == 0 and bn.weight[~keep].abs().max() == 0 and bn.bias[~keep].abs().max() == 0
    assert conv.weight[keep].abs().min() > 0  # the others trained


def test_without_holding_the_zeros_regrow():
    torch.manual_seed(0)
    model = create("resnet20")
    keep = torch.ones(16, dtype=torch.bool)
    keep[[2, 7]] = False
    model.load_state_dict(surgery.apply_masks(model, {"layer1.0.conv2": keep}).state_dict())
    train.fit(model, tiny_data(), epochs=1, lr=0.1, batch_size=16, bf16=False)
    # A block's last BN feeds the residual addition, not a ReLU: its shift gets a gradient and regrows.
    # (Before a ReLU, a zeroed filter is a fixed point of SGD: relu'(0) = 0.)
    assert model.layer1[0].bn2.bias[~keep].abs().max() > 0


def test_slimming_prunes_a_growing_global_share_and_keeps_it_pruned():
    torch.manual_seed(0)
    model = create("resnet20")
    masks, history = slimming.prune(model, tiny_data(), 0.45, iterations=3, lam=1e-4, epochs=1, lr=0.05,
                                    batch_size=32, bf16=False)
    assert [round(h["rate"], 2) for h in history] == [0.15, 0.3, 0.45]
    assert abs(masks_mod.sparsity(masks) - 0.45) < 0.01  # global: the share over all 19 convs
    for name, keep in masks.items():
        assert model.get_submodule(name).weight[~keep].abs().sum() == 0
    small = surgery.shrink(model, masks)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (small.eval()(x) - model.eval()(x)).abs().max() < 1e-4


def test_l1_penalty_moves_every_gamma_by_lr_lam_sign_in_one_step():
    # Liu et al.'s subgradient step: with no data loss, one SGD step moves each penalised gamma by exactly
    # lr * lam * sign(gamma), whatever its size. A smooth-L1 (beta 1) or an L2 moves it by lr * lam * gamma
    # for |gamma| < 1 and fails; gammas of BNs after other layers must not move.
    model = create("resnet20")
    gamma = torch.tensor([0.9, -0.4, 0.05, -0.003, 0.0, 2.5, -1.7, 0.3] * 2)
    model.layer1[0].bn1.weight.data.copy_(gamma)
    other = model.layer1[0].bn2.weight.detach().clone()
    lam, lr = 0.01, 0.5
    pen = slimming.bn_penalty(model, ["layer1.0.conv1"], lam=lam)
    assert torch.isclose(pen(model), lam * gamma.abs().sum())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    pen(model).backward()
    opt.step()
    step = model.layer1[0].bn1.weight.detach() - gamma
    assert torch.allclose(step, -lr * lam * torch.sign(gamma), atol=1e-6, rtol=0)  # float32 rounding
    assert torch.equal(model.layer1[0].bn2.weight.detach(), other)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        slimming.bn_penalty(model, ["conv1"], lam=-1.0)


def test_gamma_histogram_counts_every_gamma_in_log_bins():
    model = create("resnet20")
    layers = ["conv1", "layer1.0.conv1"]  # 16 + 16 gammas
    model.bn1.weight.data.copy_(torch.tensor([0.0, 5e-5, 2e-4, 2e-3] * 4))
    model.layer1[0].bn1.weight.data.copy_(torch.tensor([-0.02, 0.2, 0.7, -3.0] * 4))
    h = slimming.gamma_histogram(model, layers)
    assert h["n"] == 32 and sum(h["counts"]) == 32
    assert h["edges"][0] == 0 and h["edges"][1] == 1e-4 and h["edges"][-1] >= 3.0 and len(h["counts"]) == len(h["edges"]) - 1
    assert h["counts"][0] == 8  # 0 and 5e-5 fall in [0, 1e-4)
    assert h["share_below"] == {"0.001": 0.375, "0.01": 0.5, "0.05": 0.625}
    assert sorted(h["counts"], reverse=True)[:1] == [8] and max(h["counts"][1:]) == 4  # 4 per other value


def test_sparsity_training_shrinks_the_gammas_that_the_penalty_covers():
    def median_gamma(lam):
        torch.manual_seed(0)
        model = create("resnet20")
        slimming.sparsify(model, tiny_data(), lam, epochs=1, lr=0.05, schedule="constant", batch_size=16, bf16=False)
        return slimming.gamma_histogram(model, masks_mod.conv_layers(model))["median"]
    # 4 steps at lr 0.05, momentum 0.9: an L1 of 1.0 pulls each gamma down by ~0.45 (from 1 at initialisation)
    assert median_gamma(1.0) < median_gamma(0.0) - 0.3
