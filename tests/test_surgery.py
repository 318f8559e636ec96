"""surgery: masks -> really smaller networks that compute exactly what the masked ones compute."""
import json

import pytest
import torch
import torch.nn as nn

from reprolib import surgery
from reprolib.counting import count
from reprolib.models import create

SIZES = {"resnet20": (1, 3, 32, 32), "resnet56": (1, 3, 32, 32), "vgg16": (1, 3, 32, 32),
         "resnet50": (1, 3, 32, 32)}


def trained_looking(name: str, seed: int = 0) -> nn.Module:
    """A model with random BN statistics and affine terms (fresh BNs are the identity, which would hide
    bugs where a pruned channel's BN shift leaks through)."""
    torch.manual_seed(seed)
    m = create(name)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.weight.data.uniform_(0.2, 0.6)
            mod.bias.data.normal_(0, 0.3)
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def layers(model, skip_last=True):
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return names[:-1] if skip_last else names  # the classifier keeps its classes


def random_masks(model, density, seed=1, names=None):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(model.get_submodule(n).weight.shape[0], generator=g) < density
            for n in (names or layers(model))}


def max_diff(a, b, size, seed=2):
    x = torch.randn((3,) + tuple(size[1:]), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert ya.shape == yb.shape
    return (ya - yb).abs().max().item(), ya.abs().max().item()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet56", "resnet20", "vgg16", "resnet50"])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.6, 0.95])
def test_shrunk_equals_masked(name, density):
    model = trained_looking(name)
    masks = random_masks(model, density)
    small = surgery.shrink(model, masks, SIZES[name])
    diff, scale = max_diff(small, surgery.apply_masks(model, masks), SIZES[name])
    assert scale < 1e3  # outputs of a sane size, so that 1e-4 is a meaningful tolerance
    assert diff <= 1e-4, f"{name} at density {density}: max abs difference {diff:.2e}"
    assert count(small, SIZES[name])["params"] < count(model, SIZES[name])["params"]


def test_masked_network_differs_from_dense():
    """The equivalence above is not vacuous: masking really changes the function."""
    model = trained_looking("resnet20")
    diff, _ = max_diff(model, surgery.apply_masks(model, random_masks(model, 0.5)), SIZES["resnet20"])
    assert diff > 1e-2


def test_no_masks_changes_nothing_and_option_a_padding_goes():
    model = trained_looking("resnet56")
    small = surgery.shrink(model, {})
    assert max_diff(small, model, SIZES["resnet56"])[0] <= 1e-5
    assert n_params(small) == n_params(model)
    # The zero channels of the option-A shortcut are never used: the padding became an IndexAdd.
    code = small.code
    assert "pad" not in code and "IndexAdd" in {type(m).__name__ for m in small.modules()}


def test_pruning_the_residual_stream_uses_indexation_addition():
    model = trained_looking("resnet20")
    keep = torch.ones(16, dtype=torch.bool)
    keep[[1, 5, 9]] = False
    small = surgery.shrink(model, {"layer1.1.conv2": keep})
    add = small.get_submodule("surgery_add_1")
    assert isinstance(add, surgery.IndexAdd) and add.n == 16 and add.n_a == 13
    assert add.pos_a.tolist() == [i for i in range(16) if i not in (1, 5, 9)]
    assert small.get_submodule("layer1.1.conv2").out_channels == 13
    assert max_diff(small, surgery.apply_masks(model, {"layer1.1.conv2": keep}), SIZES["resnet20"])[0] <= 1e-5


def test_index_add_is_equation_1():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    # c has 4 channels: a fills 0, 1, 3; b fills 1, 2 (its channel 0 -> 1, channel 1 -> 2).
    op = surgery.IndexAdd(4, 3, [0, 1, 2], [0, 1, 3], 2, [0, 1], [1, 2])
    c = op(a, b)
    want = torch.zeros(2, 4, 4, 4)
    want[:, [0, 1, 3]] += a
    want[:, [1, 2]] += b
    assert torch.equal(c, want)


def test_emptied_branch_reduces_block_to_its_shortcut():
    model = trained_looking("resnet56")
    masks = {"layer1.3.conv1": torch.zeros(16, dtype=torch.bool), "layer2.4.conv2": torch.zeros(32, dtype=torch.bool),
             "layer3.0.conv1": torch.zeros(64, dtype=torch.bool)}
    small = surgery.shrink(model, masks)
    masked = surgery.apply_masks(model, masks)
    assert max_diff(small, masked, SIZES["resnet56"])[0] <= 1e-4
    names = dict(small.named_modules())
    assert "layer1.3.conv1" not in names and "layer1.3.conv2" not in names  # the whole branch is gone
    # layer3.0's branch starts from nothing but its BN shifts: a constant map, not a convolution.
    assert any(isinstance(m, surgery.ConstantMap) for m in small.modules())


def test_emptied_layer_of_a_chain_network():
    model = trained_looking("vgg16")
    masks = {"features.7": torch.zeros(128, dtype=torch.bool)}  # the 3rd conv: nothing passes it
    small = surgery.shrink(model, masks)
    assert max_diff(small, surgery.apply_masks(model, masks), SIZES["vgg16"])[0] <= 1e-4
    names = dict(small.named_modules())
    assert not {"features.0", "features.3", "features.7"} & set(names)  # disconnected: gone
    # The next conv sees only zeros: what is left of it is its bias, a constant map (then BN, ReLU, ...).
    assert isinstance(names["surgery_features_10"], surgery.ConstantMap)


def test_paper_mode_weight_masks_match_the_shrunk_layers():
    """exact=False is Algorithm 1 as printed: the kept weights m' (non-zero gradients of the masks) are
    exactly the weights of the shrunk layers."""
    model = trained_looking("resnet20")
    masks = random_masks(model, 0.4, seed=3)
    small = surgery.shrink(model, masks, exact=False)
    modules = dict(small.named_modules())
    for name, m_prime in small.liveness.weight_masks.items():
        kept = int(m_prime.sum())
        have = modules[name].weight.numel() if name in modules else 0
        assert kept == have, name


def test_save_and_load_rebuilds_from_a_description(tmp_path):
    model = trained_looking("resnet56")
    masks = random_masks(model, 0.4, seed=4)
    small = surgery.shrink(model, masks)
    surgery.save(small, tmp_path / "net.pt")
    desc = json.loads((tmp_path / "net.arch.json").read_text())
    assert desc["model"] == "resnet56" and set(desc) >= {"keep", "input_size", "format"}
    state = torch.load(tmp_path / "net.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded = surgery.load(tmp_path / "net.pt")
    assert max_diff(loaded, small, SIZES["resnet56"])[0] == 0.0
    assert n_params(loaded) == n_params(small)


def test_bad_masks_are_refused_with_a_reason():
    model = create("resnet20")
    with pytest.raises(ValueError, match="no such module"):
        surgery.shrink(model, {"layer9.conv1": torch.ones(16, dtype=torch.bool)})
    with pytest.raises(ValueError, match="has 15 entries but the layer has 16"):
        surgery.shrink(model, {"layer1.0.conv1": torch.ones(15, dtype=torch.bool)})
    with pytest.raises(ValueError, match="boolean"):
        surgery.shrink(model, {"layer1.0.conv1": torch.ones(16)})
    with pytest.raises(ValueError, match="not BatchNorm2d"):
        surgery.shrink(model, {"layer1.0.bn1": torch.ones(16, dtype=torch.bool)})


def test_unsupported_operation_is_named():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.sigmoid(self.conv(x))

    with pytest.raises(NotImplementedError, match="sigmoid"):
        surgery.shrink(Odd(), {"conv": torch.tensor([True, False, True, True])}, (1, 3, 8, 8))


# Torch-Pruning (test-only dependency) on masks it can express: the same parameter counts.
def _tp_prune(model, masks, size):
    import torch_pruning as tp
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(size))
    for name, keep in masks.items():
        m = model.get_submodule(name)
        fn = tp.prune_conv_out_channels if isinstance(m, nn.Conv2d) else tp.prune_linear_out_channels
        group = dg.get_pruning_group(m, fn, idxs=torch.nonzero(~keep).flatten().tolist())
        assert dg.check_pruning_group(group)
        group.prune()
    return model


# Internal layers only for the ResNets: Torch-Pruning prunes a residual channel in every block at once.
TP_LAYERS = {"resnet56": lambda n: n.startswith("layer") and n.endswith(".conv1"),
             "vgg16": lambda n: True,
             "resnet50": lambda n: n.startswith("layer") and n.endswith((".conv1", ".conv2"))}


@pytest.mark.parametrize("name", sorted(TP_LAYERS))
def test_same_counts_as_torch_pruning(name):
    model = trained_looking(name)
    masks = random_masks(model, 0.5, seed=5, names=[n for n in layers(model) if TP_LAYERS[name](n)])
    for keep in masks.values():
        keep[0] = True  # Torch-Pruning cannot empty a layer
    ours = surgery.shrink(model, masks, SIZES[name])
    theirs = _tp_prune(trained_looking(name), masks, SIZES[name])
    assert n_params(ours) == n_params(theirs) < n_params(model)
    assert count(ours, SIZES[name])["flops"] == count(theirs, SIZES[name])["flops"]
    assert max_diff(ours, theirs, SIZES[name])[0] <= 1e-4


def test_a_block_reduced_to_its_shortcut_trains():
    """The addition of a removed branch must return a new tensor: the in-place ReLU after it would
    otherwise overwrite the previous block's output, which backward still needs."""
    model = create("resnet20")
    masks = {"layer1.1.conv1": torch.zeros(16, dtype=torch.bool), "layer1.1.conv2": torch.zeros(16, dtype=torch.bool)}
    small = surgery.shrink(model, masks).train()
    small(torch.randn(2, 3, 32, 32)).sum().backward()
