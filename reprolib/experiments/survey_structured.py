"""The rest of the survey's structured methods (issue 19) beside the criteria benchmark: LASSO channel selection
+ least squares (He et al. 2017, summary 4.2), KSE (Li et al. 2019, 4.8), DCP (Zhuang et al. 2018, 4.4) and DAC
(Li et al. 2019, 6.1), on the criteria benchmark's ResNet-56 baseline, targets, seeds and fine-tuning recipe.
Each part is a cached run of experiment "survey_structured":

* ``scores(profile, criterion, seed)``: filter scores of the *block-internal* convs (``layerS.B.conv1``; LASSO, KSE
  and DCP judge input channels, which only these convs' filters are: ``reprolib.criteria.channels``);
* ``search`` / ``finetune(profile, criterion, scope, target, seed)``: the criteria benchmark's equal-true-FLOPs
  search and fine-tuning, on those scores (``random`` and ``l1norm`` on the same convs are the control and the
  bridge to the benchmark's rows, which prune every conv);
* ``lasso_finetune(profile, scope, target, seed)``: the LASSO masks *with* He et al.'s W-step (least-squares
  kernels of each pruned layer's consumer, layer after layer), then the same fine-tuning;
* ``selection_comparison(profile)``: LASSO against ThiNet's greedy selection on the same sampled rows of every
  internal layer, with both reconstructions' errors (no training);
* ``dac(profile, target, seed)``: DAC's data-free decomposition at the benchmark's FLOPs targets, accuracy before
  (the paper's protocol: no data at all) and after the same fine-tuning, with the audit of the forward passes
  DAC made (``reprolib.dac.forward_audit``: none may see a non-zero input).

Not in ``reprolib.experiments.NAMES`` yet: ``preset`` reads this module's ``PRESETS`` directly.

    python -m reprolib.experiments.survey_structured --profile budget     # every run (resumable)
"""
from __future__ import annotations

import copy

import torch

from .. import criteria, dac as dac_mod, data as data_mod, masks as masks_mod, plan, profiles, runs, surgery
from ..counting import count
from ..criteria import lasso as lasso_mod, thinet
from ..criteria.channels import consumers, internal_layers
from ..device import current as device
from ..train import evaluate
from . import criteria_benchmark as cb

EXPERIMENT = "survey_structured"
_CB = cb.PRESETS

# Same baseline, targets, seeds, score images and fine-tuning recipe as the criteria benchmark's profile (read
# from its PRESETS, so that the rows stay beside its rows); what is new is stated per key.
PRESETS = {
    # ResNet-20 smoke baseline, one target per scope, tiny data: exercises every part in about a minute.
    "smoke": dict(baseline=_CB["smoke"]["baseline"], criteria=["lasso", "kse", "dcp", "random"],
                  targets={"uniform": [0.5], "global": [0.5]}, seeds=[0],
                  score_batches=_CB["smoke"]["score_batches"], score_batch=_CB["smoke"]["score_batch"],
                  n_train=_CB["smoke"]["n_train"], n_test=_CB["smoke"]["n_test"],
                  finetune=copy.deepcopy(_CB["smoke"]["finetune"]),
                  lasso=dict(positions=5), dcp=dict(n_batches=1, head_epochs=2, sub_passes=1),
                  compare_keep=[0.5], dac_targets=[0.5]),
    # The benchmark's budget grid (3 uniform targets, 1 global, 2 seeds, 5 x 128 score images, one epoch on
    # 10,000 images). Ours: LASSO samples 10 positions per image (He et al.'s number); DCP selects on the first
    # 2 of the 5 score batches (256 images), its 2 auxiliary heads trained 20 passes over them, one SGD pass per
    # greedy step (the authors' subproblem); LASSO and ThiNet compared at keeping half of each layer's channels.
    "budget": dict(baseline=_CB["budget"]["baseline"], criteria=["lasso", "kse", "dcp", "l1norm", "random"],
                   targets=copy.deepcopy(_CB["budget"]["targets"]), seeds=list(_CB["budget"]["seeds"]),
                   score_batches=_CB["budget"]["score_batches"], score_batch=_CB["budget"]["score_batch"],
                   n_train=_CB["budget"]["n_train"], n_test=_CB["budget"]["n_test"],
                   finetune=copy.deepcopy(_CB["budget"]["finetune"]),
                   lasso=dict(positions=10), dcp=dict(n_batches=2, head_epochs=20, sub_passes=1),
                   compare_keep=[0.5], dac_targets=list(_CB["budget"]["targets"]["uniform"])),
}

DATA_CRITERIA = ("lasso", "dcp")
# What each new criterion computes, in its scores' config: a changed definition gets new runs.
DEFINITIONS = {"lasso": "He et al. 2017: entry lambda on the exact LASSO path, unit-norm kernels",
               "kse": "Li et al. 2019: sqrt(s / (1 + e)), k = 5, min-max, released code's constants",
               "dcp": "Zhuang et al. 2018: greedy order, joint MSE + CE gradient, aux heads only trained"}
CIFAR = cb.CIFAR


def preset(profile: str | None = None) -> dict:
    """This study's preset of ``profile`` (``profiles.get``); it has none for ``paper`` (NoPresetError)."""
    return profiles.get("survey_structured", profile)


def _score_batches(base: dict, p: dict) -> list:
    """The benchmark's score images: the first score_batches x score_batch training images, as a list."""
    d = data_mod.load(base["config"]["dataset"])
    n = p["score_batches"] * p["score_batch"]
    return list(data_mod.batches(d.train_x[:n].to(device()), d.train_y[:n].to(device()), p["score_batch"]))


def _options(criterion: str, p: dict, seed: int) -> dict:
    if criterion == "lasso":
        return {"positions": p["lasso"]["positions"], "n_batches": p["score_batches"]}
    if criterion == "dcp":
        return dict(p["dcp"], seed=0)
    if criterion == "random":
        return {"seed": seed}
    return {}


# --------------------------------------------------------------------------- scores, search, fine-tune

@plan.recipe
def scores(profile: str | None = None, criterion: str = "lasso", seed: int = 0) -> dict:
    """Per-filter scores of ``criterion`` for every block-internal conv of the baseline."""
    p = preset(profile)
    criteria.get(criterion)  # a clear error for an unknown name
    model, base = cb._baseline(p["baseline"])
    config = {"part": "scores", "profile": p["profile"], "baseline": base["hash"], "criterion": criterion,
              "layers": "internal", "seed": seed if criterion == "random" else 0,
              **({"definition": DEFINITIONS[criterion]} if criterion in DEFINITIONS else {}),
              **({"score_batches": p["score_batches"], "score_batch": p["score_batch"],
                  "options": _options(criterion, p, 0)} if criterion in DATA_CRITERIA else {})}

    def fn(config, paths):
        layers = internal_layers(model)
        batches = _score_batches(base, p) if criterion in DATA_CRITERIA else None
        s = criteria.get(criterion)(model, layers, batches, **_options(criterion, p, config["seed"]))
        return {"model": base["model"], "metrics": {"layers": len(s)}, "scores": {k: v.tolist() for k, v in s.items()}}
    return runs.run(EXPERIMENT, config, fn)


@plan.recipe
def search(profile: str | None = None, criterion: str = "lasso", scope: str = "uniform", target: float = 0.5,
           seed: int = 0) -> dict:
    """The rate at which ``criterion``'s masks on the internal convs remove ``target`` of the true FLOPs."""
    p = preset(profile)
    model, base = cb._baseline(p["baseline"])
    srec = scores(profile, criterion, seed)
    config = {"part": "search", "profile": p["profile"], "baseline": base["hash"], "scores": srec["hash"],
              "criterion": criterion, "scope": scope, "target": target, "n_test": p["n_test"]}

    def fn(config, paths):
        return cb.search_record(model, base, cb._scores_of(srec), target, scope, p["n_test"])
    return runs.run(EXPERIMENT, config, fn)


def _masks(profile, criterion, scope, target, seed=0):
    """(baseline model, baseline record, masks, search record) of one point."""
    p = preset(profile)
    model, base = cb._baseline(p["baseline"])
    rec = search(profile, criterion, scope, target, seed)
    masks = cb.masks_at(cb._scores_of(scores(profile, criterion, seed)), rec["metrics"]["rate"], scope)
    return model, base, masks, rec


@plan.recipe
def finetune(profile: str | None = None, criterion: str = "lasso", scope: str = "uniform", target: float = 0.5,
             seed: int = 0) -> dict:
    """Prune the internal convs by ``criterion`` to ``target`` of the true FLOPs removed, shrink, fine-tune
    (the criteria benchmark's recipe)."""
    p = preset(profile)
    _, base = cb._baseline(p["baseline"])
    srec = search(profile, criterion, scope, target, seed)
    config = {"part": "finetune", "profile": p["profile"], "search": srec["hash"], "criterion": criterion,
              "scope": scope, "target": target, "seed": seed, "n_train": p["n_train"], "n_test": p["n_test"],
              "finetune": p["finetune"]}

    def fn(config, paths):
        model, _, masks, _ = _masks(profile, criterion, scope, target, seed)
        small = surgery.shrink(model, masks, CIFAR)
        d = data_mod.load(base["config"]["dataset"]).subset(p["n_train"], p["n_test"]).to(device())
        curves, acc = cb._finetune(small, d, seed, p["finetune"], paths["checkpoint"],
                                   f"{criterion} {scope} {target:.0%} seed {seed}")
        return {"model": base["model"], **d.describe(), "curves": curves,
                "metrics": {"test_acc": acc, "baseline_test_acc": base["metrics"]["test_acc"], **srec["metrics"]}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- LASSO's W-step

@plan.recipe
def lasso_finetune(profile: str | None = None, scope: str = "uniform", target: float = 0.5, seed: int = 0) -> dict:
    """The LASSO masks of ``finetune(profile, "lasso", ...)``, each pruned layer's consumer refit by He et al.'s
    least squares (on the score images, layer after layer, against the unpruned network), then fine-tuned alike."""
    p = preset(profile)
    _, base = cb._baseline(p["baseline"])
    srec = search(profile, "lasso", scope, target, seed)
    config = {"part": "lasso_finetune", "profile": p["profile"], "search": srec["hash"], "criterion": "lasso",
              "scope": scope, "target": target, "seed": seed, "w_step": {"positions": p["lasso"]["positions"],
              "score_batches": p["score_batches"], "score_batch": p["score_batch"], "ridge": lasso_mod.RIDGE},
              "n_train": p["n_train"], "n_test": p["n_test"], "finetune": p["finetune"]}

    def fn(config, paths):
        model, _, masks, _ = _masks(profile, "lasso", scope, target, seed)
        refit, layers = lasso_mod.reconstruct_network(model, masks, _score_batches(base, p),
                                                      positions=p["lasso"]["positions"])
        small = surgery.shrink(refit, masks, CIFAR)
        d = data_mod.load(base["config"]["dataset"]).subset(p["n_train"], p["n_test"]).to(device())
        before = evaluate(small, d.test_x, d.test_y)["acc"]
        curves, acc = cb._finetune(small, d, seed, p["finetune"], paths["checkpoint"],
                                   f"lasso + W-step {scope} {target:.0%} seed {seed}")
        return {"model": base["model"], **d.describe(), "curves": curves, "w_step": layers,
                "metrics": {"test_acc": acc, "test_acc_after_w_step": before,
                            "baseline_test_acc": base["metrics"]["test_acc"], **srec["metrics"]}}
    return runs.run(EXPERIMENT, config, fn)


@plan.recipe
def selection_comparison(profile: str | None = None) -> dict:
    """Per internal conv and keep share: LASSO's and ThiNet's selections on the same sampled rows of the
    baseline, their overlap and each one's reconstruction errors (``lasso.compare_with_thinet``)."""
    p = preset(profile)
    model, base = cb._baseline(p["baseline"])
    config = {"part": "selection_comparison", "profile": p["profile"], "baseline": base["hash"],
              "keep": p["compare_keep"], "positions": p["lasso"]["positions"], "score_batches": p["score_batches"],
              "score_batch": p["score_batch"], "definition": DEFINITIONS["lasso"]}

    def fn(config, paths):
        batches, rows = _score_batches(base, p), []
        for k, layer in enumerate(internal_layers(model)):
            pt = lasso_mod.collect(model, layer, batches, positions=p["lasso"]["positions"], seed=k)
            for share in p["compare_keep"]:
                C = pt.W.shape[1]
                rows.append({"layer": layer, "consumer": consumers(model, [layer])[layer], "keep_share": share,
                             **lasso_mod.compare_with_thinet(pt, thinet.n_kept(C, share))})
        jac = [r["jaccard_lasso_thinet"] for r in rows]
        return {"model": base["model"], "rows": rows,
                "metrics": {"layers": len(rows), "mean_jaccard": sum(jac) / len(jac),
                            "lasso_better_w_step": sum(r["lasso"]["error_weights"] < r["thinet"]["error_weights"]
                                                       for r in rows)}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- DAC

@plan.recipe
def dac(profile: str | None = None, target: float = 0.5, seed: int = 0) -> dict:
    """DAC at ``target`` of the true FLOPs removed: accuracy straight after the data-free decomposition and after
    the benchmark's fine-tuning; the forward passes DAC made, audited."""
    p = preset(profile)
    model, base = cb._baseline(p["baseline"])
    config = {"part": "dac", "profile": p["profile"], "baseline": base["hash"], "target": target,
              "rank_rule": "energy threshold, ours", "seed": seed, "n_train": p["n_train"], "n_test": p["n_test"],
              "finetune": p["finetune"]}

    def fn(config, paths):
        with dac_mod.forward_audit(model) as audit:        # nothing but the decomposition runs in here
            small, found = dac_mod.accelerate(model, target, CIFAR)
        audit = dict(audit)
        if audit["nonzero_inputs"]:
            raise RuntimeError(f"DAC ran the network on data ({audit}): it must be data-free")
        true, dense = count(small, CIFAR), count(model, CIFAR)
        d = data_mod.load(base["config"]["dataset"]).subset(p["n_train"], p["n_test"]).to(device())
        before = evaluate(small, d.test_x, d.test_y)["acc"]
        curves, acc = cb._finetune(small, d, seed, p["finetune"], paths["checkpoint"], f"DAC {target:.0%} seed {seed}")
        return {"model": base["model"], **d.describe(), "curves": curves, "ranks": found["ranks"],
                "data_free_audit": audit,
                "metrics": {"test_acc": acc, "test_acc_before_finetune": before, "tau": found["tau"],
                            "baseline_test_acc": base["metrics"]["test_acc"],
                            "flops_reduction": found["flops_reduction"], "search_evaluations": found["evaluations"],
                            "params_true": true["params"], "flops_true": true["flops"],
                            "params_dense": dense["params"], "flops_dense": dense["flops"],
                            "forward_passes_on_data": audit["nonzero_inputs"]}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- the whole study

def points(profile: str | None = None) -> list[tuple]:
    p = preset(profile)
    return [(c, s, t) for s, targets in p["targets"].items() for t in targets for c in p["criteria"]]


def all_runs(profile: str | None = None) -> dict:
    """Every run the chapter shows (trains what is missing unless REPROLIB_CACHED_ONLY=1)."""
    p = preset(profile)
    return {"finetune": [finetune(profile, c, s, t, seed) for c, s, t in points(profile) for seed in p["seeds"]],
            "lasso_finetune": [lasso_finetune(profile, s, t, seed) for s, targets in p["targets"].items()
                               for t in targets for seed in p["seeds"]],
            "dac": [dac(profile, t, seed) for t in p["dac_targets"] for seed in p["seeds"]],
            "selection_comparison": selection_comparison(profile)}


if __name__ == "__main__":
    ap = profiles.cli_parser(__doc__)
    res = all_runs(ap.parse_args().profile)
    for r in res["finetune"] + res["lasso_finetune"]:
        c = r["config"]
        print(f"{c['part']:>14} {c['criterion']:>7} {c['scope']:>7} {c['target']:.0%} seed {c['seed']}: "
              f"acc {r['metrics']['test_acc']:.4f}, FLOPs -{r['metrics']['flops_reduction']:.1%}")
    for r in res["dac"]:
        m = r["metrics"]
        print(f"DAC {r['config']['target']:.0%} seed {r['config']['seed']}: {m['test_acc_before_finetune']:.4f} -> "
              f"{m['test_acc']:.4f}, FLOPs -{m['flops_reduction']:.1%}, forward passes on data "
              f"{m['forward_passes_on_data']}")
    print("LASSO vs ThiNet, mean Jaccard:", round(res["selection_comparison"]["metrics"]["mean_jaccard"], 3))
