import pytest
import torch

from reprolib import criteria
from reprolib.masks import conv_layers, from_scores, sparsity, weight_masks
from reprolib.models import create


def pruned(mask):
    return (~mask).nonzero().flatten().tolist()


def test_conv_layers_in_module_order():
    names = conv_layers(create("resnet20"))
    assert len(names) == 19 and names[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert names[-1] == "layer3.2.conv2"
    assert conv_layers(create("vgg16"))[:2] == ["features.0", "features.3"]


def test_local_prunes_floor_of_rate_times_channels_lowest_first():
    s = {"a": torch.tensor([5.0, 1, 4, 2, 3, 9, 8, 7, 6, 0])}
    assert pruned(from_scores(s, 0.35)["a"]) == [1, 3, 9]  # int(3.5) = 3: the three lowest
    assert pruned(from_scores(s, 0.0)["a"]) == []
    # HRank's int(C * r): 16 filters at 0.6 -> 9 pruned; 100 at 0.29 -> int(28.999...) = 28
    m = from_scores({"b": torch.arange(16.0), "c": torch.arange(100.0)}, [0.6, 0.29])
    assert (~m["b"]).sum() == 9 and (~m["c"]).sum() == int(100 * 0.29) == 28


def test_ties_prune_the_lower_index_first():
    assert pruned(from_scores({"a": torch.ones(6)}, 0.5)["a"]) == [0, 1, 2]
    assert pruned(from_scores({"a": torch.tensor([2.0, 1, 2, 1, 2])}, 0.6)["a"]) == [0, 1, 3]  # 1s first, then the first 2


def test_rates_by_name_list_and_min_keep():
    s = {"a": torch.arange(4.0), "b": torch.arange(10.0)}
    m = from_scores(s, {"a": 0.5, "b": 0.25})
    assert pruned(m["a"]) == [0, 1] and pruned(m["b"]) == [0, 1]
    assert pruned(from_scores(s, [0.9, 0.0])["a"]) == [0, 1, 2]
    assert pruned(from_scores(s, [0.9, 0.0], min_keep=2)["a"]) == [0, 1]  # 3 asked, 2 kept anyway
    assert from_scores(s, [0.9, 0.9], min_keep=20)["b"].all()


@pytest.mark.parametrize("rates,match", [
    (1.0, r"rate for a is 1.0: it must be in \[0, 1\)"),
    ({"a": 0.1, "b": -0.2}, "rate for b is -0.2"),
    ([0.1, float("nan")], "rate for b is nan"),
    ({"a": 0.1, "b": 0.1, "conv9": 0.5}, r"rates name layers that have no scores: \['conv9'\]"),
    ({"a": 0.1}, r"rates has no entry for \['b'\]"),
    ([0.1], "rates has 1 entries but scores has 2 layers"),
])
def test_bad_rates_name_the_layer_and_value(rates, match):
    with pytest.raises(ValueError, match=match):
        from_scores({"a": torch.rand(4), "b": torch.rand(4)}, rates)


def test_global_uses_one_threshold_across_layers():
    s = {"a": torch.tensor([0.1, 0.2, 0.9, 0.8]), "b": torch.tensor([0.5, 0.05, 0.6, 0.7, 0.3, 0.4])}
    m = from_scores(s, 0.5, scope="global")  # 5 of 10 pruned: 0.05, 0.1, 0.2, 0.3, 0.4
    assert pruned(m["a"]) == [0, 1] and pruned(m["b"]) == [1, 4, 5]
    assert sparsity(m) == 0.5


def test_global_keeps_min_keep_per_layer():
    s = {"a": torch.tensor([0.01, 0.02, 0.03]), "b": torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9])}
    m = from_scores(s, 0.5, scope="global")  # 4 pruned; layer a keeps its best filter, so b loses one
    assert pruned(m["a"]) == [0, 1] and pruned(m["b"]) == [0, 1]
    m0 = from_scores(s, 0.5, scope="global", min_keep=0)
    assert pruned(m0["a"]) == [0, 1, 2] and pruned(m0["b"]) == [0]
    with pytest.raises(ValueError, match="min_keep=3 per layer leaves only 2 prunable"):
        from_scores(s, 0.5, scope="global", min_keep=3)
    with pytest.raises(ValueError, match="scope='global' takes one rate"):
        from_scores(s, [0.5, 0.5], scope="global")
    with pytest.raises(ValueError, match=r"shape \(2, 2\): from_scores takes one score per filter"):
        from_scores({"w": torch.rand(2, 2)}, 0.5)
    with pytest.raises(ValueError, match="unknown scope 'layer'"):
        from_scores(s, 0.5, scope="layer")


def test_masks_from_a_criterion_on_resnet56_follow_the_hrank_counts():
    m = create("resnet56")
    scores = criteria.get("l1norm")(m, conv_layers(m))
    masks = from_scores(scores, [0.1] + [0.6] * 54)
    kept = [int(k.sum()) for k in masks.values()]
    assert kept[0] == 16 - 1 and kept[1] == 16 - 9 and kept[-1] == 64 - 38


def test_weight_masks_global_and_local():
    s = {"a": torch.tensor([[0.1, 0.9], [0.8, 0.2]]), "b": torch.tensor([0.3, 0.7, 0.6, 0.5, 0.4, 0.05])}
    g = weight_masks(s, 0.5)  # 5 of 10 lowest: 0.05 0.1 0.2 0.3 0.4
    assert g["a"].shape == (2, 2) and g["a"].tolist() == [[False, True], [True, False]]
    assert g["b"].tolist() == [False, True, True, True, False, False]
    loc = weight_masks(s, 0.5, scope="local")  # 2 of 4 in a, 3 of 6 in b
    assert loc["a"].tolist() == [[False, True], [True, False]]
    assert loc["b"].tolist() == [False, True, True, True, False, False]
    assert sparsity(weight_masks(s, 0.3, scope="local")) == pytest.approx((1 + 1) / 10)
    with pytest.raises(ValueError, match=r"rate for weight sparsity is 1.5"):
        weight_masks(s, 1.5)


def test_sparsity_counts_pruned_entries():
    assert sparsity({"a": torch.tensor([True, False]), "b": torch.zeros(2, 2, dtype=torch.bool)}) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="masks is empty"):
        sparsity({})


def test_round_to_rounds_kept_counts_up_with_the_best_pruned_filters():
    s = {"a": torch.tensor([5.0, 1, 3, 2, 4, 0, 6, 7, 9, 8]), "b": torch.arange(20.0), "c": torch.arange(6.0)}
    exact = from_scores(s, 0.6)  # a keeps 4 (scores 6..9), b keeps 8, c keeps 3
    r = from_scores(s, 0.6, round_to=8)
    assert [int(m.sum()) for m in r.values()] == [8, 8, 6]  # 4 -> 8; 8 stays; 3 -> 6 (all of c, not 8)
    assert (exact["a"] <= r["a"]).all()  # only adds filters
    assert pruned(r["a"]) == [1, 5]  # the four added back are the best pruned ones: scores 5, 4, 3, 2
    assert torch.equal(r["b"], exact["b"])
    ties = from_scores({"t": torch.ones(6)}, 0.5, round_to=4)  # pruned 0, 1, 2 in that order; 2 comes back first
    assert pruned(ties["t"]) == [0, 1]
    assert all(torch.equal(exact[k], v) for k, v in from_scores(s, 0.6, round_to=None).items())  # off by default


def test_round_to_with_global_scope_and_bad_values():
    s = {"a": torch.tensor([0.1, 0.2, 0.9, 0.8]), "b": torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7, 0.05])}
    g = from_scores(s, 0.5, scope="global", round_to=2)  # global: a keeps 2, b keeps 3 -> 4
    assert [int(m.sum()) for m in g.values()] == [2, 4]
    assert pruned(g["b"]) == [0, 5]  # 0.4 (index 1) is the best pruned filter of b
    for bad in (0, -8, 2.5, True):
        with pytest.raises(ValueError, match="round_to must be a positive int"):
            from_scores(s, 0.5, round_to=bad)
