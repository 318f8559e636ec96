"""He et al. 2017's LASSO channel selection + least squares: the exact LASSO path, the beta-step on a layer with a
redundant channel, the sampled patches, the W-step, and the comparison with ThiNet on the same rows. Seconds."""
import pytest
import torch
import torch.nn as nn

from reprolib import criteria, surgery
from reprolib.criteria import lasso, thinet
from reprolib.criteria.channels import internal_layers
from reprolib.models import create


def lasso_cd(G, b, lam, sweeps=20000):
    """Brute force: cyclic coordinate descent on 1/2 b'Gb - b'beta + lam |beta|_1, run to convergence."""
    beta = torch.zeros(len(b), dtype=torch.float64)
    for _ in range(sweeps):
        old = beta.clone()
        for j in range(len(b)):
            z = b[j] - G[j] @ beta + G[j, j] * beta[j]
            beta[j] = torch.sign(z) * torch.clamp(z.abs() - lam, min=0) / G[j, j]
        if (beta - old).abs().max() < 1e-14:
            break
    return beta


def problem(seed, m=300, c=8):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(m, c, generator=g, dtype=torch.float64)
    Z[:, 1] = 0.9 * Z[:, 0] + 0.2 * Z[:, 1]          # correlated channels make the path non-trivial
    y = Z @ torch.rand(c, generator=g, dtype=torch.float64) + 0.3 * torch.randn(m, generator=g, dtype=torch.float64)
    return Z.T @ Z / m, Z.T @ y / m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_path_is_the_lasso_solution_at_every_lambda(seed):
    G, b = problem(seed)
    path = lasso.lasso_path(G, b)
    assert float(path.lambdas[0]) == pytest.approx(float(b.abs().max()))   # above lambda_max beta = 0
    for lam in torch.linspace(0.001, 0.999, 9).tolist():
        lam *= float(path.lambdas[0])
        assert torch.allclose(lasso.beta_at(path, lam), lasso_cd(G, b, lam), atol=1e-8)
    # the score of a channel is where it enters: zero just above, non-zero just below
    for j in range(len(b)):
        e = float(path.entry[j])
        if e > 0:
            assert lasso.beta_at(path, e * (1 + 1e-9))[j] == 0 and lasso.beta_at(path, e * (1 - 1e-6))[j] != 0


@pytest.mark.parametrize("seed", [0, 3])
def test_scores_rank_channels_as_the_selection_keeps_them(seed):
    """Raising lambda until at most c' channels are left keeps the c' best-scored channels, for every c'
    (the path of these problems is monotone)."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(400, 10, generator=g, dtype=torch.float64)
    y = Z @ torch.randn(10, generator=g, dtype=torch.float64) + torch.randn(400, generator=g, dtype=torch.float64)
    scores = lasso.lasso_scores(Z.T @ Z / 400, Z.T @ y / 400)
    for c in range(1, 11):
        keep, beta, lam = lasso.lasso_select(Z, y, c)
        assert set(keep.tolist()) == set(torch.argsort(scores, descending=True)[:c].tolist())
        assert int((beta != 0).sum()) <= c


def redundant_patches(m=400, n=4, seed=0):
    """A 3 x 3 conv with 3 input channels: channel 2's map is exactly twice channel 0's and its kernels are channel
    0's, so channel 0 adds nothing channel 2 cannot carry; channel 1 is independent but the weakest."""
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(m, 3, 9, generator=g, dtype=torch.float64)
    P[:, 1] *= 0.3
    P[:, 2] = 2 * P[:, 0]
    W = torch.randn(n, 3, 9, generator=g, dtype=torch.float64)
    W[:, 2] = W[:, 0]
    Y = torch.einsum("tik,fik->tf", P, W)
    return lasso.Patches(P, Y, W)


def test_lasso_drops_the_redundant_channel_and_least_squares_rebuilds_the_output_exactly():
    pt = redundant_patches()
    Z, y, norms = lasso.design(pt)
    assert torch.allclose(Z @ norms, y)                  # beta_i = ||W_i|| reproduces the layer (unit-norm kernels)
    contribution = torch.einsum("tik,fik->tfi", pt.P, pt.W).flatten(0, 1).norm(dim=0)
    assert int(contribution.argmin()) == 1               # a magnitude rule would drop channel 1 ...
    keep, beta, _ = lasso.lasso_select(Z, y, 2)
    assert keep.tolist() == [1, 2]                       # ... the LASSO drops the redundant channel 0
    G, b, _, _ = lasso.gram(pt)
    scores = lasso.lasso_scores(G / 400, b / 400)
    assert scores[0] == 0 and scores[2] == 1 and 0 < scores[1] < 1
    new = lasso.reconstruct(pt, keep)
    assert lasso.weights_error(pt, keep, new) < 1e-8    # W'_2 = 1.5 W_0, W'_1 = W_1
    assert torch.allclose(new[:, 1], 1.5 * pt.W[:, 0], atol=1e-6)
    assert lasso.weights_error(pt, keep) > 0.1           # without the W-step channel 0's share is lost


def tiny_pair(stride=1, padding=1, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 5, 3, stride=stride, padding=padding, bias=True), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    model[1].running_mean.uniform_(-0.3, 0.3)
    model[1].bias.data.uniform_(0.1, 0.5)
    return model.eval()


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_sampled_patches_reproduce_the_consumers_output(stride, padding):
    model = tiny_pair(stride, padding)
    x = [(torch.randn(4, 3, 9, 9), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    pt = lasso.collect(model, "0", x, positions=7, seed=1)
    assert pt.P.shape == (56, 6, 9) and pt.Y.shape == (56, 5)
    assert torch.allclose(torch.einsum("tik,fik->tf", pt.P, pt.W), pt.Y, atol=1e-10)  # bias removed, same rows
    again = lasso.collect(model, "0", x, positions=7, seed=1)
    assert torch.equal(again.P, pt.P)                    # the rows depend on the seed only


def test_the_w_step_on_a_network_lowers_the_error_and_shrinks():
    model = tiny_pair()
    x = [(torch.randn(8, 3, 8, 8), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    masks = {"0": torch.tensor([True, False, True, True, False, True])}
    pruned, rec = lasso.reconstruct_network(model, masks, x, positions=20)
    assert rec[0]["error_after"] < rec[0]["error_before"]
    small = surgery.shrink(pruned, masks, (1, 3, 8, 8))
    xb = x[0][0]
    assert torch.allclose(small(xb), pruned(xb), atol=1e-5)
    assert small.get_submodule("3").in_channels == 4


def test_thinet_runs_on_the_same_rows_through_their_square_root():
    """compare_with_thinet gives ThiNet a (C+1)-row matrix with the same Gram products as the full rows: its
    selection and errors are those of the full rows."""
    model = tiny_pair()
    x = [(torch.randn(6, 3, 8, 8), torch.zeros(6, dtype=torch.long))]
    pt = lasso.collect(model, "0", x, positions=10)
    out = lasso.compare_with_thinet(pt, 3)
    X, y, _ = lasso.design(pt, normalise=False)          # the real contributions: ThiNet's X, y = X.sum(1)
    assert torch.allclose(X.sum(1), y)
    full = thinet.select_greedy_ls(X, 0.5, y)
    assert out["thinet"]["keep"] == full.tolist()
    assert out["thinet_iccv"]["keep"] == thinet.select_greedy(X, 0.5).tolist()
    assert out["thinet"]["error_scales"] == pytest.approx(
        thinet.reconstruction_error(X, full, thinet.ls_scales(X, full, y=y), y), rel=1e-6)
    for method in ("lasso", "thinet", "thinet_iccv"):    # the W-step fits at least as well as per-channel scales
        assert out[method]["error_weights"] <= out[method]["error_scales"] + 1e-9
        assert len(out[method]["keep"]) == 3


def test_registry_scores_internal_layers_and_refuses_the_others():
    model = create("resnet20").eval()
    x = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    layers = internal_layers(model)
    assert layers == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    s = criteria.get("lasso")(model, ["layer1.0.conv1", "layer3.2.conv1"], x, positions=5)
    assert s["layer1.0.conv1"].shape == (16,) and s["layer3.2.conv1"].shape == (64,)
    assert float(s["layer3.2.conv1"].max()) == 1.0
    with pytest.raises(ValueError, match="internal_layers"):
        criteria.get("lasso")(model, ["layer1.0.conv2"], x)
    with pytest.raises(ValueError, match="needs data"):
        criteria.get("lasso")(model, ["layer1.0.conv1"])
