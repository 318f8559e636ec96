"""The rest of the survey, element-wise (issue 19): three weight-pruning methods of the summary's Section 1
beside the weight-pruning chapter's magnitude and OBD curves, on the same dense LeNet-300-100 / LeNet-5
(``weight_pruning.dense``), at the same sparsities, with the same retraining recipe. Each part is a cached
run of experiment "survey_elementwise":

* ``oneshot_retrained(profile, dataset, model, method)``: each sparsity pruned straight from the dense net
  (one shot) by ``method``, its accuracy then, and after the chapter's retraining (pruned weights held at
  zero). ``"magnitude"`` and ``"random"`` (the control: uniform random scores, seeded) prune with one
  threshold over all layers; ``"obs"`` is layer-wise Optimal Brain Surgeon (Hassibi & Stork 1993 as L-OBS,
  Dong et al. 2017, ``reprolib.criteria.obs``) with its compensating update, each layer losing as many
  weights as global magnitude pruning takes from it at that sparsity (ours: L-OBS sets a ratio per layer;
  this one makes the layers' shares equal to the magnitude curve's, so only the choice of weights and the
  update differ);
* ``gradual(profile, dataset, model, sparsity)``: gradual magnitude pruning to ``sparsity`` during one
  retraining run from the dense net, Zhu & Gupta's cubic schedule (``reprolib.gradual``);
* ``regularised(profile, dataset, model, regulariser)``: the dense net trained further with the
  sensitivity-driven regulariser (Tartaglione et al. 2018, specific variant, ``reprolib.sensitivity``) or,
  as its control, the same decoupled shrink without sensitivity (``"l2"``); weights kept;
* ``regularised_curve(profile, dataset, model, regulariser)``: that network thresholded (|w| below the
  threshold that gives each sparsity set to zero), then retrained as the others.

The sparsity is the share of pruned weights over every Conv2d / Linear weight (biases not pruned), as in
the chapter. ``all_runs`` also returns the chapter's own curves (``weight_pruning.curve``) it sits beside.

    python -m reprolib.experiments.survey_elementwise --profile budget     # every run (resumable)
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from tqdm import tqdm

from .. import data as data_mod, masks as masks_mod, plan, profiles, runs
from ..criteria import obs as obs_mod
from ..device import current as device
from ..gradual import GradualMagnitude, schedule_for
from ..sensitivity import SensitivityRegulariser
from ..train import evaluate, fit, save_atomic, seed_everything
from . import weight_pruning as wp

EXPERIMENT = "survey_elementwise"
METHODS = ("magnitude", "random", "obs")
REGULARISERS = ("sensitivity", "l2")

# The data, sparsities, scope and retraining recipe are the weight-pruning chapter's (tests/test_survey_elementwise.py
# checks that they stay equal to weight_pruning.PRESETS); the rest is the methods' own.
# gradual: pruning from `begin` to `end` of the retraining run (shares of its steps), masks every `dt` steps
#   (budget: the first of the 2 epochs, 1876 steps, masks every 100 steps, Zhu & Gupta's range 100-1000: 9 updates).
#   The same 2 epochs as one sparsity's retraining in oneshot_retrained, so the two compare at equal training.
# regularise: `lam` per step (Eq. 9's lambda, not multiplied by the learning rate), the `train` recipe from the dense
#   net; "l2" is the same shrink without sensitivity (our control). Ours, chosen before measuring and not tuned: lr 0.01
#   (the dense training's peak, constant, so that the loss keeps pulling the sensitive weights back to the end) and
#   lam 2e-3, at which a weight with no sensitivity and no gradient falls to exp(-2e-3 x 1876) = 2% of its value in
#   the 2 budget epochs (938 steps an epoch).
# obs: the layers' inputs from `batches` x `batch` training images (4,096 in budget: more than the 784 or 800
#   inputs of the widest layers, so H is not singular but for constant pixels and dead units), damping `damp`.
PRESETS = {
    "smoke": dict(datasets=["fashion-mnist"], models=["lenet300", "lenet5"], n_train=1024, n_test=512,
                  retrain=dict(epochs=1, lr=0.005, batch_size=64, momentum=0.9, nesterov=False,
                               weight_decay=5e-4, schedule="cosine", bf16=True, channels_last=True, seed=0),
                  sparsities=[0.5, 0.9], scope="global", random_seed=0,
                  gradual=dict(begin=0.0, end=0.5, dt=2, initial_sparsity=0.0),
                  regularisers=["sensitivity", "l2"],
                  regularise=dict(lam=2e-3, train=dict(epochs=1, lr=0.01, batch_size=64, momentum=0.9, nesterov=False,
                                                       weight_decay=5e-4, schedule="constant", bf16=True,
                                                       channels_last=True, seed=0)),
                  obs=dict(batches=2, batch=64, damp=1e-2)),
    "budget": dict(datasets=["fashion-mnist"], models=["lenet300", "lenet5"], n_train=None, n_test=None,
                   retrain=dict(epochs=2, lr=0.001, batch_size=64, momentum=0.9, nesterov=False,
                                weight_decay=5e-4, schedule="cosine", bf16=True, channels_last=True, seed=0),
                   sparsities=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98], scope="global", random_seed=0,
                   gradual=dict(begin=0.0, end=0.5, dt=100, initial_sparsity=0.0),
                   regularisers=["sensitivity", "l2"],
                   regularise=dict(lam=2e-3, train=dict(epochs=2, lr=0.01, batch_size=64, momentum=0.9, nesterov=False,
                                                        weight_decay=5e-4, schedule="constant", bf16=True,
                                                        channels_last=True, seed=0)),
                   obs=dict(batches=32, batch=128, damp=1e-2)),
}


def preset(profile: str | None = None) -> dict:
    """This study's preset of ``profile`` (``profiles.get``); it has none for ``paper`` (NoPresetError)."""
    return profiles.get(EXPERIMENT, profile)


# --------------------------------------------------------------------------- shared steps

def _data(p: dict, dataset: str):
    return data_mod.load(dataset).subset(p["n_train"], p["n_test"]).to(device())


def _layers(net: nn.Module) -> list[str]:
    return wp.weight_layers(net)


def random_scores(model: nn.Module, layers: list[str], seed: int) -> dict[str, torch.Tensor]:
    """Uniform random scores shaped like each weight (the control), drawn on the CPU from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(model.get_submodule(n).weight.shape, generator=g) for n in layers}


def magnitude_counts(model: nn.Module, layers: list[str], sparsity: float, scope: str) -> dict[str, int]:
    """How many weights magnitude pruning to ``sparsity`` (``scope``) removes from each layer."""
    masks = masks_mod.weight_masks({n: model.get_submodule(n).weight.detach().abs() for n in layers}, sparsity, scope)
    return {n: int((~m).sum()) for n, m in masks.items()}


def _layer_shares(masks: dict) -> dict[str, float]:
    return {n: 1 - int(m.sum()) / m.numel() for n, m in masks.items()}


def retrain_with_masks(net: nn.Module, masks: dict, d, recipe: dict, checkpoint, desc: str) -> list[dict]:
    """The chapter's retraining: ``recipe`` (train.fit arguments) with the pruned weights held at zero."""
    hooks = wp.hold_weight_masks(net, masks)
    try:
        seed_everything(recipe["seed"])
        return fit(net, d, checkpoint=checkpoint, desc=desc, **recipe)
    finally:
        for h in hooks:
            h.remove()


def _curve_rows(net: nn.Module, d, p: dict, paths: dict, prune) -> list[dict]:
    """For each sparsity: ``prune(copy, i, s)`` -> masks (pruning the copy in place); accuracy then, and after
    the retraining. Checkpoints per sparsity, removed at the end."""
    rows = []
    for i, s in enumerate(tqdm(p["sparsities"], desc="sparsities", leave=False), 1):
        pruned = copy.deepcopy(net)
        masks = prune(pruned, i - 1, s)
        before = evaluate(pruned, d.test_x, d.test_y)["acc"]
        ckpt = paths["checkpoint"].with_name(f"{paths['checkpoint'].stem}-s{i}.pt")
        retrain_with_masks(pruned, masks, d, p["retrain"], ckpt, f"retrain {s:.0%}")
        rows.append({"sparsity": masks_mod.sparsity(masks), "acc_before_retrain": before,
                     "acc": evaluate(pruned, d.test_x, d.test_y)["acc"],
                     "pruned_stay_zero": wp.pruned_are_zero(pruned, masks), "layer_sparsity": _layer_shares(masks)})
    for ckpt in paths["checkpoint"].parent.glob(paths["checkpoint"].stem + "-s*.pt"):
        ckpt.unlink()
    return rows


def _base_config(p: dict, part: str, model: str) -> dict:
    return {"part": part, "profile": p["profile"], "model": model, "n_train": p["n_train"], "n_test": p["n_test"]}


# --------------------------------------------------------------------------- one-shot pruning + retraining

@plan.recipe
def oneshot_retrained(profile: str | None = None, dataset: str = "fashion-mnist", model: str = "lenet300",
                      method: str = "magnitude") -> dict:
    """Each sparsity pruned from the dense net by ``method`` ("magnitude", "random", "obs"), then retrained."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    p = preset(profile)
    drec = wp.dense(profile, dataset, model)
    config = {**_base_config(p, "oneshot_retrained", model), "dense": drec["hash"], "method": method,
              "sparsities": p["sparsities"], "scope": p["scope"], "retrain": p["retrain"],
              **({"obs": p["obs"]} if method == "obs" else {}),
              **({"random_seed": p["random_seed"]} if method == "random" else {})}

    def fn(config, paths):
        d = _data(p, dataset)
        net = wp.load_dense(drec)
        layers = _layers(net)
        if method == "obs":
            o = p["obs"]
            n = o["batches"] * o["batch"]
            batches = list(data_mod.batches(d.train_x[:n], d.train_y[:n], o["batch"]))
            settings = obs_mod.obs_prune_many(net, layers, batches,
                                              [magnitude_counts(net, layers, s, p["scope"]) for s in p["sparsities"]],
                                              damp=o["damp"])

            def prune(m, i, s):
                with torch.no_grad():
                    for name, (w, _) in settings[i].items():
                        m.get_submodule(name).weight.copy_(w)
                return {name: keep for name, (_, keep) in settings[i].items()}
        else:
            scores = (wp.weight_scores(net, "magnitude", layers) if method == "magnitude"
                      else random_scores(net, layers, p["random_seed"]))

            def prune(m, i, s):
                return wp.prune_to(m, scores, s, scope=p["scope"])
        rows = _curve_rows(net, d, p, paths, prune)
        return {"model": model, **d.describe(), "rows": rows,
                "metrics": {"dense_test_acc": drec["metrics"]["test_acc"], "final_sparsity": rows[-1]["sparsity"],
                            "final_acc": rows[-1]["acc"], "final_acc_before_retrain": rows[-1]["acc_before_retrain"]}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- gradual magnitude pruning

@plan.recipe
def gradual(profile: str | None = None, dataset: str = "fashion-mnist", model: str = "lenet300",
            sparsity: float = 0.9) -> dict:
    """The dense net retrained once (the chapter's recipe) while gradual magnitude pruning takes it to ``sparsity``."""
    p = preset(profile)
    drec = wp.dense(profile, dataset, model)
    config = {**_base_config(p, "gradual", model), "dense": drec["hash"], "final_sparsity": sparsity,
              "scope": p["scope"], "gradual": p["gradual"], "train": p["retrain"]}

    def fn(config, paths):
        d = _data(p, dataset)
        net = wp.load_dense(drec)
        recipe = p["retrain"]
        total = math.ceil(len(d.train_y) / recipe["batch_size"]) * recipe["epochs"]
        g = p["gradual"]
        sched = schedule_for(total, begin=g["begin"], end=g["end"], dt=g["dt"])
        pruner = GradualMagnitude(net, _layers(net), final_sparsity=sparsity, initial_sparsity=g["initial_sparsity"],
                                  scope=p["scope"], **sched)
        seed_everything(recipe["seed"])
        curves = fit(net, d, checkpoint=paths["checkpoint"], desc=f"gradual {sparsity:.0%}", on_step=pruner, **recipe)
        return {"model": model, **d.describe(), "curves": curves, "schedule": {**sched, "total_steps": total},
                "mask_updates": pruner.history,
                "metrics": {"sparsity": masks_mod.sparsity(pruner.masks),
                            "test_acc": evaluate(net, d.test_x, d.test_y)["acc"],
                            "dense_test_acc": drec["metrics"]["test_acc"],
                            "pruned_stay_zero": wp.pruned_are_zero(net, pruner.masks),
                            "layer_sparsity": _layer_shares(pruner.masks)}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- sensitivity-driven regularisation

def _abs_quantiles(net: nn.Module, layers: list[str]) -> dict[str, float]:
    w = torch.cat([net.get_submodule(n).weight.detach().abs().reshape(-1).float().cpu() for n in layers])
    qs = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    return {f"q{q}": float(v) for q, v in zip(qs, torch.quantile(w, torch.tensor(qs)))}


@plan.recipe
def regularised(profile: str | None = None, dataset: str = "fashion-mnist", model: str = "lenet300",
                regulariser: str = "sensitivity") -> dict:
    """The dense net trained further with ``regulariser`` ("sensitivity": Tartaglione et al.'s, specific variant;
    "l2": the same shrink with every insensitivity 1); its weights are kept."""
    if regulariser not in REGULARISERS:
        raise ValueError(f"unknown regulariser {regulariser!r}: choose one of {', '.join(REGULARISERS)}")
    p = preset(profile)
    drec = wp.dense(profile, dataset, model)
    r = p["regularise"]
    config = {**_base_config(p, "regularised", model), "dense": drec["hash"], "regulariser": regulariser,
              "lam": r["lam"], "train": r["train"]}

    def fn(config, paths):
        d = _data(p, dataset)
        net = wp.load_dense(drec)
        layers = _layers(net)
        before = _abs_quantiles(net, layers)
        reg = SensitivityRegulariser(layers, r["lam"], variant="specific" if regulariser == "sensitivity" else "l2")
        seed_everything(r["train"]["seed"])
        curves = fit(net, d, checkpoint=paths["checkpoint"], desc=f"{regulariser} lam {r['lam']}", on_step=reg,
                     **r["train"])
        save_atomic(net.state_dict(), paths["weights"])
        return {"model": model, **d.describe(), "curves": curves, "weights": paths["weights"].name,
                "abs_weight_quantiles": {"dense": before, "regularised": _abs_quantiles(net, layers)},
                "metrics": {"test_acc": evaluate(net, d.test_x, d.test_y)["acc"],
                            "dense_test_acc": drec["metrics"]["test_acc"],
                            "insensitivity_last_step": {n: {"mean": float(reg.last[n]), "min": float(reg.last_min[n])}
                                                        for n in layers}}}
    return runs.run(EXPERIMENT, config, fn)


def load_regularised(record: dict) -> nn.Module:
    return wp.load_net(record, EXPERIMENT)


@plan.recipe
def regularised_curve(profile: str | None = None, dataset: str = "fashion-mnist", model: str = "lenet300",
                      regulariser: str = "sensitivity") -> dict:
    """The regularised net thresholded at each sparsity (the |w| below which weights go), then retrained."""
    p = preset(profile)
    rrec = regularised(profile, dataset, model, regulariser)
    config = {**_base_config(p, "regularised_curve", model), "regularised": rrec["hash"], "regulariser": regulariser,
              "sparsities": p["sparsities"], "scope": p["scope"], "retrain": p["retrain"]}

    def fn(config, paths):
        d = _data(p, dataset)
        net = load_regularised(rrec)
        layers = _layers(net)
        scores = wp.weight_scores(net, "magnitude", layers)
        thresholds = []

        def prune(m, i, s):
            masks = wp.prune_to(m, scores, s, scope=p["scope"])
            kept = [scores[n][masks[n].to(scores[n].device)] for n in layers]
            thresholds.append(float(torch.cat([k.reshape(-1) for k in kept]).min()))
            return masks
        rows = _curve_rows(net, d, p, paths, prune)
        for row, t in zip(rows, thresholds):
            row["threshold"] = t  # the smallest |w| kept (global scope: the paper's threshold T)
        return {"model": model, **d.describe(), "rows": rows,
                "metrics": {"regularised_test_acc": rrec["metrics"]["test_acc"],
                            "final_sparsity": rows[-1]["sparsity"], "final_acc": rows[-1]["acc"],
                            "final_acc_before_retrain": rows[-1]["acc_before_retrain"]}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- the chapter's runs

def all_runs(profile: str | None = None) -> dict:
    """Every run the weight-pruning chapter's survey section shows (trains what is missing): the chapter's own
    magnitude and OBD curves it sits beside, and this module's runs."""
    p = preset(profile)
    grid = [(d, m) for d in p["datasets"] for m in p["models"]]
    return {"neighbours": [wp.curve(profile, d, m, c, mode) for d, m in grid for c in wp.CRITERIA for mode in wp.MODES],
            "oneshot_retrained": [oneshot_retrained(profile, d, m, meth) for d, m in grid for meth in METHODS],
            "gradual": [gradual(profile, d, m, s) for d, m in grid for s in p["sparsities"]],
            "regularised": [regularised_curve(profile, d, m, r) for d, m in grid for r in p["regularisers"]]}


if __name__ == "__main__":
    ap = profiles.cli_parser(__doc__)
    res = all_runs(ap.parse_args().profile)
    for r in res["oneshot_retrained"] + res["regularised"]:
        c = r["config"]
        print(f"{c['model']} {c.get('method', c.get('regulariser'))}: "
              + ", ".join(f"{row['sparsity']:.2f}->{row['acc_before_retrain']:.4f}/{row['acc']:.4f}"
                          for row in r["rows"]))
    for r in res["gradual"]:
        print(f"{r['config']['model']} gradual {r['metrics']['sparsity']:.2f}: acc {r['metrics']['test_acc']:.4f}")
