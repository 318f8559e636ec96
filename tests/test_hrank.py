"""The HRank experiment's helpers: the middle-group sweep and the control masks."""
import torch

from reprolib import masks as masks_mod, spec
from reprolib.experiments import hrank
from reprolib.models import create


def test_middle_spec_changes_only_layers_2_to_36():
    base = spec.parse(spec.table1()[1], n_layers=55)
    swept = spec.parse(hrank.middle_spec(0.25), n_layers=55)
    assert swept[1:36] == [0.25] * 35
    assert swept[:1] + swept[36:] == base[:1] + base[36:]
    assert spec.format(spec.parse(hrank.middle_spec(0.6))) == spec.format(base)  # spec 1 is its own 0.6 point


def test_controls_prune_the_same_number_of_filters_per_layer_as_rank():
    torch.manual_seed(0)
    model = create("resnet56")
    rates = spec.parse(spec.table1()[5], n_layers=55)
    convs = masks_mod.conv_layers(model)
    fake_ranks = {"ranks": {c: torch.rand(model.get_submodule(c).out_channels).tolist() for c in convs}}
    by = {c: hrank.masks_for(model, rates, c, 0, fake_ranks) for c in ("hrank", "l1norm", "random")}
    for c in convs:
        n = model.get_submodule(c).out_channels
        kept = {k: int(m[c].sum()) for k, m in by.items()}
        assert set(kept.values()) == {n - int(n * rates[convs.index(c)])}, (c, kept)
    assert any(not torch.equal(by["hrank"][c], by["random"][c]) for c in convs)
    assert torch.equal(hrank.masks_for(model, rates, "random", 0, None)["layer1.0.conv1"],
                       hrank.masks_for(model, rates, "random", 0, None)["layer1.0.conv1"])
