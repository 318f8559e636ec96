"""Network slimming: held masks stay zero through training; three growing global iterations."""
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


def test_penalty_is_smooth_l1_of_the_bn_weights():
    model = create("resnet20")
    model.bn1.weight.data.fill_(0.5)
    pen = slimming.bn_penalty(model, ["conv1"], lam=2.0)  # beta 1: 0.5 * 0.5^2 per channel
    assert torch.isclose(pen(model), torch.tensor(2.0 * 16 * 0.125))
