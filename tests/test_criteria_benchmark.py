"""Criteria benchmark: the equal-FLOPs search, global normalisation, layer pruning, APoZ trimming."""
import pytest
import torch
import torch.nn as nn

from reprolib import criteria, data, surgery, train
from reprolib.experiments import criteria_benchmark as cb
from reprolib.counting import count
from reprolib.masks import conv_layers
from reprolib.models import create


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = create("resnet20").eval()
    for m in model.modules():  # non-trivial BN statistics and gammas
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.2, 1.0)
            m.running_var.data.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_flops_search_lands_on_the_closest_reachable_reduction(resnet20, scope):
    scores = criteria.get("l1norm")(resnet20, conv_layers(resnet20))
    found = cb.search_rate(resnet20, scores, 0.5, scope)
    dense = count(resnet20, cb.CIFAR)["flops"]
    small = cb.shrunk_at(resnet20, scores, found["rate"], scope)[1]
    assert found["flops_reduction"] == pytest.approx(1 - count(small, cb.CIFAR)["flops"] / dense)
    assert abs(found["flops_reduction"] - 0.5) < (0.01 if scope == "global" else 0.04)
    rates = cb.candidate_rates(scores, scope)  # no neighbouring candidate is closer
    i = rates.index(found["rate"])
    for j in (i - 1, i + 1):
        other = 1 - count(cb.shrunk_at(resnet20, scores, rates[j], scope)[1], cb.CIFAR)["flops"] / dense
        assert abs(other - 0.5) >= abs(found["flops_reduction"] - 0.5)
    assert found["evaluations"] <= 16  # a binary search, not a scan


def test_unreachable_targets_are_refused(resnet20):
    scores = criteria.get("l1norm")(resnet20, ["conv1"])  # only the stem: a small share of the FLOPs
    with pytest.raises(ValueError, match="cannot remove 90% of the FLOPs"):
        cb.search_rate(resnet20, scores, 0.9, "uniform")
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        cb.search_rate(resnet20, scores, 1.0, "uniform")


def test_candidate_rates_hit_every_filter_count():
    scores = {"a": torch.rand(4), "b": torch.rand(8)}
    rates = cb.candidate_rates(scores, "uniform")
    assert len(rates) == 8  # k/8 for k = 0..7 covers k/4
    for r in rates:
        m = cb.masks_at(scores, r, "uniform")
        assert (~m["b"]).sum() == round(r * 8 - 1e-6) and (~m["a"]).sum() == int(4 * r)
    g = cb.candidate_rates(scores, "global")
    assert len(g) == 11  # 0 .. 12 - 2 filters (each layer keeps one)
    assert [int((~torch.cat(list(cb.masks_at(scores, r, "global").values()))).sum()) for r in g] == list(range(11))
    with pytest.raises(ValueError, match="unknown scope"):
        cb.candidate_rates(scores, "local")


def test_global_ranking_does_not_depend_on_each_layers_scale():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(16, generator=g), "b": torch.rand(32, generator=g)}
    scaled = {"a": scores["a"] * 1000, "b": scores["b"] * 1e-3}
    for rate in (0.2, 0.5, 0.8):
        m1, m2 = cb.masks_at(scores, rate, "global"), cb.masks_at(scaled, rate, "global")
        assert all(torch.equal(m1[n], m2[n]) for n in scores)
    assert all(torch.isclose(s.mean(), torch.tensor(1.0, dtype=s.dtype)) for s in cb.normalise(scores).values())


# --------------------------------------------------------------------------- layer pruning

def _block_params(model, names):
    return sum(p.numel() for b in names for part in ("conv1", "bn1", "conv2", "bn2")
               for p in getattr(model.get_submodule(b), part).parameters())


def test_removing_blocks_removes_exactly_their_parameters(resnet20):
    gone = ["layer1.1", "layer3.1"]
    small = cb.without_blocks(resnet20, gone)
    assert count(small, cb.CIFAR)["params"] == count(resnet20, cb.CIFAR)["params"] - _block_params(resnet20, gone)
    # A downsampling block leaves only its shortcut's zero-padded channels at the next block's input: the
    # next conv's weights on them multiply zeros and go too (16 of layer2.1.conv1's 32 input channels).
    small = cb.without_blocks(resnet20, ["layer2.0"])
    extra = 32 * 16 * 9
    assert count(small, cb.CIFAR)["params"] == count(resnet20, cb.CIFAR)["params"] - _block_params(resnet20, ["layer2.0"]) - extra


def test_a_network_without_blocks_equals_the_masked_one_and_the_skipped_one(resnet20):
    gone = ["layer1.1", "layer2.0"]  # layer2.0 downsamples: its option-A shortcut carries the data alone
    small = cb.without_blocks(resnet20, gone)
    masked = surgery.apply_masks(resnet20, cb.block_masks(resnet20, gone))
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        out_small, out_masked = small.eval()(x), masked.eval()(x)
        # the same function as skipping the blocks by hand: each becomes relu(shortcut(x))
        for b in gone:
            resnet20.get_submodule(b).forward = lambda t, blk=resnet20.get_submodule(b): blk.relu2(blk.shortcut(t))
        try:
            out_skip = resnet20(x)
        finally:
            for b in gone:
                del resnet20.get_submodule(b).forward
    assert (out_small - out_masked).abs().max() < 1e-4 and (out_small - out_skip).abs().max() < 1e-4
    train.fit(small, data.synthetic_cifar10(32, 16), epochs=1, lr=0.01, batch_size=16, bf16=False)  # trains


def test_blocks_are_ranked_by_their_last_bn_gamma(resnet20):
    model = create("resnet20")
    names = cb.blocks(model)
    assert len(names) == 9 and names[0] == "layer1.0"
    for i, n in enumerate(names):
        model.get_submodule(n).bn2.weight.data.fill_(1.0 + i)
    model.layer3[1].bn2.weight.data.fill_(0.01)
    model.layer1[2].bn2.weight.data.fill_(-0.02)  # magnitude counts
    assert cb.removed_blocks(model, "bn_gamma", 2) == ["layer1.2", "layer3.1"]
    r3, r5 = cb.removed_blocks(model, "random", 3, seed=1), cb.removed_blocks(model, "random", 5, seed=1)
    assert set(r3) < set(r5)  # nested
    with pytest.raises(ValueError, match="choose 1 to 8"):
        cb.removed_blocks(model, "bn_gamma", 9)
    with pytest.raises(ValueError, match="unknown layer-pruning method"):
        cb.removed_blocks(model, "l1norm", 1)
    with pytest.raises(ValueError, match="no residual blocks"):
        cb.blocks(create("vgg16"))


# --------------------------------------------------------------------------- APoZ trimming

def test_trim_drops_neurons_one_std_above_the_mean_apoz_and_keeps_pruned_ones_out():
    apoz = torch.tensor([0.1, 0.2, 0.1, 0.2, 0.95, 0.15])
    masks = {"l": torch.tensor([True, True, True, True, True, False])}
    keep = cb.trim({"l": 1 - apoz}, masks, std_factor=1.0)["l"]
    assert keep.tolist() == [True, True, True, True, False, False]
    dead = cb.trim({"l": torch.zeros(3)}, {"l": torch.ones(3, dtype=torch.bool)}, 1.0)["l"]
    assert dead.sum() >= 1
    half_dead = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])  # mean + std > 1: the never-active ones go anyway
    assert cb.trim({"l": 1 - half_dead}, {"l": torch.ones(6, dtype=torch.bool)}, 1.0)["l"].tolist() == [True, False] * 3


def test_trim_layers_of_vgg16_are_its_last_conv_block_and_hidden_fc():
    vgg = create("vgg16")
    layers = cb.trim_layers(vgg)
    assert [type(vgg.get_submodule(n)).__name__ for n in layers] == ["Conv2d"] * 3 + ["Linear"]
    assert vgg.get_submodule(layers[-1]).out_features == 512 and layers[2] == conv_layers(vgg)[-1]


def test_curve_test_says_what_the_curves_and_the_reported_accuracy_are_measured_on():
    d = data.synthetic_cifar10(64, 1500)
    assert cb.curve_test(d, {"bf16": True}) == {"test_images": cb.CURVE_TEST, "precision": "bf16",
                                                "reported_test_acc": "all 1,500 test images, fp32"}
    small = data.synthetic_cifar10(64, 300)
    assert cb.curve_test(small, {"bf16": False})["test_images"] == 300
    assert cb.curve_test(small, {"bf16": False})["precision"] == "fp32"


def _uniform_l1_half(name: str):
    """``name`` (seeded) with uniform L1-norm masks searched to remove 50% of its FLOPs, and the shrunk network."""
    torch.manual_seed(0)
    net = create(name).eval()
    scores = criteria.get("l1norm")(net, conv_layers(net))
    found = cb.search_rate(net, scores, 0.5, "uniform")
    masks, small, true = cb.shrunk_at(net, scores, found["rate"], "uniform")
    assert abs(found["flops_reduction"] - 0.5) < 0.02
    return net, scores, found, masks, small, true


def test_table1_vgg16_search_prunes_every_conv_alike_and_removes_the_target_flops():
    """The VGG-16 row of Shangyu's Table 1: uniform L1-norm masks on a plain chain shrink to int(C * r) fewer
    filters in every conv (no residual stream keeps channels alive), and the FLOPs removed are the target's."""
    vgg, scores, found, masks, small, true = _uniform_l1_half("vgg16")
    widths = {n: m.out_channels for n, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    expected = [len(s) - int(len(s) * found["rate"]) for s in scores.values()]
    assert sorted(widths.values()) == sorted(expected)
    for n, keep in masks.items():  # the kept filters are the largest by L1 norm
        assert scores[n][keep].min() >= scores[n][~keep].max()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(small(x), surgery.apply_masks(vgg, masks)(x), atol=1e-4)


def test_table1_refuses_a_network_without_a_dense_model():
    with pytest.raises(ValueError, match="no dense 'resnet32' for Table 1: choose one of vgg16, resnet110"):
        cb.table1_network("smoke", "resnet32")


def test_resnet110_row_trains_its_own_baseline_with_the_resnet56_recipe_outside_make_book():
    """The ResNet-110 runs start from a ResNet-110 baseline whose config is the ResNet-56 baseline's with only the
    model changed, every fine-tuning names that baseline, and the chapter's all_runs (what make book computes)
    holds none of them."""
    from reprolib import plan
    runs110 = plan.trace(cb.resnet110_runs, "budget")
    bases = [r for r in runs110 if r.experiment == "baseline"]
    assert len(bases) == 1 and bases[0].config["model"] == "resnet110"
    chapter = plan.trace(cb.all_runs, "budget")
    r56 = [r for r in chapter if r.experiment == "baseline"]
    assert len(r56) == 1 and r56[0].config["model"] == "resnet56"
    assert {k: v for k, v in bases[0].config.items() if k != "model"} == \
        {k: v for k, v in r56[0].config.items() if k != "model"}
    fts = [r for r in runs110 if r.config.get("part") == "table1_network"]
    p = cb.PRESETS["budget"]
    assert len(fts) == len(p["targets"]["uniform"]) * len(p["seeds"])
    assert {r.config["dense"] for r in fts} == {bases[0].hash} and {r.config["network"] for r in fts} == {"resnet110"}
    assert not {r.key for r in runs110} & {r.key for r in chapter}


def test_table1_resnet110_uniform_l1_masks_shrink_to_the_target_flops():
    """ResNet-110 at a uniform 50%: every block-internal conv keeps its int(C * r) largest-L1 filters, the
    stem and the residual stream keep their widths, and the shrunk network removes the target's FLOPs."""
    net, scores, found, masks, small, true = _uniform_l1_half("resnet110")
    assert abs(1 - true["flops"] / count(net, (1, 3, 32, 32))["flops"] - found["flops_reduction"]) < 1e-9
    internal = [n for n in scores if n.startswith("layer") and n.endswith(".conv1")]
    assert len(internal) == 54
    for n in internal:
        c = len(scores[n])
        assert int(masks[n].sum()) == c - int(c * found["rate"])
        assert small.get_submodule(n).out_channels == c - int(c * found["rate"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(small(x), surgery.apply_masks(net, masks)(x), atol=1e-4)
