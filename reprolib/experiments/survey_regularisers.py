"""The survey's two training-time structured regularisers on the ResNet-56 baseline (issue 19), each a cached
run of experiment "survey_regularisers":

* ``regularise(profile, method)``: from the trained baseline, a few epochs on the criteria benchmark's training
  images with the regulariser: ``"ssl"``, structured sparsity learning (Wen et al. 2016, summary 2.1;
  ``reprolib.group_lasso``: group lasso over filters, block-internal channels and whole residual branches), or
  ``"bar"``, budget-aware regularisation (Lemaire et al. 2019, summary 4.9; ``reprolib.bar``: Hard Concrete
  masks on the block-internal channels under a FLOPs budget). Keeps the weights (BAR: the gates folded in);
* ``prune(profile, method, rule, control_seed)``: the masks and the shrunk network. SSL, ``rule="threshold"``:
  the groups below the preset's threshold (Wen et al.'s rule, the FLOPs it removes are what they are);
  ``rule="flops"``: the same rule, the threshold raised until the criteria benchmark's FLOPs target is removed.
  BAR, ``rule="gates"``: the channels whose test-time gate is 0. ``control_seed``: the random control, the same
  number of filters kept in every layer, drawn at random, cut from the *baseline*;
* ``finetune(profile, method, rule, seed, control)``: that network fine-tuned with the criteria benchmark's
  recipe (``criteria_benchmark._finetune``, its preset's ``finetune``), seed ``seed``; the control draws its
  channels with the same seed.

This study is not in ``reprolib.experiments.NAMES`` yet: its presets are read by ``preset`` here.

    python -m reprolib.experiments.survey_regularisers --profile smoke
"""
from __future__ import annotations


import torch

from .. import bar, data as data_mod, group_lasso, plan, profiles, runs, surgery
from . import baseline, criteria_benchmark
from ..counting import count
from ..device import current as device
from ..train import evaluate, fit, save_atomic, seed_everything

EXPERIMENT = "survey_regularisers"
CIFAR = (1, 3, 32, 32)
_TRAIN_COMMON = dict(schedule="cosine", batch_size=128, momentum=0.9, nesterov=True, weight_decay=5e-4,
                     bf16=True, channels_last=True, seed=0)

PRESETS = {
    # The smoke ResNet-20 baseline, 256 / 128 images, one epoch: exercises every part.
    "smoke": dict(baseline="smoke", n_train=256, n_test=128, seeds=[0],
                  train=dict(_TRAIN_COMMON, epochs=1, lr=0.01),
                  ssl=dict(lam={"filter": 1e-2, "channel": 1e-2, "depth": 1e-2}, threshold=0.05),
                  bar=dict(lam=1.0, scale=10.0, tolerance=0.01, margin=1e-4, slope=10.0, cap=1000.0),
                  target=0.5, points=[["ssl", "threshold"], ["ssl", "flops"], ["bar", "gates"]]),
    # Like the structural chapter's sparsity training: 4 epochs on the first 10,000 training images at lr 0.02
    # (cosine) from the budget baseline, all 10,000 test images; the fine-tuning and its images are the criteria
    # benchmark's budget ones (1 epoch), at its seeds; target: 50% of the true FLOPs removed, one of its targets.
    # Ours, chosen before measuring. SSL: lam 1e-2 for every kind; under BN the data loss does not oppose a
    # filter's norm, and SGD with momentum 0.9 moves it by about lam x 10 x the sum of the learning rates (~3.2
    # here), ~0.3, against a median filter norm of 0.5 in the baseline; threshold 0.05, a tenth of that median.
    # BAR: lam 1 on the expected FLOPs share, gates moved 100 times faster than the weights (scale 10), the
    # barrier capped at 1000; tolerance, margin and slope as the public implementations set them. With these, the
    # gates of ResNet-56 under the penalty alone (no data loss; an arithmetic check, not a run) follow the
    # moving budget down to 50% by the last step.
    "budget": dict(baseline="budget", n_train=10000, n_test=None, seeds=[0, 1],
                   train=dict(_TRAIN_COMMON, epochs=4, lr=0.02),
                   ssl=dict(lam={"filter": 1e-2, "channel": 1e-2, "depth": 1e-2}, threshold=0.05),
                   bar=dict(lam=1.0, scale=10.0, tolerance=0.01, margin=1e-4, slope=10.0, cap=1000.0),
                   target=0.5, points=[["ssl", "threshold"], ["ssl", "flops"], ["bar", "gates"]]),
}
METHODS = {"ssl": ("threshold", "flops"), "bar": ("gates",)}


def preset(profile: str | None = None) -> dict:
    """This study's preset of ``profile`` (``profiles.get``); it has none for ``paper`` (NoPresetError)."""
    return profiles.get(EXPERIMENT, profile)


def _check(method: str, rule: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if rule not in METHODS[method]:
        raise ValueError(f"{method} prunes by rule {' or '.join(map(repr, METHODS[method]))}, not {rule!r}")


def _data(base: dict, n_train, n_test):
    return data_mod.load(base["config"]["dataset"]).subset(n_train, n_test).to(device())


def _curve_data(d):
    """``d`` with the first ``criteria_benchmark.CURVE_TEST`` test images: the per-epoch curves' test set."""
    n = criteria_benchmark.CURVE_TEST
    return data_mod.Cifar10(d.train_x, d.train_y, d.test_x[:n], d.test_y[:n], d.copy)


# --------------------------------------------------------------------------- the regularised training

@plan.recipe
def regularise(profile: str | None = None, method: str = "ssl") -> dict:
    """The baseline trained with ``method``'s regulariser (the preset's ``train`` recipe and its settings)."""
    p = preset(profile)
    _check(method, METHODS.get(method, ("?",))[0])
    base = baseline.run(p["baseline"])
    config = {"part": "regularise", "profile": p["profile"], "method": method, "baseline": base["hash"],
              "model": base["config"]["model"], "n_train": p["n_train"], "n_test": p["n_test"],
              "sparsity": p["train"], method: p[method]}
    if method == "bar":
        config["target"] = p["target"]

    def fn(config, paths):
        model = baseline.load_model(base)
        d = _data(base, config["n_train"], config["n_test"])
        train = dict(config["sparsity"], checkpoint=paths["checkpoint"], desc=f"{method} training")
        seed_everything(train["seed"])
        out = {}
        if method == "ssl":
            s = config["ssl"]
            blocks = group_lasso.residual_blocks(model)
            before = group_lasso.summary(model, blocks, s["threshold"])
            curves = fit(model, _curve_data(d), penalty=group_lasso.penalty(model, blocks, s["lam"]), **train)
            out["group_norms"] = {"before": before, "after": group_lasso.summary(model, blocks, s["threshold"])}
        else:
            s = config["bar"]
            masks, info = bar.prune(model, _curve_data(d), budget=1 - config["target"], lam=s["lam"], scale=s["scale"],
                                    tolerance=s["tolerance"], margin=s["margin"], slope=s["slope"], cap=s["cap"],
                                    **train)
            curves = info.pop("curves")
            out["masks"] = _to_json(masks)
            out["bar"] = info
        save_atomic(model.state_dict(), paths["weights"])
        return {**d.describe(), "model": config["model"], "weights": paths["weights"].name, "curves": curves, **out,
                "metrics": {"test_acc": evaluate(model, d.test_x, d.test_y)["acc"],
                            "baseline_test_acc": base["metrics"]["test_acc"],
                            **({"flops_share": out["bar"]["flops_share"],
                                "closed_to_fit": out["bar"]["closed_to_fit"]} if method == "bar" else {})}}
    return runs.run(EXPERIMENT, config, fn)


def regularised_model(record: dict):
    """The network of a ``regularise`` record (BAR: the gates folded into its BNs), weights_only loaded."""
    model = baseline.load_model(baseline.run(preset(record["config"]["profile"])["baseline"]))
    model.load_state_dict(runs.load_weights(runs.paths(EXPERIMENT, record["config"])["weights"],
                                            map_location=device()))
    return model.eval()


# --------------------------------------------------------------------------- masks, random control, shrink

def _to_json(masks: dict) -> dict:
    return {n: k.tolist() for n, k in masks.items()}


def _from_json(masks: dict) -> dict:
    return {n: torch.tensor(k, dtype=torch.bool) for n, k in masks.items()}


def random_like(masks: dict, seed: int) -> dict:
    """Masks that keep as many filters as ``masks`` in every layer, drawn uniformly at random (``seed``)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, keep in masks.items():
        new = torch.zeros(len(keep), dtype=torch.bool)
        new[torch.randperm(len(keep), generator=g)[: int(keep.sum())]] = True
        out[n] = new
    return out


@plan.recipe
def prune(profile: str | None = None, method: str = "ssl", rule: str = "threshold",
          control_seed: int | None = None) -> dict:
    """Masks of ``method`` by ``rule`` (module docstring), or the random control of them, and the shrunk network's
    true counts and accuracy before fine-tuning."""
    p = preset(profile)
    _check(method, rule)
    base, rrec = baseline.run(p["baseline"]), regularise(profile, method)
    config = {"part": "prune", "profile": p["profile"], "method": method, "rule": rule, "regularise": rrec["hash"],
              "baseline": base["hash"], "control_seed": control_seed, "n_test": p["n_test"],
              **({"target": p["target"]} if rule == "flops" else {}),
              **({"threshold": p["ssl"]["threshold"]} if rule == "threshold" else {})}
    if control_seed is not None:
        config["of"] = prune(profile, method, rule)["hash"]

    def fn(config, paths):
        if control_seed is not None:
            masks = random_like(_from_json(prune(profile, method, rule)["masks"]), control_seed)
            model, extra = baseline.load_model(base), {}
        else:
            model, extra = regularised_model(rrec), {}
            if rule == "gates":
                masks = _from_json(rrec["masks"])
            else:
                blocks = group_lasso.residual_blocks(model)
                if rule == "flops":
                    found = group_lasso.threshold_for_flops(model, blocks, config["target"], CIFAR)
                    extra = {"threshold": found["threshold"], "search_evaluations": found["evaluations"]}
                masks = group_lasso.masks(model, blocks, extra.get("threshold", config.get("threshold")))
        small = surgery.shrink(model, masks, CIFAR)
        true, dense = count(small, CIFAR), count(model, CIFAR)
        d = _data(base, 0, config["n_test"])
        return {"model": base["config"]["model"], "masks": _to_json(masks),
                "kept": {n: int(k.sum()) for n, k in masks.items()}, "filters": {n: len(k) for n, k in masks.items()},
                "metrics": {"test_acc_before_finetune": evaluate(small, d.test_x, d.test_y)["acc"],
                            "flops_reduction": 1 - true["flops"] / dense["flops"],
                            "params_reduction": 1 - true["params"] / dense["params"],
                            "filters_removed": 1 - sum(int(k.sum()) for k in masks.values()) / sum(len(k) for k in masks.values()),
                            "blocks_removed": sum(int(not k.any()) for n, k in masks.items() if n.endswith("conv1")),
                            "params_true": true["params"], "flops_true": true["flops"],
                            "params_dense": dense["params"], "flops_dense": dense["flops"], **extra}}
    return runs.run(EXPERIMENT, config, fn)


def pruned_model(record: dict):
    """The shrunk network of a ``prune`` record (rebuilt from its source weights and its masks)."""
    c = record["config"]
    if c["control_seed"] is not None:
        model = baseline.load_model(baseline.run(preset(c["profile"])["baseline"]))
    else:
        model = regularised_model(regularise(c["profile"], c["method"]))
    return surgery.shrink(model, _from_json(record["masks"]), CIFAR)


# --------------------------------------------------------------------------- fine-tuning and the whole study

@plan.recipe
def finetune(profile: str | None = None, method: str = "ssl", rule: str = "threshold", seed: int = 0,
             control: bool = False) -> dict:
    """The pruned network (or its random control, channels drawn with ``seed``) fine-tuned with the criteria
    benchmark's recipe and images."""
    p, cb = preset(profile), profiles.get("criteria_benchmark", profile)
    base = baseline.run(p["baseline"])
    prec = prune(profile, method, rule, seed if control else None)
    config = {"part": "finetune", "profile": p["profile"], "prune": prec["hash"], "method": method, "rule": rule,
              "control": control, "seed": seed, "n_train": cb["n_train"], "n_test": cb["n_test"],
              "model": base["config"]["model"], "finetune": cb["finetune"]}

    def fn(config, paths):
        small = pruned_model(prec)
        d = _data(base, config["n_train"], config["n_test"])
        label = f"{method} {rule}{' random control' if control else ''} seed {seed}"
        curves, acc = criteria_benchmark._finetune(small, d, seed, config["finetune"], paths["checkpoint"], label)
        return {"model": config["model"], **d.describe(), "curves": curves,
                "metrics": {"test_acc": acc, "baseline_test_acc": base["metrics"]["test_acc"], **prec["metrics"]}}
    return runs.run(EXPERIMENT, config, fn)


def all_runs(profile: str | None = None) -> dict:
    """Every run the chapter would show: both regularised trainings, each point's pruned network fine-tuned at
    every seed, and its random control at the same seeds."""
    p = preset(profile)
    return {"regularise": {m: regularise(profile, m) for m in METHODS},
            "finetune": [finetune(profile, m, r, s) for m, r in p["points"] for s in p["seeds"]],
            "control": [finetune(profile, m, r, s, control=True) for m, r in p["points"] for s in p["seeds"]]}


if __name__ == "__main__":
    ap = profiles.cli_parser(__doc__)
    res = all_runs(ap.parse_args().profile)
    for r in res["finetune"] + res["control"]:
        c, m = r["config"], r["metrics"]
        print(f"{c['method']:>3} {c['rule']:>9}{' control' if c['control'] else '        '} seed {c['seed']}: "
              f"acc {m['test_acc']:.4f} (before {m['test_acc_before_finetune']:.4f}), FLOPs -{m['flops_reduction']:.1%}")
