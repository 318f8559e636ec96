"""ThiNet (selection, samples, scaling, surgery) and the document's gradient-outlier method, on tiny
VGG-style networks: a few seconds in all."""
import copy

import pytest
import torch
import torch.nn.functional as F

from reprolib import criteria, train
from reprolib.criteria import gradient_outlier as go
from reprolib.criteria import thinet
from reprolib.surgery import vgg as vgg_surgery
from reprolib.data import synthetic_cifar10
from reprolib.models import create
from reprolib.models.vgg import VGG

TINY = (8, "M", 8, "M", 16, "M", 16, "M", 16)  # five convs, four pools: 32x32 -> 2x2 -> avg -> 1x1


def tiny(seed=0):
    """A small VGG with random BN statistics, so that eval-mode BN is not the identity."""
    torch.manual_seed(seed)
    model = VGG(TINY)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def images(n=8, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def problems():
    """Random sample matrices, with a dead (all-zero) and a duplicated channel in some."""
    for seed, (m, c) in enumerate([(200, 12), (500, 40), (300, 64)]):
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(m, c, generator=g, dtype=torch.float64) * torch.rand(c, generator=g, dtype=torch.float64)
        X += 0.1 * torch.rand(m, 1, generator=g, dtype=torch.float64)
        if seed:
            X[:, 1] = 0
            X[:, 5] = X[:, 3]
        yield X


# --------------------------------------------------------------------------- ThiNet

def test_kept_channels_round_up():
    assert [thinet.n_kept(64, r) for r in (0.8, 0.6, 0.4, 0.2)] == [52, 39, 26, 13]
    assert thinet.n_kept(10, 0.7) == 7 and thinet.n_kept(3, 0.01) == 1 and thinet.n_kept(16, 1.0) == 16
    with pytest.raises(ValueError, match="share of channels kept"):
        thinet.n_kept(64, 0)


@pytest.mark.parametrize("r", [0.2, 0.5, 0.8])
def test_vectorised_selection_equals_reference(r):
    for X in problems():
        for fast, slow in [(thinet.select_greedy, thinet.select_greedy_reference),
                           (thinet.select_greedy_ls, thinet.select_greedy_ls_reference)]:
            a, b = fast(X, r), slow(X, r)
            assert torch.equal(a, b), (fast.__name__, X.shape, r)
            assert len(a) == thinet.n_kept(X.shape[1], r)


def test_collected_y_is_the_true_preactivation_minus_bias():
    model = tiny()
    first, second = vgg_surgery.conv_names(model)[1:3]
    data = [(images(4, 1), None), (images(4, 2), None)]
    X, y, where = thinet.collect(model, first, second, data, n_samples=70, seed=3, samples_per_image=10)
    assert X.shape == (70, 8) and y.shape == (70,) and where.shape == (70, 4)
    conv = model.get_submodule(second)
    pos = int(second.split(".")[1])
    with torch.no_grad():
        inp = model.features[:pos](torch.cat([x for x, _ in data]))
        out = F.conv2d(inp, conv.weight, None, padding=conv.padding)  # pre-activation, no bias
    n, f, h, w = where.T
    assert torch.allclose(y, out[n, f, h, w].double(), atol=1e-5)
    assert torch.allclose(X.sum(1), y, atol=1e-5)
    assert where[:, 0].max() == 6  # 70 samples = 10 per image: images 0..6 of the stream


def test_collect_asks_for_enough_batches():
    model = tiny()
    a, b = vgg_surgery.conv_names(model)[:2]
    with pytest.raises(ValueError, match="fewer than n_samples"):
        thinet.collect(model, a, b, [images(2)], n_samples=100)


def test_least_squares_scaling_reduces_reconstruction_error():
    model = tiny()
    first, second = vgg_surgery.conv_names(model)[2:4]
    data = [images(16, s) for s in range(4)]
    X, y, _ = thinet.collect(model, first, second, data, n_samples=600, seed=0)
    keep = thinet.select_greedy_ls(X, 0.5, y)
    scales = thinet.ls_scales(X, keep, y=y)
    assert thinet.reconstruction_error(X, keep, scales, y) < thinet.reconstruction_error(X, keep, None, y)

    def next_output(m, x):  # layer i+1's pre-activation output on whole feature maps
        got = {}
        h = m.get_submodule(second).register_forward_hook(lambda mod, i, o: got.setdefault("o", o))
        with torch.no_grad():
            m(x)
        h.remove()
        return got["o"]

    x = torch.cat(data)
    ref = next_output(model, x)
    scaled = thinet.prune_layer(copy.deepcopy(model), first, second, keep, scales)
    plain = thinet.prune_layer(copy.deepcopy(model), first, second, keep)
    assert (next_output(scaled, x) - ref).norm() < (next_output(plain, x) - ref).norm()


def test_prune_layer_really_shrinks_and_identity_keeps_outputs():
    model = create("vgg16").eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    names = vgg_surgery.conv_names(model)
    x = images(2)
    with torch.no_grad():
        ref = model(x)
    same = copy.deepcopy(model)
    for a, b in zip(names[:-1], names[1:]):
        n = same.get_submodule(a).out_channels
        thinet.prune_layer(same, a, b, torch.arange(n), torch.ones(n))
    with torch.no_grad():
        assert (same(x) - ref).abs().max() < 1e-5

    thinet.prune_layer(model, names[3], names[4], torch.arange(0, 128, 2), torch.full((64,), 0.5))
    assert model.get_submodule(names[3]).weight.shape == (64, 128, 3, 3)
    assert model.get_submodule(names[3]).bias.shape == (64,)
    assert model.features[int(names[3].split(".")[1]) + 1].num_features == 64
    assert model.get_submodule(names[4]).weight.shape == (256, 64, 3, 3)
    assert model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="last conv layer"):
        thinet.prune_layer(model, names[-1], "classifier.0", [0], [1.0])
    with pytest.raises(ValueError, match="right after"):
        thinet.prune_layer(model, names[0], names[2], [0], [1.0])


def test_param_count_predicts_the_surgery():
    model = tiny()
    names = vgg_surgery.conv_names(model)
    kept = {names[0]: 5, names[2]: 9, names[-1]: 7}  # the last conv shrinks the classifier's Linear
    predicted = vgg_surgery.param_count(model, kept)
    for n, k in kept.items():
        vgg_surgery.remove_filters(model, n, torch.arange(k))
    assert predicted == sum(p.numel() for p in model.parameters())
    assert model.classifier[0].in_features == 7
    assert model(images(2)).shape == (2, 10)


@pytest.mark.parametrize("method", ["document", "iccv"])
def test_thinet_prune_all_layers_but_the_last(method):
    model = tiny()
    data = [(images(16, s), None) for s in range(4)]
    before = [model.get_submodule(n).out_channels for n in vgg_surgery.conv_names(model)]
    model, records = thinet.thinet_prune(model, data, 0.5, n_samples=400, method=method)
    after = [model.get_submodule(n).out_channels for n in vgg_surgery.conv_names(model)]
    assert after == [thinet.n_kept(c, 0.5) for c in before[:-1]] + before[-1:]
    assert [(r["channels_before"], r["channels_after"]) for r in records] == list(zip(before[:-1], after[:-1]))
    assert all(r["error_scaled"] <= r["error_unscaled"] + 1e-12 for r in records)
    assert model(images(2)).shape == (2, 10)
    with pytest.raises(TypeError, match="not a generator"):
        thinet.thinet_prune(model, (b for b in data), 0.5)


# --------------------------------------------------------------------------- gradient outlier

def test_outlier_scores_on_hand_built_norms():
    norms = torch.ones(6, 10)
    norms[:, 4] = 5.0           # always an outlier
    norms[0, 7] = 5.0           # once
    scores = go.outlier_scores({"conv": norms}, s=1.0)["conv"]
    assert scores[4] == 6 and scores[7] == 1 and scores.sum() == 7


def batches_of(n, seed, size=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


def test_big_gradient_filter_scores_and_gradients_are_not_applied():
    model = tiny().train()
    names = vgg_surgery.conv_names(model)
    with torch.no_grad():  # filter 2 of the first conv feeds the next conv with 30x weights: 30x gradients
        model.get_submodule(names[1]).weight[:, 2] *= 30
    state = copy.deepcopy(model.state_dict())
    norms = go.gradient_norms(model, names, batches_of(5, 0), n_batches=5)
    assert norms[names[0]].shape == (5, 8)
    scores = go.outlier_scores(norms, s=1.0)
    assert scores[names[0]][2] == 5
    chosen = go.select_prune(model, scores, r=0.99, initial_params=vgg_surgery.param_count(model))
    assert 2 in chosen[names[0]]
    # nothing applied: weights and BN statistics as before, no .grad left behind, mode kept
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    imp = criteria.get("gradient_outlier")(model, names[:2], batches_of(3, 1))
    assert set(imp) == set(names[:2]) and imp[names[0]].shape == (8,)


def test_selection_stops_at_the_parameter_ratio():
    model = tiny()
    names = vgg_surgery.conv_names(model)
    initial = vgg_surgery.param_count(model)
    scores = {n: torch.zeros(model.get_submodule(n).out_channels, dtype=torch.long) for n in names}
    for n in names:
        scores[n][::4] = 10     # a quarter of each layer are outliers
    everything = go.select_prune(model, scores, r=0.01, initial_params=initial)
    assert everything == {n: list(range(0, len(scores[n]), 4)) for n in names}
    chosen = go.select_prune(model, scores, r=0.9, initial_params=initial)
    flat = [(n, f) for n in names for f in chosen[n]]
    assert flat == [(n, f) for n in names for f in everything[n]][:len(flat)]  # layer order, filter order
    kept = {n: len(scores[n]) - len(chosen[n]) for n in names}
    assert vgg_surgery.param_count(model, kept) / initial <= 0.9
    n_last, f_last = flat[-1]
    kept[n_last] += 1                          # without the last one, still above r
    assert vgg_surgery.param_count(model, kept) / initial > 0.9


def test_prune_step_reaches_the_ratio_with_real_shrinking():
    model = tiny()
    initial = vgg_surgery.param_count(model)
    record = go.prune_step(model, lambda rnd: batches_of(4, 100 + rnd), 0.85, n_batches=4, max_rounds=30,
                           epsilon=0.0)
    params = sum(p.numel() for p in model.parameters())
    assert record["params"] == params and params / initial <= 0.85 and record["ratio"] <= 0.85
    assert record["channels"] == {n: model.get_submodule(n).out_channels for n in vgg_surgery.conv_names(model)}
    assert model(images(2)).shape == (2, 10)


def test_train_with_pruning_resumes_with_the_schedule_and_a_fresh_optimizer():
    data = synthetic_cifar10(n_train=48, n_test=16)
    model = tiny().train()
    snapshots = {}

    def on_prune(epoch, m, record):
        snapshots[epoch] = copy.deepcopy(m.state_dict())

    history, records = go.train_with_pruning(model, data, epochs=3, r=0.9, prune_every=1, n_batches=3,
                                             max_rounds=20, lr=0.05, batch_size=16, bf16=False,
                                             on_prune=on_prune)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["lr"] for h in history] == [train.lr_at(e, lr=0.05, epochs=3) for e in range(3)]
    assert records and records[0]["epoch"] == 1 and records[-1]["ratio"] <= 0.9
    assert sum(p.numel() for p in model.parameters()) == records[-1]["params"]
    last = max(snapshots)
    assert last < 3
    trained = model.state_dict()
    # the shrunk modules are in the new optimizer: they kept training after the last pruning
    assert all(trained[k].shape == v.shape for k, v in snapshots[last].items())
    assert not torch.equal(trained["features.0.weight"], snapshots[last]["features.0.weight"])
    with pytest.raises(ValueError, match="manages fit's 'checkpoint'"):
        go.train_with_pruning(model, data, epochs=1, r=0.5, lr=0.1, checkpoint="x.pt")
