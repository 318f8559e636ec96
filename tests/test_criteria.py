import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reprolib import criteria, masks
from reprolib.criteria.filters import bn_after, hrank_reference, relu_after
from reprolib.criteria.weights import hessian_diagonal, obd_saliency
from reprolib.models import create


def conv(cin, cout, k, weight, bias=None):
    """A Conv2d with hand-set weights (and bias)."""
    c = nn.Conv2d(cin, cout, k, bias=bias is not None)
    with torch.no_grad():
        c.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).reshape(c.weight.shape))
        if bias is not None:
            c.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return c


def test_registry_lists_every_criterion_with_its_level():
    assert set(criteria.available("filter")) >= {"l1norm", "bn_gamma", "apoz", "fpgm", "taylor", "random", "hrank"}
    assert set(criteria.available("weight")) >= {"magnitude", "obd"}


def test_unknown_layer_and_missing_data_are_clear_errors():
    m = create("resnet20")
    with pytest.raises(ValueError, match="no module 'layer9.conv1'"):
        criteria.get("l1norm")(m, ["layer9.conv1"])
    with pytest.raises(ValueError, match="'bn1' is a BatchNorm2d"):
        criteria.get("l1norm")(m, ["bn1"])
    with pytest.raises(ValueError, match="hrank needs data"):
        criteria.get("hrank")(m, ["conv1"])
    with pytest.raises(ValueError, match="'fc' is a Linear; this criterion scores Conv2d"):
        criteria.get("hrank")(m, ["fc"], [(torch.randn(1, 3, 32, 32), torch.tensor([0]))])


# ----------------------------------------------------------------------------- from the weights

def test_l1norm_picks_the_smallest_norm_filters():
    # four 2x2 filters with L1 norms 4, 1, 3, 2 (signs must not matter)
    w = [[1, -1, 1, -1], [0, 0.5, -0.5, 0], [-3, 0, 0, 0], [1, 1, 0, 0]]
    m = nn.Sequential(conv(1, 4, 2, w))
    s = criteria.get("l1norm")(m, ["0"])["0"]
    assert torch.allclose(s, torch.tensor([4.0, 1.0, 3.0, 2.0]))
    assert masks.from_scores({"0": s}, 0.5)["0"].tolist() == [True, False, True, False]


def test_fpgm_scores_the_filter_at_the_geometric_median_lowest():
    pts = [(2, 0), (-2, 0), (0, 0), (0, 2)]  # filter 2 sits at the centre
    m = nn.Sequential(conv(1, 4, (1, 2), pts))
    s = criteria.get("fpgm")(m, ["0"])["0"]
    expected = [sum(math.dist(p, q) for q in pts) for p in pts]
    assert torch.allclose(s, torch.tensor(expected), atol=1e-6)
    assert s.argmin() == 2 and s[2] == pytest.approx(6.0)


def test_bn_gamma_reads_the_batchnorm_after_each_conv():
    m = create("resnet20")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.randn(mod.num_features))
    s = criteria.get("bn_gamma")(m, ["conv1", "layer1.0.conv1", "layer2.0.conv2"])
    assert torch.equal(s["conv1"], m.bn1.weight.abs())
    assert torch.equal(s["layer1.0.conv1"], m.layer1[0].bn1.weight.abs())
    assert torch.equal(s["layer2.0.conv2"], m.layer2[0].bn2.weight.abs())
    assert bn_after(create("vgg16"), ["features.3"]) == {"features.3": "features.4"}


def test_bn_gamma_refuses_a_conv_without_batchnorm():
    with pytest.raises(ValueError, match="'0' is not directly followed by a BatchNorm"):
        criteria.get("bn_gamma")(create("lenet5"), ["0"])


def test_random_is_seeded():
    m = create("resnet20")
    layers = masks.conv_layers(m)
    a, b = criteria.get("random")(m, layers), criteria.get("random")(m, layers, seed=0)
    c = criteria.get("random")(m, layers, seed=1)
    assert all(torch.equal(a[n], b[n]) for n in layers)
    assert not torch.equal(a["conv1"], c["conv1"])
    assert not torch.equal(a["layer1.0.conv1"], a["layer1.1.conv1"])  # layers draw differently
    assert a["layer3.0.conv1"].shape == (64,) and 0 <= a["conv1"].min() and a["conv1"].max() < 1
    # a layer's draw does not depend on which other layers are scored
    assert torch.equal(criteria.get("random")(m, ["layer2.0.conv1"])["layer2.0.conv1"], a["layer2.0.conv1"])


# ----------------------------------------------------------------------------- from data

def test_relu_after_finds_hranks_relus():
    m = create("resnet20")
    assert relu_after(m, ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer3.2.conv2"]) == {
        "conv1": "relu", "layer1.0.conv1": "layer1.0.relu1", "layer1.0.conv2": "layer1.0.relu2",
        "layer3.2.conv2": "layer3.2.relu2"}
    assert relu_after(create("vgg16"), ["features.0", "features.40"]) == {"features.0": "features.2",
                                                                       "features.40": "features.42"}
    with pytest.raises(ValueError, match="no ReLU module follows '0'"):
        relu_after(create("lenet5"), ["0"])


def test_apoz_of_dead_and_always_on_filters():
    # channel 0 is always zero after ReLU, channel 1 always positive, channel 2 is x: 1/4 negative
    m = nn.Sequential(conv(1, 3, 1, [0, 0, 1], bias=[-1, 1, 0]), nn.ReLU())
    x = torch.tensor([1.0, 2.0, 3.0, -1.0]).reshape(1, 1, 2, 2).repeat(3, 1, 1, 1)
    s = criteria.get("apoz")(m, ["0"], [(x[:2], torch.zeros(2)), (x[2:], torch.zeros(1))])["0"]
    assert torch.allclose(s, torch.tensor([0.0, 1.0, 0.75]))


def test_taylor_matches_a_hand_computation():
    # a = w_c * x; logits z_bc = mean over positions of a_bc; L = sum_b CE(z_b, y_b).
    # dL/da_bchw = (p_bc - onehot_bc) / 4, so mean_{b,h,w}(a * dL/da) = mean_b(z_bc (p_bc - onehot_bc)) / 4.
    m = nn.Sequential(conv(1, 2, 1, [2.0, -1.0]), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(3, 1, 2, 2, generator=g), torch.tensor([0, 1, 1])),
            (torch.randn(2, 1, 2, 2, generator=g), torch.tensor([1, 0]))]
    terms = []
    for x, y in data:
        z = x.mean((2, 3)) * torch.tensor([2.0, -1.0])
        terms.append(z * (z.softmax(1) - F.one_hot(y, 2)) / 4)
    per_batch = sum(t.mean(0).abs() for t in terms) / 2
    per_example = sum(t.abs().sum(0) for t in terms) / 5  # the paper's: |.| per image, mean over the 5 images
    m.train()
    assert torch.allclose(criteria.get("taylor")(m, ["0"], data)["0"], per_example, atol=1e-6)
    assert torch.allclose(criteria.get("taylor")(m, ["0"], data, per_example=False)["0"], per_batch, atol=1e-6)
    assert m.training and m[0].weight.grad is None  # mode restored, parameter gradients untouched


def hand_built_maps():
    """Two images through conv(1x1) + ReLU: channel 0 has rank 1 then 2, channel 1 rank 4 then 1,
    channel 2 is negative everywhere (rank 0 after the ReLU)."""
    m = nn.Sequential(conv(2, 3, 1, [[1, 0], [0, 1], [-1, -1]]), nn.ReLU())
    u, v = torch.tensor([1.0, 2, 3, 4]), torch.tensor([2.0, 1, 1, 3])
    u2, v2 = torch.tensor([1.0, 0, 1, 0]), torch.tensor([0.0, 1, 0, 1])
    img1 = torch.stack([torch.outer(u, v), torch.eye(4) + 1])
    img2 = torch.stack([torch.outer(u, v) + torch.outer(u2, v2), torch.outer(v, u)])
    return m, torch.stack([img1, img2])


def test_hrank_is_the_known_rank_of_hand_built_maps_averaged_over_images():
    m, x = hand_built_maps()
    y = torch.zeros(2, dtype=torch.long)
    one_batch = criteria.get("hrank")(m, ["0"], [(x, y)])["0"]
    assert one_batch.tolist() == [1.5, 2.5, 0.0]
    two_batches = criteria.get("hrank")(m, ["0"], [(x[:1], y[:1]), (x[1:], y[1:])])["0"]
    assert two_batches.tolist() == [1.5, 2.5, 0.0]
    first_only = criteria.get("hrank")(m, ["0"], [(x[:1], y[:1]), (x[1:], y[1:])], n_batches=1)["0"]
    assert first_only.tolist() == [1.0, 4.0, 0.0]
    assert hrank_reference(m, ["0"], [(x, y)])["0"].tolist() == [1.5, 2.5, 0.0]


def test_hrank_batched_equals_the_per_map_loop_on_a_resnet():
    torch.manual_seed(0)
    m = create("resnet20")
    with torch.no_grad():  # random BN affines, so that ranks vary from map to map
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(-1, 1)
                mod.bias.uniform_(-1, 1)
    data = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])), (torch.randn(1, 3, 32, 32), torch.tensor([2]))]
    layers = masks.conv_layers(m)
    m.train()
    running = m.bn1.running_mean.clone()
    fast, slow = criteria.get("hrank")(m, layers, data), hrank_reference(m, layers, data)
    assert set(fast) == set(layers)
    assert all(torch.equal(fast[n], slow[n]) for n in layers)
    assert fast["layer3.2.conv2"].shape == (64,) and 0 < fast["conv1"].mean() <= 32
    assert len({float(v) for s in fast.values() for v in s}) > 5  # not a constant
    assert m.training and torch.equal(m.bn1.running_mean, running)  # eval mode while scoring


# ----------------------------------------------------------------------------- weight level

def test_magnitude_is_abs_weight():
    m = create("lenet300")
    s = criteria.get("magnitude")(m, ["1", "3"])
    assert s["1"].shape == (300, 784) and torch.equal(s["3"], m[3].weight.abs())


def test_obd_saliency_on_a_quadratic_matches_the_closed_form():
    # L(w) = 0.5 (w - w*)^T A (w - w*): the Hessian is A, so the saliency is 0.5 * A_ii * w_i^2
    g = torch.Generator().manual_seed(0)
    b = torch.randn(6, 6, generator=g)
    a = b @ b.T + torch.eye(6)
    w_star = torch.randn(6, generator=g)
    w1, w2 = torch.randn(2, 2, generator=g), torch.randn(2, generator=g)

    def loss(ws):
        d = torch.cat([ws[0].reshape(-1), ws[1]]) - w_star
        return 0.5 * d @ a @ d

    h1, h2 = hessian_diagonal(loss, [w1, w2])
    assert torch.allclose(torch.cat([h1.reshape(-1), h2]), a.diagonal(), atol=1e-5)
    s1, s2 = obd_saliency(loss, [w1, w2])
    assert s1.shape == (2, 2)
    assert torch.allclose(torch.cat([s1.reshape(-1), s2]),
                          0.5 * a.diagonal() * torch.cat([w1.reshape(-1), w2]) ** 2, atol=1e-5)
    with pytest.raises(ValueError, match="too large"):
        hessian_diagonal(loss, [torch.zeros(100, 100)])


def linear_problem():
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        m[0].weight.copy_(torch.randn(3, 4, generator=g))
    x, y = torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    return m, x, y


def test_obd_ggn_is_the_exact_hessian_for_a_network_linear_in_its_weights():
    m, x, y = linear_problem()
    bias = m[0].bias.detach()
    exact = obd_saliency(lambda ws: F.cross_entropy(x @ ws[0].T + bias, y), [m[0].weight])[0]
    s = criteria.get("obd")(m, ["0"], [(x[:4], y[:4]), (x[4:], y[4:])], chunk=3)["0"]
    assert s.shape == (3, 4) and torch.allclose(s, exact, rtol=1e-4, atol=1e-7)


def test_obd_empirical_fisher_is_the_mean_squared_per_image_gradient():
    m, x, y = linear_problem()
    sq = torch.zeros(3, 4)
    for xi, yi in zip(x, y):
        (gi,) = torch.autograd.grad(F.cross_entropy(m(xi[None]), yi[None]), [m[0].weight])
        sq += gi ** 2
    expected = 0.5 * sq / len(y) * m[0].weight.detach() ** 2
    s = criteria.get("obd")(m, ["0"], [(x, y)], hessian="empirical")["0"]
    assert torch.allclose(s, expected, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="unknown hessian estimate 'exact'"):
        criteria.get("obd")(m, ["0"], [(x, y)], hessian="exact")
