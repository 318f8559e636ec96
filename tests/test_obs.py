"""Layer-wise Optimal Brain Surgeon (reprolib.criteria.obs) against brute force on tiny layers."""

import pytest
import torch
import torch.nn as nn

from reprolib import criteria
from reprolib.criteria import obs as obs_mod
from reprolib.models import create


def _layer(rows=3, d=4, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, rows)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(rows, d, generator=g, dtype=torch.float64))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return model, x, [(x, torch.zeros(n, dtype=torch.long))]


def _refit(w, X, removed):
    """Brute force: row ``w`` with the ``removed`` indices at zero and the others re-fit by least squares to
    its original outputs on the inputs ``X`` (n x d); returns the new row and the error 1/(2n) ||X (w' - w)||^2."""
    keep = [j for j in range(len(w)) if j not in removed]
    target = X @ w
    new = torch.zeros_like(w)
    if keep:
        new[keep] = torch.linalg.lstsq(X[:, keep], target.unsqueeze(1)).solution.squeeze(1)
    return new, float(((X @ new - target) ** 2).sum() / (2 * len(X)))


def test_the_first_removal_is_the_cheapest_single_removal_with_a_least_squares_refit():
    model, x, batches = _layer()
    W = model[0].weight.detach().clone()
    brute = {(r, q): _refit(W[r], x, {q}) for r in range(3) for q in range(4)}
    sal = criteria.get("obs")(model, ["0"], batches, damp=0.0)["0"]
    for (r, q), (_, err) in brute.items():  # Eq. (4)'s L_q is the exact increase for every weight
        assert sal[r, q].item() == pytest.approx(err, rel=1e-9)
    best = min(brute, key=lambda k: brute[k][1])
    keep = obs_mod.obs_prune(model, ["0"], batches, {"0": 1}, damp=0.0)["0"]
    assert (~keep).nonzero().tolist() == [list(best)]
    new = model[0].weight.detach()
    assert torch.allclose(new[best[0]], brute[best][0], atol=1e-10)  # the compensating update is the re-fit
    others = [r for r in range(3) if r != best[0]]
    assert torch.equal(new[others], W[others])  # other rows untouched


def test_the_layer_sequence_is_the_greedy_sequence_of_brute_force():
    model, x, batches = _layer(rows=3, d=5, n=15, seed=1)
    W = model[0].weight.detach().clone()
    settings = obs_mod.obs_prune_many(model, ["0"], batches, [{"0": k} for k in range(1, 10)], damp=0.0)
    removed = {r: set() for r in range(3)}
    errors = {r: 0.0 for r in range(3)}
    for k, setting in enumerate(settings, 1):
        # brute force: every remaining weight of every row, re-fit; take the least increase of the layer's error
        cands = {(r, q): _refit(W[r], x, removed[r] | {q})[1] - errors[r]
                 for r in range(3) for q in range(5) if q not in removed[r]}
        r, q = min(cands, key=cands.get)
        removed[r].add(q)
        errors[r] += cands[(r, q)]
        new, keep = setting["0"]
        assert {(i, j) for i, j in (~keep).nonzero().tolist()} == {(i, j) for i in removed for j in removed[i]}
        for i in range(3):
            assert torch.allclose(new[i], _refit(W[i], x, removed[i])[0], atol=1e-9)
    assert torch.equal(model[0].weight.detach(), W)  # obs_prune_many leaves the model alone


def test_conv_layers_use_patches_laid_out_as_their_weights_and_the_costs_add_up():
    g = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2).double()
    x = torch.randn(6, 2, 7, 7, generator=g, dtype=torch.float64)
    batches = [(x, torch.zeros(6, dtype=torch.long))]
    model = nn.Sequential(conv)
    before = model(x).detach()
    H = obs_mod.layer_hessians(model, ["0"], batches)["0"]
    W = conv.weight.detach().reshape(3, -1)
    order, cost = obs_mod.removal_paths(W, obs_mod.damped_inverse(H, 0.0), steps=10)
    (per_row,) = obs_mod.merge_counts(cost, [20])
    keep = obs_mod.obs_prune(model, ["0"], batches, {"0": 20}, damp=0.0)["0"]
    assert int((~keep).sum()) == 20 and not conv.weight[~keep].any()
    after = model(x).detach()
    n = after.shape[0] * after.shape[2] * after.shape[3]  # one input vector per image and output position
    actual = float(((after - before) ** 2).sum() / (2 * n))
    predicted = sum(float(cost[r, :c].sum()) for r, c in enumerate(per_row.tolist()))
    assert actual == pytest.approx(predicted, rel=1e-8)  # the sum of the L_q paid is the true increase


def test_merge_takes_the_row_whose_next_removal_costs_least():
    cost = torch.tensor([[1.0, 5.0, 2.0], [3.0, 3.0, 3.0]])
    got = [c.tolist() for c in obs_mod.merge_counts(cost, [0, 1, 2, 3, 4, 5, 6])]
    assert got == [[0, 0], [1, 0], [1, 1], [1, 2], [1, 3], [2, 3], [3, 3]]
    with pytest.raises(ValueError, match="must lie in"):
        obs_mod.merge_counts(cost, [7])


def test_damping_and_bad_input_are_clear():
    x = torch.ones(8, 3, dtype=torch.float64)  # constant inputs: X X^T has rank 1
    H = x.T @ x / 8
    with pytest.raises(ValueError, match="not positive definite"):
        obs_mod.damped_inverse(H, 0.0)
    Hinv = obs_mod.damped_inverse(H, 0.1)
    assert torch.allclose(Hinv, torch.linalg.inv(H + 0.1 * torch.eye(3, dtype=torch.float64)))  # mean diag is 1
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="needs data"):
        criteria.get("obs")(model, ["0"])
    with pytest.raises(ValueError, match="cannot prune 6 of the 6"):
        obs_mod.obs_prune(model, ["0"], [(x.float(), torch.zeros(8))], {"0": 6})
    with pytest.raises(ValueError, match="groups=2"):
        obs_mod.layer_inputs(nn.Conv2d(2, 2, 3, groups=2), torch.zeros(1, 2, 5, 5))


def test_obs_scores_every_weight_of_a_lenet_and_prunes_the_shares_asked():
    torch.manual_seed(0)
    model = create("lenet5")
    batches = [(torch.randn(16, 1, 28, 28), torch.zeros(16, dtype=torch.long))]
    layers = ["0", "2", "5", "7"]
    assert criteria.LEVELS["obs"] == "weight"
    scores = criteria.get("obs")(model, layers, batches)
    assert all(scores[n].shape == model.get_submodule(n).weight.shape and (scores[n] >= 0).all() for n in layers)
    keep = obs_mod.obs_prune(model, ["0"], batches, 0.5)
    for n in ("0",):
        w = model.get_submodule(n).weight
        assert int((~keep[n]).sum()) == int(w.numel() * 0.5) and not w[~keep[n]].any()
