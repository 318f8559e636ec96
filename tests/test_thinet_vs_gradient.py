"""The ThiNet-vs-gradient experiment module: the controls copy ThiNet's structure, shrunk runs resume,
the dense weights stay out of the results and are reproduced when missing. VGG-16 on 64 synthetic
images: about 40 s of CPU time."""
import copy
import warnings

import pytest
import torch

from reprolib import profiles, runs
from reprolib.experiments import thinet_vs_gradient as tvg
from reprolib.counting import count
from reprolib.criteria import thinet
from reprolib.surgery import vgg as vgg_surgery
from reprolib.models import create

TINY_PROFILE = dict(model="vgg16", dataset="synthetic", n_train=64, n_test=32, epochs=2, pre_epochs=1,
                    prune_every=1, rates=[0.3], seeds=[0],
                    train=dict(lr=0.05, batch_size=32, momentum=0.9, nesterov=True, weight_decay=5e-4,
                               schedule="cosine", milestones=[], warmup_epochs=0.0, label_smoothing=0.0,
                               bf16=False, channels_last=False),
                    thinet=dict(method="document", n_samples=200, samples_per_image=10, ridge=1e-8, batch_size=32),
                    gradient=dict(s=1.0, epsilon=1e-4, n_batches=2, max_rounds=1),
                    gradient_until_r=dict(rates=[0.3], max_rounds=10),
                    latency_batches=[1], latency_repeats=1)


@pytest.fixture
def tiny_profile(monkeypatch):
    monkeypatch.setitem(tvg.PRESETS, "smoke", copy.deepcopy(TINY_PROFILE))
    return "smoke"


def vgg(seed=0):
    torch.manual_seed(seed)
    return create("vgg16").eval()


def channels(model):
    return {n: model.get_submodule(n).out_channels for n in vgg_surgery.conv_names(model)}


@pytest.mark.parametrize("r", [0.3, 0.8])
def test_controls_keep_thinets_counts_on_the_same_layers(r):
    dense = vgg()
    counts = tvg.keep_counts(dense, r)
    names = vgg_surgery.conv_names(dense)
    assert list(counts) == names[:-1]                       # the last conv is ThiNet's limitation: untouched
    assert counts["features.0"] == thinet.n_kept(64, r)     # ceil(64 r): 20 at 0.3, 52 at 0.8
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=g), None) for _ in range(2)]
    pruned, _ = thinet.thinet_prune(copy.deepcopy(dense), batches, r, n_samples=200)
    assert channels(pruned) == {**counts, names[-1]: 512}
    for criterion in tvg.CONTROLS:
        masks = tvg.control_masks(dense, criterion, r, seed=1)
        assert {n: int(m.sum()) for n, m in masks.items()} == counts
        small = tvg.apply_keep(copy.deepcopy(dense), masks)
        assert channels(small) == channels(pruned)
        assert count(small, tvg.CIFAR)["flops"] == count(pruned, tvg.CIFAR)["flops"]
    l1 = tvg.control_masks(dense, "l1norm", r)
    for n, keep in l1.items():
        norms = dense.get_submodule(n).weight.detach().abs().flatten(1).sum(1)
        assert norms[keep].min() >= norms[~keep].max()
    assert not all(torch.equal(a, b) for a, b in zip(tvg.control_masks(dense, "random", r, seed=0).values(),
                                                     tvg.control_masks(dense, "random", r, seed=1).values()))
    with pytest.raises(ValueError, match="unknown control criterion"):
        tvg.control_masks(dense, "fpgm", r)


def test_resize_like_rebuilds_a_shrunk_network_from_its_state():
    small = tvg.apply_keep(vgg(1), tvg.control_masks(vgg(1), "random", 0.4))
    state = small.state_dict()
    fresh = tvg.resize_like(vgg(2), state)
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), small.eval()(x))
    assert tvg.state_sha256(fresh.state_dict()) == tvg.state_sha256(state) != tvg.state_sha256(vgg(1).state_dict())
    with pytest.raises(ValueError, match="only be shrunk"):
        tvg.resize_like(small, vgg(0).state_dict())


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
        tvg._check_r(1.0)
    with pytest.raises(ValueError, match="seed must be"):
        tvg._check_seed(-1)
    with pytest.raises(ValueError, match="unknown control criterion"):
        tvg.control(None, "taylor", 0.5, 0)


def test_runs_share_the_dense_network_and_resume(tiny_profile, monkeypatch):
    base = tvg.dense(tiny_profile, 0)
    th = tvg.thinet(tiny_profile, 0.3, 0)
    l1 = tvg.control(tiny_profile, "l1norm", 0.3, 0)
    # ThiNet and the control start from the same dense network, with the same structure
    assert th["dense_weights_sha256"] == l1["dense_weights_sha256"] == base["weights_sha256"]
    assert th["channels"] == l1["channels"] and th["metrics"]["flops"] == l1["metrics"]["flops"]
    assert th["curves"][:1] == base["curves"] and [h["epoch"] for h in th["curves"]] == [1, 2]
    assert th["metrics"]["params"] < base["metrics"]["params"] and "ms_pruned_b1" in th["metrics"]
    # no weights under the results folder: the dense ones are in the cache
    assert not list(runs.results_dir().rglob("*.pt"))
    assert tvg._dense_weights(base).exists()

    # the gradient run, killed right after its first shrink, resumes from the shrunk checkpoint
    calls = []
    real_fit = tvg.fit

    def killed_fit(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*a, **kw)
    monkeypatch.setattr(tvg, "fit", killed_fit)
    with pytest.raises(KeyboardInterrupt):
        tvg.gradient(tiny_profile, 0.5, 0)
    monkeypatch.setattr(tvg, "fit", real_fit)
    resumed = tvg.gradient(tiny_profile, 0.5, 0)
    assert [e["epoch"] for e in resumed["pruning_events"]] == [1]
    assert resumed["curves"][0]["test_acc"] == base["curves"][0]["test_acc"]  # same start as the dense run
    runs.paths("thinet_vs_gradient", resumed["config"])["json"].unlink()
    fresh = tvg.gradient(tiny_profile, 0.5, 0)
    assert fresh["channels"] == resumed["channels"]
    assert [h["test_acc"] for h in fresh["curves"]] == [h["test_acc"] for h in resumed["curves"]]

    # the dense weights, once gone, are reproduced identically for a run still to compute
    tvg._dense_weights(base).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnd = tvg.control(tiny_profile, "random", 0.3, 0)
    assert rnd["dense_weights_sha256"] == base["weights_sha256"]
    df = tvg.frame([base, th, l1, rnd, fresh])
    assert list(df["method"]) == ["dense", "thinet", "l1norm", "random", "gradient"]
    # training time counts a run's own epochs only: the dense run's are not counted again in ThiNet's
    assert df.loc[1, "train_s"] == sum(e["seconds"] for e in th["curves"][1:]) < df.loc[1, "train_s"] + df.loc[0, "train_s"]
    assert df.loc[4, "train_s"] == sum(e["seconds"] for e in fresh["curves"])
    assert tvg.frame([th])["train_s"].isna().all()

    # the quiet latency table rebuilds each pruned architecture from its recorded widths: same true counts
    lat = tvg.latency(tiny_profile)
    grad = tvg.gradient(tiny_profile, 0.3, 0)
    [until] = tvg.until_r_runs(tiny_profile)
    assert set(lat["rows"]) == {"dense", "thinet/0.3/0", "gradient/0.3/0", "gradient_until_r/0.3/0"}
    for label, rec in (("dense", base), ("thinet/0.3/0", th), ("gradient/0.3/0", grad), ("gradient_until_r/0.3/0", until)):
        assert (lat["rows"][label]["params"], lat["rows"][label]["flops"]) == \
            (rec["metrics"]["params"], rec["metrics"]["flops"])
        assert lat["rows"][label]["ms_b1"] > 0

    # the "until r" reading repeats rounds within an event: a run of its own, pruned further, at r at last
    assert until["hash"] != grad["hash"] and tvg.method_of(until) == "gradient_until_r"
    assert until["config"]["gradient"]["max_rounds"] == 10 and grad["config"]["gradient"]["max_rounds"] == 1
    [ev1], [ev] = grad["pruning_events"], until["pruning_events"]
    assert ev1["rounds"] == 1 and ev1["ratio"] > 0.3     # one round falls short of r here
    assert ev["rounds"] > 1 and ev["ratio"] <= 0.3 and until["metrics"]["params"] < grad["metrics"]["params"]
    assert tvg.cost_summary(tiny_profile)["runs"] == len(tvg.all_runs(tiny_profile)) + 1
