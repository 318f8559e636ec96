"""Weight (unstructured) pruning: the analysis document's Section 6.4 and the summary's Section 1, each
part a cached run of experiment "weight_pruning":

* ``dense(profile, dataset, model)``: LeNet-300-100 or LeNet-5 trained on MNIST or Fashion-MNIST (weights kept);
* ``curve(profile, dataset, model, criterion, mode)``: that LeNet pruned to each sparsity of the profile by
  ``criterion`` ("magnitude": |w|, Han et al. 2015; "obd": 0.5 h_ii w^2, LeCun et al. 1990), either
  ``"iterative"`` (Han et al.'s procedure: each step prunes the network the previous step retrained, then
  retrains it with the pruned weights held at zero) or ``"oneshot"`` (each sparsity straight from the dense
  network, no retraining);
* ``resnet(profile, sparsity)``: magnitude pruning of the ResNet-56 baseline's conv and FC weights to
  ``sparsity``, fine-tuned with the pruned weights held at zero;
* ``latency(profile)``: CPU latency of the dense ResNet-56 and of its sparse-as-zeros copies (dense kernels);
* ``csr(profile, dataset)``: LeNet-300-100 with its weight matrices stored as torch sparse CSR tensors, against
  the dense layers, at each sparsity: latency, storage, and a check that the outputs agree.

Sparsity is the share of pruned weights over the weights of every Conv2d and Linear layer (biases are
not pruned), ranked by one threshold over all layers (``scope="global"``) or per layer (``"local"``).

    python -m reprolib.experiments.weight_pruning --profile budget     # every run of the chapter (resumable)
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn
from tqdm import tqdm

from .. import criteria, data as data_mod, masks as masks_mod, models, profiles, runs, plan
from . import baseline
from ..counting import latency_interleaved
from ..device import current as device
from ..train import evaluate, fit, save_atomic, seed_everything


# Weight pruning (Qin et al. Section 6.4; Shangyu Section 1): LeNet-300-100 and LeNet-5 on Fashion-MNIST
# (and MNIST where it can be had), magnitude (Han et al. 2015) vs OBD, iterative vs one-shot; then the
# ResNet-56 baseline magnitude-pruned to the same sparsities, and what the zeros do to CPU latency.
PRESETS = {
    # One epoch on 1,024 / 512 Fashion-MNIST images, two sparsities; the smoke ResNet-20 baseline.
    "smoke": dict(datasets=["fashion-mnist"], models=["lenet300", "lenet5"], n_train=1024, n_test=512,
                  train=dict(epochs=1, lr=0.05, batch_size=64, momentum=0.9, nesterov=False, weight_decay=5e-4,
                             schedule="cosine", bf16=True, channels_last=True, seed=0),
                  retrain=dict(epochs=1, lr=0.005, batch_size=64, momentum=0.9, nesterov=False,
                               weight_decay=5e-4, schedule="cosine", bf16=True, channels_last=True, seed=0),
                  sparsities=[0.5, 0.9], scope="global", obd_batches=1, obd_batch=64,
                  baseline="smoke", resnet_n_train=256, resnet_n_test=256,
                  resnet_finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                       nesterov=True, weight_decay=5e-4, bf16=True, channels_last=True, seed=0),
                  latency_batches=[1, 8], latency_repeats=2, csr_batches=[1, 64], csr_repeats=5),
    # Caffe's LeNet solver (lr 0.01, momentum 0.9, wd 5e-4, batch 64, ~10 epochs; cosine instead of its
    # "inv" decay), all 60,000 / 10,000 images; 2 epochs of retraining at a tenth of that rate after each
    # pruning step; ResNet-56: the criteria benchmark's recipe (1 epoch on 10,000 images).
    "budget": dict(datasets=["fashion-mnist", "mnist"], models=["lenet300", "lenet5"], n_train=None, n_test=None,
                   train=dict(epochs=10, lr=0.01, batch_size=64, momentum=0.9, nesterov=False, weight_decay=5e-4,
                              schedule="cosine", bf16=True, channels_last=True, seed=0),
                   retrain=dict(epochs=2, lr=0.001, batch_size=64, momentum=0.9, nesterov=False,
                                weight_decay=5e-4, schedule="cosine", bf16=True, channels_last=True, seed=0),
                   sparsities=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98], scope="global", obd_batches=8, obd_batch=128,
                   baseline="budget", resnet_n_train=10000, resnet_n_test=None,
                   resnet_finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                        nesterov=True, weight_decay=5e-4, bf16=True, channels_last=True, seed=0),
                   latency_batches=[1, 128], latency_repeats=15, csr_batches=[1, 128], csr_repeats=100),
    # The documents give no LeNet protocol: Caffe's solver for 10,000 iterations of batch 64 (~11 epochs),
    # 10 epochs of retraining per step, fp32; ResNet-56 fine-tuned as the HRank study does (30 epochs).
    "paper": dict(datasets=["fashion-mnist", "mnist"], models=["lenet300", "lenet5"], n_train=None, n_test=None,
                  train=dict(epochs=11, lr=0.01, batch_size=64, momentum=0.9, nesterov=False, weight_decay=5e-4,
                             schedule="cosine", bf16=False, channels_last=False, seed=0),
                  retrain=dict(epochs=10, lr=0.001, batch_size=64, momentum=0.9, nesterov=False,
                               weight_decay=5e-4, schedule="cosine", bf16=False, channels_last=False, seed=0),
                  sparsities=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98], scope="global", obd_batches=40, obd_batch=128,
                  baseline="paper", resnet_n_train=None, resnet_n_test=None,
                  resnet_finetune=dict(epochs=30, lr=0.01, schedule="step", milestones=[15, 25], batch_size=128,
                                       momentum=0.9, nesterov=False, weight_decay=5e-4, bf16=False,
                                       channels_last=False, seed=0),
                  latency_batches=[1, 128], latency_repeats=30, csr_batches=[1, 128], csr_repeats=200),
}

EXPERIMENT = "weight_pruning"
CRITERIA = ("magnitude", "obd")
MODES = ("iterative", "oneshot")


# --------------------------------------------------------------------------- masks on weights

def weight_layers(model: nn.Module) -> list[str]:
    """Names of the model's Conv2d and Linear modules, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def apply_weight_masks(model: nn.Module, masks: dict) -> nn.Module:
    """Zero, in place, the weights whose mask entry is False; returns ``model``."""
    for n, keep in masks.items():
        w = model.get_submodule(n).weight
        if keep.shape != w.shape:
            raise ValueError(f"mask for {n!r} has shape {tuple(keep.shape)}, the weight {tuple(w.shape)}")
        w[~keep.to(w.device)] = 0
    return model


def hold_weight_masks(model: nn.Module, masks: dict) -> list:
    """Keep pruned weights at zero while training: their gradients are zeroed, so SGD (momentum and weight
    decay included) never moves them. Returns the hook handles (``h.remove()`` to release)."""
    return [model.get_submodule(n).weight.register_hook(lambda g, k=keep: g * k.to(g.device, g.dtype))
            for n, keep in masks.items()]


def weight_scores(model: nn.Module, criterion: str, layers: list[str], batches=None, obd_batches: int | None = None) -> dict:
    """Per-weight importance by ``criterion`` ("magnitude" or "obd"; OBD needs ``batches``)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown weight criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")
    if criterion == "obd":
        return criteria.get("obd")(model, layers, batches, n_batches=obd_batches)
    return criteria.get("magnitude")(model, layers)


def prune_to(model: nn.Module, scores: dict, sparsity: float, masks: dict | None = None, scope: str = "global") -> dict:
    """Masks pruning ``sparsity`` of the scored weights (lowest scores first), applied to ``model`` in place.
    Weights already pruned by ``masks`` stay pruned (they are ranked below every other weight)."""
    if masks is not None:
        scores = {n: torch.where(masks[n].to(s.device), s, torch.full_like(s, -1.0)) for n, s in scores.items()}
    new = masks_mod.weight_masks(scores, sparsity, scope)
    apply_weight_masks(model, new)
    return new


def pruned_are_zero(model: nn.Module, masks: dict) -> bool:
    weight = lambda n: model.get_submodule(n).weight
    return all(not weight(n)[~k.to(weight(n).device)].any() for n, k in masks.items())


# --------------------------------------------------------------------------- LeNets

@plan.recipe
def dense(profile: str | None = None, dataset: str = "fashion-mnist", model: str = "lenet300") -> dict:
    """``model`` trained dense on ``dataset`` (the profile's training recipe); its weights are kept."""
    p = profiles.get(EXPERIMENT, profile)
    config = {"part": "dense", "profile": p["profile"], "dataset": dataset, "model": model,
              "n_train": p["n_train"], "n_test": p["n_test"], "train": p["train"]}

    def fn(config, paths):
        d = data_mod.load(dataset).subset(p["n_train"], p["n_test"]).to(device())
        seed_everything(p["train"]["seed"])
        net = models.create(model).to(device())
        curves = fit(net, d, checkpoint=paths["checkpoint"], desc=f"{model} {dataset}", **p["train"])
        final = evaluate(net, d.test_x, d.test_y)
        save_atomic(net.state_dict(), paths["weights"])
        return {"model": model, **d.describe(), "curves": curves, "weights": paths["weights"].name,
                "metrics": {"test_acc": final["acc"], "test_loss": final["loss"],
                            "params": sum(p_.numel() for p_ in net.parameters()),
                            "weights_prunable": sum(net.get_submodule(n).weight.numel() for n in weight_layers(net))}}
    return runs.run(EXPERIMENT, config, fn)


def load_net(record: dict, experiment: str = EXPERIMENT) -> nn.Module:
    """The registry model of a record of ``experiment`` with its weights, in eval mode on the library's device;
    a planned record (reprolib.plan) gives the untrained model, whose structure is all that planning reads."""
    net = models.create(record["config"]["model"]).to(device())
    if plan.is_planned(record):
        return net.eval()
    net.load_state_dict(runs.load_weights(runs.paths(experiment, record["config"])["weights"], map_location=device()))
    return net.eval()


def load_dense(record: dict) -> nn.Module:
    return load_net(record)


@plan.recipe
def curve(profile: str | None = None, dataset: str = "fashion-mnist", model: str = "lenet300",
          criterion: str = "magnitude", mode: str = "iterative") -> dict:
    """Accuracy at each sparsity of the profile, ``criterion`` and ``mode`` ("iterative" or "oneshot")."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    p = profiles.get(EXPERIMENT, profile)
    drec = dense(profile, dataset, model)
    config = {"part": "curve", "profile": p["profile"], "dense": drec["hash"], "criterion": criterion, "mode": mode,
              "sparsities": p["sparsities"], "scope": p["scope"],
              **({"obd_batches": p["obd_batches"], "obd_batch": p["obd_batch"]} if criterion == "obd" else {}),
              **({"retrain": p["retrain"]} if mode == "iterative" else {})}

    def fn(config, paths):
        d = data_mod.load(dataset).subset(p["n_train"], p["n_test"]).to(device())
        net = load_dense(drec)
        layers = weight_layers(net)
        n = p["obd_batches"] * p["obd_batch"]
        batches = list(data_mod.batches(d.train_x[:n], d.train_y[:n], p["obd_batch"])) if criterion == "obd" else None
        score = lambda m: weight_scores(m, criterion, layers, batches)
        rows, masks, dense_scores = [], None, score(net) if mode == "oneshot" else None
        for i, s in enumerate(tqdm(p["sparsities"], desc=f"{criterion} {mode}", leave=False), 1):
            if mode == "oneshot":
                pruned_net = copy.deepcopy(net)
                masks = prune_to(pruned_net, dense_scores, s, scope=p["scope"])
                rows.append({"sparsity": masks_mod.sparsity(masks),
                             "acc": evaluate(pruned_net, d.test_x, d.test_y)["acc"]})
                continue
            masks = prune_to(net, score(net), s, masks, scope=p["scope"])
            before = evaluate(net, d.test_x, d.test_y)["acc"]
            hooks = hold_weight_masks(net, masks)
            try:
                seed_everything(p["retrain"]["seed"])
                ckpt = paths["checkpoint"].with_name(f"{paths['checkpoint'].stem}-s{i}.pt")
                fit(net, d, checkpoint=ckpt, desc=f"retrain {s:.0%}", **p["retrain"])
            finally:
                for h in hooks:
                    h.remove()
            rows.append({"sparsity": masks_mod.sparsity(masks), "acc_before_retrain": before,
                         "acc": evaluate(net, d.test_x, d.test_y)["acc"], "pruned_stay_zero": pruned_are_zero(net, masks)})
        for ckpt in paths["checkpoint"].parent.glob(paths["checkpoint"].stem + "-s*.pt"):
            ckpt.unlink()
        return {"model": model, **d.describe(), "rows": rows,
                "metrics": {"dense_test_acc": drec["metrics"]["test_acc"], "final_sparsity": rows[-1]["sparsity"],
                            "final_acc": rows[-1]["acc"]}}
    return runs.run(EXPERIMENT, config, fn)


def cached(profile: str | None = None, dataset: str = "fashion-mnist") -> bool:
    """Whether every LeNet run the chapter shows for ``dataset`` (dense nets, curves, CSR) is in the results
    folder; found by planning (``reprolib.plan``): nothing is loaded or computed."""
    p = profiles.get(EXPERIMENT, profile)
    needed = plan.trace(lambda: [curve(profile, dataset, m, c, mode) for m in p["models"] for c in CRITERIA
                                 for mode in MODES] + [csr(profile, dataset)])
    return all(r.cached for r in needed)


def available(profile: str | None = None) -> dict[str, str | None]:
    """Each dataset of the profile -> None if the chapter can show it here, else why not. A dataset counts
    when its runs are cached (its raw files are then never read) or when it can be loaded to compute them."""
    out = {}
    for name in profiles.get(EXPERIMENT, profile)["datasets"]:
        if cached(profile, name):
            out[name] = None
            continue
        try:
            data_mod.load(name)
            out[name] = None
        except data_mod.DataError as e:
            out[name] = str(e)
    return out


# --------------------------------------------------------------------------- sparse storage on a CPU

class CSRLinear(nn.Module):
    """``y = x W^T + b`` with W stored as a torch sparse CSR matrix: only the kept weights are multiplied."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x):
        y = torch.sparse.mm(self.weight, x.t()).t()
        return y if self.bias is None else y + self.bias

    def nbytes(self) -> int:
        w = self.weight
        return sum(t.numel() * t.element_size() for t in (w.values(), w.col_indices(), w.crow_indices()))


def csr_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Linear layers are CSRLinear (its convolutions stay dense)."""
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if isinstance(m, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, CSRLinear(m))
    return out.eval()


@plan.recipe
def csr(profile: str | None = None, dataset: str = "fashion-mnist") -> dict:
    """LeNet-300-100 (magnitude-pruned one-shot from the dense net) with CSR weights vs dense: latency
    at the profile's batch sizes, bytes of weight storage, and the outputs' largest difference."""
    p = profiles.get(EXPERIMENT, profile)
    drec = dense(profile, dataset, "lenet300")
    config = {"part": "csr", "profile": p["profile"], "dense": drec["hash"], "sparsities": p["sparsities"],
              "scope": p["scope"], "csr_batches": p["csr_batches"], "csr_repeats": p["csr_repeats"]}

    def fn(config, paths):
        net = load_dense(drec)
        layers = weight_layers(net)
        scores = weight_scores(net, "magnitude", layers)
        dense_bytes = sum(net.get_submodule(n).weight.numel() * 4 for n in layers)
        nets, rows = {"dense": net}, {"dense": {"sparsity": 0.0, "bytes": dense_bytes}}
        x = torch.rand(64, 1, 28, 28).to(device())
        for s in p["sparsities"]:
            masked = copy.deepcopy(net)
            masks = prune_to(masked, scores, s, scope=p["scope"])
            sparse = csr_copy(masked)
            with torch.no_grad():
                diff = (sparse(x) - masked(x)).abs().max().item()
            nets[f"csr {s}"] = sparse
            rows[f"csr {s}"] = {"sparsity": masks_mod.sparsity(masks), "max_abs_diff": diff,
                                "bytes": sum(m.nbytes() for m in sparse.modules() if isinstance(m, CSRLinear))}
        for b in p["csr_batches"]:
            t = latency_interleaved(nets, (b, 1, 28, 28), repeats=p["csr_repeats"], warmup=5)
            for label, v in t.items():
                rows[label][f"ms_b{b}"] = v["median_ms"]
        return {"model": "lenet300", "dataset": dataset, "threads": t["dense"]["threads"], "rows": rows,
                "metrics": {"max_abs_diff": max(r.get("max_abs_diff", 0) for r in rows.values())}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- ResNet-56

def _resnet_masks(model: nn.Module, sparsity: float, scope: str) -> dict:
    return masks_mod.weight_masks(weight_scores(model, "magnitude", weight_layers(model)), sparsity, scope)


@plan.recipe
def resnet(profile: str | None = None, sparsity: float = 0.9) -> dict:
    """The ResNet-56 baseline magnitude-pruned to ``sparsity``, fine-tuned with pruned weights held at zero."""
    p = profiles.get(EXPERIMENT, profile)
    base = baseline.run(p["baseline"])
    config = {"part": "resnet", "profile": p["profile"], "baseline": base["hash"], "sparsity": sparsity,
              "scope": p["scope"], "n_train": p["resnet_n_train"], "n_test": p["resnet_n_test"],
              "finetune": p["resnet_finetune"]}

    def fn(config, paths):
        d = data_mod.load(base["config"]["dataset"]).subset(config["n_train"], config["n_test"]).to(device())
        net = baseline.load_model(base)
        masks = _resnet_masks(net, sparsity, p["scope"])
        apply_weight_masks(net, masks)
        before = evaluate(net, d.test_x, d.test_y)["acc"]
        hooks = hold_weight_masks(net, masks)
        try:
            seed_everything(p["resnet_finetune"]["seed"])
            curves = fit(net, d, checkpoint=paths["checkpoint"], desc=f"resnet {sparsity:.0%}", **p["resnet_finetune"])
        finally:
            for h in hooks:
                h.remove()
        return {"model": base["model"], **d.describe(), "curves": curves,
                "metrics": {"sparsity": masks_mod.sparsity(masks), "test_acc_before_finetune": before,
                            "test_acc": evaluate(net, d.test_x, d.test_y)["acc"],
                            "baseline_test_acc": base["metrics"]["test_acc"], "pruned_stay_zero": pruned_are_zero(net, masks)}}
    return runs.run(EXPERIMENT, config, fn)


@plan.recipe
def latency(profile: str | None = None) -> dict:
    """Median CPU latency of the dense ResNet-56 and of its magnitude-pruned copies (zeros in dense kernels)."""
    p = profiles.get(EXPERIMENT, profile)
    base = baseline.run(p["baseline"])
    config = {"part": "latency", "profile": p["profile"], "baseline": base["hash"], "sparsities": p["sparsities"],
              "scope": p["scope"], "latency_batches": p["latency_batches"], "latency_repeats": p["latency_repeats"]}

    def fn(config, paths):
        net = baseline.load_model(base)
        nets = {"dense": net}
        for s in p["sparsities"]:
            nets[f"sparse {s}"] = apply_weight_masks(copy.deepcopy(net), _resnet_masks(net, s, p["scope"]))
        rows = {label: {} for label in nets}
        for b in p["latency_batches"]:
            t = latency_interleaved(nets, (b, 3, 32, 32), repeats=p["latency_repeats"], warmup=2)
            for label, v in t.items():
                rows[label][f"ms_b{b}"] = v["median_ms"]
        return {"model": base["model"], "threads": t["dense"]["threads"], "rows": rows,
                "metrics": {"networks": len(rows)}}
    return runs.run(EXPERIMENT, config, fn)


def all_runs(profile: str | None = None) -> dict:
    """Every run the chapter shows, for the datasets found here (trains what is missing)."""
    p = profiles.get(EXPERIMENT, profile)
    found = [d for d, why in available(profile).items() if why is None]
    return {"curves": [curve(profile, d, m, c, mode) for d in found for m in p["models"] for c in CRITERIA
                       for mode in MODES],
            "csr": [csr(profile, d) for d in found], "resnet": [resnet(profile, s) for s in p["sparsities"]],
            "latency": latency(profile)}


if __name__ == "__main__":
    ap = profiles.cli_parser(__doc__)
    res = all_runs(ap.parse_args().profile)
    for r in res["curves"]:
        c = r["config"]
        print(f"{r['model']} {r['dataset']} {c['criterion']} {c['mode']}: "
              + ", ".join(f"{row['sparsity']:.2f}->{row['acc']:.4f}" for row in r["rows"]))
    for r in res["resnet"]:
        print(f"resnet56 sparsity {r['metrics']['sparsity']:.2f}: acc {r['metrics']['test_acc']:.4f}")


def comparisons(profile: str | None = None) -> list:
    """The reproduction summary's rows of this chapter (committed runs only): Qin et al.'s one LeNet number
    beside the accuracy of each of our LeNets at the highest sparsity of iterative magnitude pruning."""
    from .. import reference, summary
    p = profiles.get(EXPERIMENT, profile)
    q = reference.load("qin_prose").query("model == 'lenet' and metric == 'top1_pct'").iloc[0]
    rows = []
    for d in ("fashion-mnist", "mnist"):
        for m in p["models"]:
            rec = plan.committed(curve, profile, d, m, "magnitude", "iterative")
            if plan.is_planned(rec):
                continue
            last = rec["rows"][-1]
            rows.append(summary.Row("weight-pruning", f"LeNet accuracy after magnitude pruning (%), Qin Section 7 "
                                    f"(ours: {m} on {d})", float(q["value"]), 100 * last["acc"],
                                    f"{p['profile']}: iterative, {100 * last['sparsity']:.0f}% of the weights pruned",
                                    "not comparable", "the document names neither the LeNet nor the sparsity"
                                    + ("; ours on Fashion-MNIST, the document's data set is MNIST" if d != "mnist" else "")))
    return rows or [summary.Row("weight-pruning", "LeNet accuracy after magnitude pruning (%), Qin Section 7",
                                float(q["value"]), None, p["profile"], "not run yet")]
