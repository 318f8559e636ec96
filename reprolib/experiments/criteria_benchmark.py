"""The criteria benchmark of the pruning surveys (Qin et al.; Shangyu 2019), each part a cached run of
experiment "criteria_benchmark":

* ``scores(profile, criterion, seed)``: one filter criterion's scores for every conv of the ResNet-56
  baseline (only ``random`` depends on the seed);
* ``search(profile, criterion, scope, target, seed)``: the pruning rate at which that criterion's masks,
  shrunk, remove ``target`` of the baseline's true FLOPs;
* ``finetune(profile, criterion, scope, target, seed)``: prune at that rate, shrink, fine-tune the shrunk
  network (one recipe for every criterion);
* ``layer_pruning(profile, method, k, seed)``: ``k`` residual blocks removed, those whose last BN (bn2) has the
  smallest mean |gamma| or drawn at random, then shrunk and fine-tuned;
* ``apoz_iterations(profile)``: network trimming (Hu et al. 2016) of VGG-16's last conv block and hidden FC
  layer, accuracy before and after fine-tuning at each iteration; the VGG-16 is the dense network of the
  ThiNet chapter (``thinet_vs_gradient.dense``), trained once for the whole book;
* ``table1_network(profile, network, target, seed)``: Shangyu's Table 1 on VGG-16 and ResNet-110, L1-norm
  filter pruning (uniform) at a true-FLOPs target, fine-tuned with the shared recipe; ResNet-110's dense network
  is trained for it (``resnet110_runs``, computed by the sweep, not by ``make book``);
* ``latency(profile)``: CPU latency of the dense baseline and of every architecture above, timed round-robin.

Scopes. ``"uniform"``: every conv loses the same share of its filters (HRank's rule, ``int(C * r)``), so
criteria differ only in *which* filters go and end at (nearly) the same architecture. ``"global"``: one
threshold over all convs, on each criterion's scores divided by their layer's mean. Raw scores are not
comparable across layers (an L1 norm grows with the fan-in, HRank's ranks are bounded by the map size,
Taylor scores by the gradients' scale), the ratio to the layer's mean is; a filter goes when it is far below
its layer's average, so a layer whose filters differ a lot loses more of them, and random scores remain a
uniform allocation in expectation.

Search. The true FLOPs of the shrunk network only change at the rates where some layer loses one more
filter; a binary search over those rates (``candidate_rates``) finds the one closest to the target.

    python -m reprolib.experiments.criteria_benchmark --profile budget     # every run of the chapter (resumable)
"""
from __future__ import annotations

import torch
import torch.nn as nn
from tqdm import tqdm

from .. import criteria, data as data_mod, masks as masks_mod, profiles, runs, surgery, plan
from . import baseline
from . import thinet_vs_gradient
from ..counting import closest, count, latency_table
from ..device import current as device
from ..train import evaluate, fit, seed_everything


# Criteria benchmark (Qin et al.; Shangyu 2019): every filter criterion pruned to the same true-FLOPs
# reductions of the ResNet-56 baseline, shrunk and fine-tuned with one recipe; APoZ network trimming of
# VGG-16's last conv block and hidden FC layer; residual blocks removed by BN gamma vs at random.
PRESETS = {
    # The 1-epoch smoke ResNet-20 baseline (VGG-16: the ThiNet chapter's smoke one), three criteria, one
    # target per scope, 256 / 128 images: exercises every part.
    "smoke": dict(baseline="smoke",
                  criteria=["l1norm", "apoz", "random"], targets={"uniform": [0.5], "global": [0.5]}, seeds=[0],
                  score_batches=1, score_batch=32, n_train=256, n_test=128,
                  finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                nesterov=True, weight_decay=5e-4, bf16=True, channels_last=True),
                  apoz_iterations=2, apoz_std=1.0, apoz_batches=1, apoz_batch=64,
                  layer_methods=["bn_gamma", "random"], layer_ks=[1, 2], latency_batches=[1, 4],
                  latency_repeats=1),
    # Every criterion, three uniform targets and one global one, two seeds: one epoch on the first 10,000
    # training images per pruned network (a fifth of a full epoch), all 10,000 test images; 1, 3, 5, 7, 9
    # blocks removed. APoZ: the ThiNet chapter's dense VGG-16, six iterations as in the document's Table 1.
    # Fine-tuning in bf16 NCHW: faster than channels_last for the narrow shrunk layers on 1 thread; the APoZ
    # trimming of the (masked, full-width) VGG-16 keeps channels_last (its run was computed that way).
    "budget": dict(baseline="budget",
                   criteria=["l1norm", "fpgm", "bn_gamma", "apoz", "taylor", "hrank", "random"],
                   targets={"uniform": [0.3, 0.5, 0.7], "global": [0.5]}, seeds=[0, 1],
                   score_batches=5, score_batch=128, n_train=10000, n_test=None,
                   finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                 nesterov=True, weight_decay=5e-4, bf16=True, channels_last=False),
                   apoz_finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                      nesterov=True, weight_decay=5e-4, bf16=True, channels_last=True),
                   apoz_iterations=6, apoz_std=1.0, apoz_batches=10, apoz_batch=128,
                   layer_methods=["bn_gamma", "random"], layer_ks=[1, 3, 5, 7, 9],
                   latency_batches=[1, 128], latency_repeats=10),
    # The documents state no protocol for a benchmark: the HRank study's 30 epochs of fine-tuning with
    # our choices for the rest, as in hrank's paper preset (lr 0.01, batch 128, wd 5e-4, momentum 0.9), all data, three seeds, both scopes at every target, fp32.
    "paper": dict(baseline="paper",
                  criteria=["l1norm", "fpgm", "bn_gamma", "apoz", "taylor", "hrank", "random"],
                  targets={"uniform": [0.3, 0.5, 0.7], "global": [0.3, 0.5, 0.7]}, seeds=[0, 1, 2],
                  score_batches=5, score_batch=128, n_train=None, n_test=None,
                  finetune=dict(epochs=30, lr=0.01, schedule="step", milestones=[15, 25], batch_size=128,
                                momentum=0.9, nesterov=False, weight_decay=5e-4, bf16=False, channels_last=False),
                  apoz_iterations=6, apoz_std=1.0, apoz_batches=40, apoz_batch=128,
                  layer_methods=["bn_gamma", "random"], layer_ks=[1, 2, 3, 4, 5, 6, 7, 8, 9],
                  latency_batches=[1, 128], latency_repeats=30),
}

CIFAR = (1, 3, 32, 32)
CURVE_TEST = 1000  # test images behind the per-epoch curves (bf16); reported accuracies use all (fp32)
SCOPES = ("uniform", "global")
DATA_CRITERIA = ("apoz", "taylor", "hrank")  # the criteria that look at activations
# A criterion whose definition changed carries it in its scores' config, so that scores cached under the old
# one are not read again. taylor: until 2026-11-27 it scored the conv output before BN, per batch.
DEFINITIONS = {"taylor": "Molchanov 2017, the removed tensor (BN output), per example"}
EXPERIMENT = "criteria_benchmark"


def _baseline(spec):
    """``spec``: a profile name, or a dict {"profile": name, **overrides of the baseline preset}."""
    spec = dict(spec) if isinstance(spec, dict) else {"profile": spec}
    rec = baseline.run(spec.pop("profile"), **spec)
    return baseline.load_model(rec), rec


# --------------------------------------------------------------------------- equal-FLOPs masks

def normalise(scores: dict) -> dict:
    """Each layer's scores divided by their mean (a layer whose scores are all zero stays at zero)."""
    return {n: s.double() / max(float(s.double().mean()), 1e-30) for n, s in scores.items()}


def masks_at(scores: dict, rate: float, scope: str) -> dict:
    """Keep-masks at ``rate``: the same share of every layer (uniform) or one threshold (global)."""
    if scope == "uniform":
        return masks_mod.from_scores(scores, rate, scope="local")
    if scope == "global":
        return masks_mod.from_scores(normalise(scores), rate, scope="global")
    raise ValueError(f"unknown scope {scope!r}: choose one of {', '.join(SCOPES)}")


def candidate_rates(scores: dict, scope: str) -> list[float]:
    """Every rate at which the masks change, ascending: k/C for each layer width C (uniform), or n/total
    filters (global, while each layer keeps one filter). A hair above each so that int(C * r) lands on k."""
    widths = [len(s) for s in scores.values()]
    if scope == "uniform":
        rates = sorted({k / c for c in set(widths) for k in range(c)})
    elif scope == "global":
        total = sum(widths)
        rates = [n / total for n in range(total - len(widths) + 1)]
    else:
        raise ValueError(f"unknown scope {scope!r}: choose one of {', '.join(SCOPES)}")
    return [r + 1e-9 for r in rates]


def shrunk_at(model: nn.Module, scores: dict, rate: float, scope: str, input_size=CIFAR):
    """(masks, shrunk network, its true counts) at ``rate``."""
    masks = masks_at(scores, rate, scope)
    small = surgery.shrink(model, masks, input_size)
    return masks, small, count(small, input_size)


def search_rate(model: nn.Module, scores: dict, target: float, scope: str, input_size=CIFAR) -> dict:
    """The candidate rate whose shrunk network removes the share of true FLOPs closest to ``target``.

    The FLOPs removed grow with the rate (the masks are nested), so a binary search finds the first
    candidate at or above the target; it or the one before it is the closest. Returns the rate, the FLOPs
    reduction reached and the number of networks shrunk."""
    if not 0 < target < 1:
        raise ValueError(f"target FLOPs reduction must be in (0, 1), got {target}")
    dense = count(model, input_size)["flops"]
    rates, reached = candidate_rates(scores, scope), {}

    def reduction(i: int) -> float:
        if i not in reached:
            reached[i] = 1 - shrunk_at(model, scores, rates[i], scope, input_size)[2]["flops"] / dense
        return reached[i]

    if reduction(len(rates) - 1) < target:
        raise ValueError(f"{scope} pruning cannot remove {target:.0%} of the FLOPs: "
                         f"at most {reduction(len(rates) - 1):.1%} (every layer keeps a filter)")
    best = closest(len(rates), reduction, target, f"FLOPs search {scope} {target:.0%}")
    return {"rate": rates[best], "flops_reduction": reduction(best), "evaluations": len(reached)}


# --------------------------------------------------------------------------- criteria: scores, search, fine-tune

@plan.recipe
def scores(profile: str | None = None, criterion: str = "l1norm", seed: int = 0) -> dict:
    """Per-filter scores of ``criterion`` for every conv of the baseline (data: the first training images)."""
    p = profiles.get(EXPERIMENT, profile)
    criteria.get(criterion)  # a clear error for an unknown name
    model, base = _baseline(p["baseline"])
    config = {"part": "scores", "profile": p["profile"], "baseline": base["hash"], "criterion": criterion,
              "seed": seed if criterion == "random" else 0,
              **({"definition": DEFINITIONS[criterion]} if criterion in DEFINITIONS else {}),
              **({"score_batches": p["score_batches"], "score_batch": p["score_batch"]} if criterion in DATA_CRITERIA else {})}

    def fn(config, paths):
        convs = masks_mod.conv_layers(model)
        if criterion in DATA_CRITERIA:
            d = data_mod.load(base["config"]["dataset"])
            n = config["score_batches"] * config["score_batch"]
            batches = data_mod.batches(d.train_x[:n].to(device()), d.train_y[:n].to(device()), config["score_batch"])
            s = criteria.get(criterion)(model, convs, batches, n_batches=config["score_batches"])
        elif criterion == "random":
            s = criteria.get(criterion)(model, convs, seed=config["seed"])
        else:
            s = criteria.get(criterion)(model, convs)
        return {"model": base["model"], "metrics": {"layers": len(s)}, "scores": {k: v.tolist() for k, v in s.items()}}
    return runs.run(EXPERIMENT, config, fn)


def _scores_of(record: dict) -> dict:
    return {k: torch.tensor(v) for k, v in record["scores"].items()}


@plan.recipe
def search(profile: str | None = None, criterion: str = "l1norm", scope: str = "uniform", target: float = 0.5,
           seed: int = 0) -> dict:
    """The rate at which ``criterion`` at ``scope`` removes ``target`` of the true FLOPs (closest reachable)."""
    p = profiles.get(EXPERIMENT, profile)
    model, base = _baseline(p["baseline"])
    srec = scores(profile, criterion, seed)
    config = {"part": "search", "profile": p["profile"], "baseline": base["hash"], "scores": srec["hash"],
              "criterion": criterion, "scope": scope, "target": target, "n_test": p["n_test"]}

    def fn(config, paths):
        return search_record(model, base, _scores_of(srec), target, scope, p["n_test"])
    return runs.run(EXPERIMENT, config, fn)


def search_record(model: nn.Module, base: dict, s: dict, target: float, scope: str, n_test) -> dict:
    """A search run's record: the rate reaching ``target`` for scores ``s``, the shrunk network's counts and its
    accuracy before fine-tuning (also the survey studies' search runs)."""
    found = search_rate(model, s, target, scope)
    masks, small, true = shrunk_at(model, s, found["rate"], scope)
    dense = count(model, CIFAR)
    d = data_mod.load(base["config"]["dataset"]).subset(0, n_test).to(device())
    return {"model": base["model"], "search_evaluations": found["evaluations"],
            "kept": {n: int(k.sum()) for n, k in masks.items()}, "filters": {n: len(k) for n, k in masks.items()},
            "metrics": {"test_acc_before_finetune": evaluate(small, d.test_x, d.test_y)["acc"],
                        "rate": found["rate"], "flops_reduction": found["flops_reduction"],
                        "filters_removed": masks_mod.sparsity(masks),
                        "params_true": true["params"], "flops_true": true["flops"],
                        "params_dense": dense["params"], "flops_dense": dense["flops"]}}


def pruned(profile: str | None, criterion: str, scope: str, target: float, seed: int = 0):
    """(baseline model, masks, shrunk network, search record) of one benchmark point."""
    p = profiles.get(EXPERIMENT, profile)
    model, _ = _baseline(p["baseline"])
    rec = search(profile, criterion, scope, target, seed)
    masks, small, _ = shrunk_at(model, _scores_of(scores(profile, criterion, seed)), rec["metrics"]["rate"], scope)
    return model, masks, small, rec


def _finetune(model: nn.Module, d, seed: int, finetune: dict, checkpoint, desc: str) -> tuple[list, float]:
    """The shared recipe: fine-tune ``model`` on ``d`` (per-epoch curves on CURVE_TEST test images);
    returns the curves and the accuracy on all of ``d``'s test images (fp32, NCHW: the number we report)."""
    seed_everything(seed)
    curve_data = data_mod.Cifar10(d.train_x, d.train_y, d.test_x[:CURVE_TEST], d.test_y[:CURVE_TEST], d.copy)
    curves = fit(model, curve_data, checkpoint=checkpoint, desc=desc, **dict(finetune, seed=seed))
    return curves, evaluate(model, d.test_x, d.test_y)["acc"]


def curve_test(d, finetune: dict) -> dict:
    """What the per-epoch curves of ``_finetune`` are evaluated on, recorded beside them in each results file
    (the reported ``test_acc`` is on every test image of ``d``, in fp32)."""
    return {"test_images": min(CURVE_TEST, len(d.test_y)), "precision": "bf16" if finetune.get("bf16") else "fp32",
            "reported_test_acc": f"all {len(d.test_y):,} test images, fp32"}


@plan.recipe
def finetune(profile: str | None = None, criterion: str = "l1norm", scope: str = "uniform", target: float = 0.5,
             seed: int = 0) -> dict:
    """Prune the baseline by ``criterion`` to ``target`` of its true FLOPs removed, shrink, fine-tune."""
    p = profiles.get(EXPERIMENT, profile)
    _, base = _baseline(p["baseline"])
    srec = search(profile, criterion, scope, target, seed)
    config = {"part": "finetune", "profile": p["profile"], "search": srec["hash"], "criterion": criterion,
              "scope": scope, "target": target, "seed": seed, "n_train": p["n_train"], "n_test": p["n_test"],
              "finetune": p["finetune"]}

    def fn(config, paths):
        small = pruned(profile, criterion, scope, target, seed)[2]
        d = data_mod.load(base["config"]["dataset"]).subset(p["n_train"], p["n_test"]).to(device())
        curves, acc = _finetune(small, d, seed, p["finetune"], paths["checkpoint"],
                                f"{criterion} {scope} {target:.0%} seed {seed}")
        return {"model": base["model"], **d.describe(), "curves": curves, "curve_test": curve_test(d, p["finetune"]),
                "metrics": {"test_acc": acc, "baseline_test_acc": base["metrics"]["test_acc"], **srec["metrics"]}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- layer pruning

def blocks(model: nn.Module) -> list[str]:
    """Residual blocks that can be removed: a conv1 -> conv2 -> bn2 branch beside a shortcut without weights
    (identity, or the option-A stride-2 subsampling with zero-padded channels), which carries the data
    alone once the branch is gone: ``relu(shortcut(x))``."""
    names = [n for n, m in model.named_modules() if all(hasattr(m, a) for a in ("conv1", "conv2", "bn2", "shortcut"))]
    for n in names:
        if any(True for _ in model.get_submodule(n).shortcut.parameters()):
            raise ValueError(f"block {n!r} has a shortcut with weights: removing its branch is not layer pruning")
    if not names:
        raise ValueError(f"{type(model).__name__} has no residual blocks (conv1, conv2, bn2, shortcut)")
    return names


def block_scores(model: nn.Module, method: str, seed: int = 0) -> dict[str, float]:
    """``"bn_gamma"``: mean |gamma| of each block's last BN (the Darknet rule of the document, Section 5);
    ``"random"``: a uniform draw per block from ``seed``. Lowest first out."""
    names = blocks(model)
    if method == "bn_gamma":
        return {n: model.get_submodule(n).bn2.weight.detach().abs().mean().item() for n in names}
    if method == "random":
        return dict(zip(names, torch.rand(len(names), generator=torch.Generator().manual_seed(seed)).tolist()))
    raise ValueError(f"unknown layer-pruning method {method!r}: choose 'bn_gamma' or 'random'")


def removed_blocks(model: nn.Module, method: str, k: int, seed: int = 0) -> list[str]:
    s = block_scores(model, method, seed)
    if not 0 < k < len(s):
        raise ValueError(f"k = {k} blocks: choose 1 to {len(s) - 1} of the {len(s)} blocks")
    return sorted(sorted(s, key=s.get)[:k], key=list(s).index)


def without_blocks(model: nn.Module, names: list[str]) -> nn.Module:
    """The shrunk network without the named blocks. Its ReLUs are made out-of-place: a removed block
    computes ``relu(x)`` on the tensor it receives, which an in-place ReLU would overwrite although the
    previous block's backward pass still needs it."""
    small = surgery.shrink(model, block_masks(model, names))
    for m in small.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return small


def block_masks(model: nn.Module, names: list[str]) -> dict:
    """Masks that prune every filter of the named blocks' two convs: after ``shrink`` each is its shortcut."""
    return {f"{n}.{c}": torch.zeros(getattr(model.get_submodule(n), c).out_channels, dtype=torch.bool)
            for n in names for c in ("conv1", "conv2")}


@plan.recipe
def layer_pruning(profile: str | None = None, method: str = "bn_gamma", k: int = 1, seed: int = 0) -> dict:
    """The baseline with ``k`` residual blocks removed by ``method``, shrunk and fine-tuned."""
    p = profiles.get(EXPERIMENT, profile)
    model, base = _baseline(p["baseline"])
    gone = removed_blocks(model, method, k, seed)
    config = {"part": "layer_pruning", "profile": p["profile"], "baseline": base["hash"], "method": method, "k": k,
              "seed": seed, "n_train": p["n_train"], "n_test": p["n_test"], "finetune": p["finetune"]}

    def fn(config, paths):
        small = without_blocks(model, gone)
        true, dense = count(small, CIFAR), count(model, CIFAR)
        d = data_mod.load(base["config"]["dataset"]).subset(p["n_train"], p["n_test"]).to(device())
        before = evaluate(small, d.test_x, d.test_y)["acc"]
        curves, acc = _finetune(small, d, seed, p["finetune"], paths["checkpoint"], f"{k} blocks {method}")
        return {"model": base["model"], "removed": gone, **d.describe(), "curves": curves,
                "curve_test": curve_test(d, p["finetune"]),
                "metrics": {"test_acc": acc, "test_acc_before_finetune": before,
                            "baseline_test_acc": base["metrics"]["test_acc"],
                            "params_true": true["params"], "flops_true": true["flops"],
                            "params_dense": dense["params"], "flops_dense": dense["flops"],
                            "flops_reduction": 1 - true["flops"] / dense["flops"]}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- APoZ network trimming

def trim_layers(model: nn.Module) -> list[str]:
    """VGG's last conv block (its last three convs) and hidden FC layer: the analogue of CONV5 and FC6."""
    convs = masks_mod.conv_layers(model)
    fcs = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if len(convs) < 3 or len(fcs) < 2:
        raise ValueError("network trimming here needs a VGG: >= 3 convs and a hidden FC layer before the classifier")
    return convs[-3:] + fcs[:1]


def trim(apoz_scores: dict, masks: dict, std_factor: float) -> dict:
    """One trimming step (Hu et al.'s network trimming, with our threshold: the documents state none): in each
    layer, drop the still-kept neurons whose APoZ (1 - the ``apoz`` criterion's score) exceeds the mean APoZ of
    the kept ones by more than ``std_factor`` standard deviations, and those that never fire on the data
    (APoZ 1: when half a layer is dead, mean + std is above 1)."""
    out = {}
    for n, s in apoz_scores.items():
        apoz, keep = 1 - s.double(), masks[n].clone()
        alive = apoz[keep]
        threshold = alive.mean() + std_factor * (alive.std() if len(alive) > 1 else 0)
        keep &= ~(apoz > min(float(threshold), 1 - 1e-9))
        if not keep.any():  # keep the most active neuron rather than cut the network
            keep[torch.argmin(apoz)] = True
        out[n] = keep
    return out


@plan.recipe
def apoz_iterations(profile: str | None = None) -> dict:
    """Iterative APoZ trimming of VGG-16 (pruned neurons held at zero), fine-tuned after each iteration."""
    p = profiles.get(EXPERIMENT, profile)
    base = thinet_vs_gradient.dense(profile)  # the record only: its weights are loaded when a run is needed
    keys = ("apoz_iterations", "apoz_std", "apoz_batches", "apoz_batch", "n_train", "n_test", "finetune")
    config = {"part": "apoz_iterations", "profile": p["profile"], "baseline": base["hash"], **{k: p[k] for k in keys}}
    config["finetune"] = p.get("apoz_finetune", p["finetune"])  # VGG-16's own format where the preset gives one

    def fn(config, paths):
        d = data_mod.load(base["config"]["dataset"]).subset(p["n_train"], p["n_test"]).to(device())
        n = p["apoz_batches"] * p["apoz_batch"]
        batches = list(data_mod.batches(d.train_x[:n], d.train_y[:n], p["apoz_batch"]))
        model = thinet_vs_gradient.dense_model(profile)[0]
        layers = trim_layers(model)
        masks = {l: torch.ones(model.get_submodule(l).weight.shape[0], dtype=torch.bool) for l in layers}
        dense, acc0 = count(model, CIFAR), evaluate(model, d.test_x, d.test_y)["acc"]
        rows = [{"iteration": 0, "kept": {l: int(m.sum()) for l, m in masks.items()}, "params": dense["params"],
                 "flops": dense["flops"], "compression": 1.0, "acc_before_ft": acc0, "acc_after_ft": acc0}]
        for it in range(1, p["apoz_iterations"] + 1):
            masks = trim(criteria.get("apoz")(model, layers, batches), masks, p["apoz_std"])
            model.load_state_dict(surgery.apply_masks(model, masks).state_dict())
            true = count(surgery.shrink(model, masks), CIFAR)
            before = evaluate(model, d.test_x, d.test_y)["acc"]
            hooks = surgery.hold_masks(model, masks)
            try:
                ckpt = paths["checkpoint"].with_name(f"{paths['checkpoint'].stem}-it{it}.pt")
                after = _finetune(model, d, 0, config["finetune"], ckpt, f"apoz iteration {it}")[1]
            finally:
                for h in hooks:
                    h.remove()
            rows.append({"iteration": it, "kept": {l: int(m.sum()) for l, m in masks.items()}, "params": true["params"],
                         "flops": true["flops"], "compression": dense["params"] / true["params"],
                         "acc_before_ft": before, "acc_after_ft": after})
        for ckpt in paths["checkpoint"].parent.glob(paths["checkpoint"].stem + "-it*.pt"):
            ckpt.unlink()
        return {"model": base["model"], **d.describe(), "layers": layers, "rows": rows,
                "metrics": {"compression": rows[-1]["compression"], "test_acc": rows[-1]["acc_after_ft"],
                            "baseline_test_acc": base["metrics"]["test_acc"]}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- Shangyu's Table 1 beyond ResNet-56

# The dense networks of Shangyu's Table 1 beyond the benchmark's ResNet-56 (whose l1norm rows are its own).
TABLE1_NETWORKS = {
    "vgg16": "the ThiNet chapter's dense VGG-16 (thinet_vs_gradient.dense), trained once for the book",
    # Our cost estimate before training it: ResNet-110 has 1.96 times ResNet-56's FLOPs (253 vs 127 M per image),
    # and the budget recipe is 60 epochs of 50,000 images. ResNet-56 trained at ~560 img/s on 2 quiet cores when
    # its baseline was trained (about 90 minutes); on 2026-12-07 the same machine type gave 304 img/s on 2 threads
    # and 192 on one (bf16 channels_last, data/results/bench/train_throughput*.json), so about 5.5 h of 2 cores,
    # or 8.5 h as one 1-thread worker.
    "resnet110": "a ResNet-110 trained here with the ResNet-56 baseline's recipe (experiments.baseline with "
                 "model='resnet110'): about 3-5.5 h of 2 CPU cores at the budget profile, 8.5 h on one thread",
}


def _table1_dense(p: dict, network: str):
    """``(record, load)`` of Table 1's dense ``network`` under the benchmark's settings ``p``: the run's record
    (computed if missing) and a function that loads its trained model (called only when a run is computed)."""
    if network not in TABLE1_NETWORKS:
        raise ValueError(f"no dense {network!r} for Table 1: choose one of {', '.join(TABLE1_NETWORKS)} "
                         "(resnet56: the benchmark's own l1norm rows)")
    if network == "vgg16":
        return thinet_vs_gradient.dense(p["profile"]), lambda: thinet_vs_gradient.dense_model(p["profile"])[0]
    spec = dict(p["baseline"]) if isinstance(p["baseline"], dict) else {"profile": p["baseline"]}
    rec = baseline.run(spec.pop("profile"), **dict(spec, model=network))
    return rec, lambda: baseline.load_model(rec)


@plan.recipe
def table1_network(profile: str | None = None, network: str = "vgg16", target: float = 0.5, seed: int = 0) -> dict:
    """Shangyu's Table 1 ("Weight-based" filter pruning on CIFAR-10) on another of its networks: L1-norm filter
    pruning of every conv, the same share of each (uniform), at the rate whose shrunk network removes ``target``
    of the true FLOPs, fine-tuned with the benchmark's recipe and images. ResNet-56 is the benchmark's own
    l1norm rows; ResNet-110's dense network is trained for this row (``resnet110_runs``, not in ``all_runs``:
    ``make book`` does not train it)."""
    p = profiles.get(EXPERIMENT, profile)
    base, load = _table1_dense(p, network)  # the record only: its weights are loaded when the run is computed
    config = {"part": "table1_network", "profile": p["profile"], "network": network, "dense": base["hash"],
              "criterion": "l1norm", "scope": "uniform", "target": target, "seed": seed, "n_train": p["n_train"],
              "n_test": p["n_test"], "finetune": p["finetune"]}

    def fn(config, paths):
        model = load()
        sha = thinet_vs_gradient.state_sha256(model.state_dict())  # the dense weights it started from
        scores = criteria.get("l1norm")(model, masks_mod.conv_layers(model))
        found = search_rate(model, scores, target, "uniform")
        masks, small, true = shrunk_at(model, scores, found["rate"], "uniform")
        dense = count(model, CIFAR)
        d = data_mod.load(base["config"]["dataset"]).subset(p["n_train"], p["n_test"]).to(device())
        before = evaluate(small, d.test_x, d.test_y)["acc"]
        curves, acc = _finetune(small, d, seed, p["finetune"], paths["checkpoint"],
                                f"{network} l1norm {target:.0%} seed {seed}")
        return {"model": network, **d.describe(), "curves": curves, "curve_test": curve_test(d, p["finetune"]),
                "dense_weights_sha256": sha,
                "kept": {n: int(m.sum()) for n, m in masks.items()}, "filters": {n: len(m) for n, m in masks.items()},
                "metrics": {"test_acc": acc, "test_acc_before_finetune": before,
                            "baseline_test_acc": evaluate(model, d.test_x, d.test_y)["acc"],
                            "rate": found["rate"], "flops_reduction": found["flops_reduction"],
                            "params_reduction": 1 - true["params"] / dense["params"],
                            "flops_true": true["flops"], "params_true": true["params"],
                            "flops_dense": dense["flops"], "params_dense": dense["params"]}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- latency and the whole grid

def points(profile: str | None = None) -> list[tuple]:
    """Every (criterion, scope, target) of the profile's grid."""
    p = profiles.get(EXPERIMENT, profile)
    return [(c, s, t) for s, targets in p["targets"].items() for t in targets for c in p["criteria"]]


@plan.recipe
def latency(profile: str | None = None) -> dict:
    """Median CPU latency of the dense baseline, each grid point's shrunk network (seed 0) and each
    layer-pruned network, timed round-robin at each of the profile's batch sizes."""
    p = profiles.get(EXPERIMENT, profile)
    model, base = _baseline(p["baseline"])
    nets = {f"{c}/{s}/{t}": search(profile, c, s, t)["hash"] for c, s, t in points(profile)}
    config = {"part": "latency", "profile": p["profile"], "baseline": base["hash"], "nets": nets,
              "layer_pruning": {m: p["layer_ks"] for m in p["layer_methods"]},
              "latency_batches": p["latency_batches"], "latency_repeats": p["latency_repeats"]}

    def fn(config, paths):
        models = {"dense": model}
        for label in tqdm(nets, desc="shrink", leave=False):
            c, s, t = label.split("/")
            models[label] = pruned(profile, c, s, float(t))[2]
        for m, ks in config["layer_pruning"].items():
            for k in ks:
                models[f"layers/{m}/{k}"] = without_blocks(model, removed_blocks(model, m, k))
        rows, threads = latency_table(models, p["latency_batches"], p["latency_repeats"], warmup=2)
        return {"model": base["model"], "threads": threads, "rows": rows, "metrics": {"networks": len(rows)}}
    return runs.run(EXPERIMENT, config, fn)


def all_runs(profile: str | None = None) -> dict:
    """Every run the chapter shows (trains what is missing unless REPROLIB_CACHED_ONLY=1)."""
    p = profiles.get(EXPERIMENT, profile)
    return {"finetune": [finetune(profile, c, s, t, seed) for c, s, t in points(profile) for seed in p["seeds"]],
            "layer_pruning": [layer_pruning(profile, m, k) for m in p["layer_methods"] for k in p["layer_ks"]],
            "apoz_iterations": apoz_iterations(profile), "latency": latency(profile),
            "table1_networks": [table1_network(profile, "vgg16", t, seed)
                                for t in p["targets"]["uniform"] for seed in p["seeds"]]}


def resnet110_runs(profile: str | None = None) -> dict:
    """The ResNet-110 row of Shangyu's Table 1: its dense network (hours of training, so ``make book`` leaves it
    out; ``python -m reprolib.sweep criteria_benchmark --runs resnet110_runs``) and its L1-norm fine-tunings at
    the benchmark's uniform targets and seeds. The chapter shows what is committed (``plan.shown``)."""
    p = profiles.get(EXPERIMENT, profile)
    return {"baseline": _table1_dense(p, "resnet110")[0],
            "table1": [table1_network(profile, "resnet110", t, seed)
                       for t in p["targets"]["uniform"] for seed in p["seeds"]]}


if __name__ == "__main__":
    ap = profiles.cli_parser(__doc__)
    res = all_runs(ap.parse_args().profile)
    for r in res["finetune"]:
        c = r["config"]
        print(f"{c['criterion']:>9} {c['scope']:>7} {c['target']:.0%} seed {c['seed']}: acc {r['metrics']['test_acc']:.4f}, "
              f"FLOPs -{r['metrics']['flops_reduction']:.1%}")
    for r in res["layer_pruning"]:
        print(f"layers {r['config']['method']} k={r['config']['k']}: acc {r['metrics']['test_acc']:.4f}")
    print("apoz iterations:", [round(row["acc_after_ft"], 4) for row in res["apoz_iterations"]["rows"]])


def comparisons(profile: str | None = None) -> list:
    """The reproduction summary's rows of this chapter, from committed runs only: Shangyu's Table 1 (L1-norm,
    "weight-based") beside our L1-norm rows, and Qin et al.'s APoZ trimming (Table 1) beside ours."""
    from .. import reference, summary
    p = profiles.get(EXPERIMENT, profile)
    chapter, rows = "criteria-benchmark", []
    res = plan.committed(all_runs, profile)
    ft = p["finetune"]
    protocol = (f"{p['profile']}: {ft['epochs']} epoch(s) on {p['n_train'] or 50000:,} images per pruned network, "
                f"{len(p['seeds'])} seed(s)")
    ref = reference.load("summary_comparisons").query("table == 'Table 1'").pivot_table(
        index="row", columns="metric", values="value", aggfunc="first")
    l1 = {"ResNet56": [r for r in plan.done(res["finetune"]) if r["config"]["criterion"] == "l1norm"
                       and r["config"]["scope"] == "uniform"],
          "VGG16": plan.done(res["table1_networks"]),
          "ResNet110": plan.done(plan.committed(resnet110_runs, profile)["table1"])}
    for net in ("VGG16", "ResNet56", "ResNet110"):
        by_t = {}
        for r in l1[net]:
            by_t.setdefault(r["config"]["target"], []).append(100 * (r["metrics"]["baseline_test_acc"] - r["metrics"]["test_acc"]))
        ours = "; ".join(f"{sum(v) / len(v):.2f} at {t:.0%} FLOPs removed" for t, v in sorted(by_t.items())) or None
        missing = ("its runs are not committed yet (python -m reprolib.sweep criteria_benchmark --runs resnet110_runs: "
                   "about 3-5.5 h of 2 CPU cores for its dense network at the budget recipe)"
                   if net == "ResNet110" else "its runs are not committed")
        rows.append(summary.Row(chapter, f"Shangyu Table 1, {net}: accuracy drop of L1-norm ('weight-based') "
                                "filter pruning (points)", float(ref.loc[net, "top1_drop_pct"]), ours,
                                protocol if ours else missing, "not comparable" if ours else "not run yet",
                                "the table's percentage column is unlabelled and its fine-tuning unstated; our dense "
                                "network is trained here on the JPEG copy" if ours else ""))
    apoz = res["apoz_iterations"]
    aref = reference.load("apoz_iterations").query("table == 'Table 1'")
    order = list(dict.fromkeys(aref["row"]))
    paper = aref.pivot_table(index="row", columns="metric", values="value", aggfunc="first").loc[order]
    done = not plan.is_planned(apoz)
    last = apoz["rows"][-1] if done else None
    rows.append(summary.Row(chapter, f"APoZ trimming, compression after {len(order) - 1} iterations (Qin Table 1)",
                            float(paper["compression_x"].iloc[-1]), float(last["compression"]) if done else None,
                            f"{p['profile']}: VGG-16 for CIFAR-10, {p['apoz_iterations']} iterations",
                            "not comparable" if done else "not run yet",
                            "ImageNet's VGG-16 (4096-neuron FC6) vs CIFAR-10's (512); we trim conv5_1-5_3 and the "
                            "hidden FC, the document CONV5-3 and FC6; threshold ours" if done else ""))
    if done:
        gain = 100 * (last["acc_after_ft"] - apoz["rows"][0]["acc_after_ft"])
        rows.append(summary.Row(chapter, "APoZ trimming, top-1 change from the dense network after the last "
                                "fine-tuning (points, Qin Table 1)",
                                float(paper["top1_pct_after_ft"].iloc[-1] - paper["top1_pct_after_ft"].iloc[0]), gain,
                                f"{p['profile']}: VGG-16 for CIFAR-10", "not comparable",
                                "another data set and network head; one run"))
    return rows
