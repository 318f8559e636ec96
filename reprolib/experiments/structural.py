"""The structural-vs-nominal experiments (Tessier et al. 2022), each a cached run of experiment
"structural":

* ``sparsity(profile)``: sparsity training of the ResNet-56 baseline (L1 on every BN gamma, Liu et al.'s
  first step), shared by every slimming rate; keeps its weights and the |gamma| histograms before and after;
* ``slimming(profile, rate)``: network slimming of that network to ``rate`` of its filters removed
  (3 iterations, fine-tuning), then ``shrink``: accuracy and nominal vs actual pruning rate;
* ``sweep(profile)``: structure only (no fine-tuning), L1-norm masks at uniform and global rates, on
  the ResNet-56 baseline and a randomly initialised torchvision ResNet-50;
* ``hrank_lens(profile)``: the HRank study's Table 1 specs (masks from HRank's rank criterion):
  params and FLOPs as HRank counts them vs what the shrunk network has, and measured CPU latency of
  the dense, masked and shrunk networks.

    python -m reprolib.experiments.structural --profile budget     # runs (or reads) all of them
"""
from __future__ import annotations

import json

import torch
from tqdm import tqdm

from .. import criteria, data as data_mod, masks as masks_mod, profiles, runs, slimming as slim, spec, surgery, plan
from . import baseline
from ..counting import count, latency_interleaved
from ..device import current as device
from ..models import create
from ..train import evaluate, save_atomic, seed_everything


# Structural vs nominal pruning ratio (Tessier et al. 2022): network slimming of the baseline,
# structure-only sweeps of ResNet-56 and ResNet-50, and HRank's specs through the same lens.
# Slimming: ``lam`` is the L1 factor on the BN gammas (Liu et al.'s penalty), in the ``sparsity`` training
# that comes first and in each iteration's fine-tuning (Tessier et al. keep it there).
PRESETS = {
    "smoke": dict(baseline="smoke", rates=[0.3, 0.6], iterations=3, lam=1e-2, lam_probe=[], n_train=512, n_test=512,
                  sparsity=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                nesterov=True, weight_decay=5e-4, bf16=True, channels_last=True, seed=0),
                  finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                nesterov=True, weight_decay=5e-4, bf16=True, channels_last=True, seed=0),
                  sweep_rates=[0.3, 0.6], resnet50_size=32, hrank_weights="random", hrank_batches=1,
                  rank_batch=32, latency_batches=[1, 8], latency_repeats=2),
    # One epoch of fine-tuning per iteration on the first 10,000 training images (the document: 10 epochs
    # on ImageNet), four target rates; all 10,000 test images. Ours: the sparsity training, 4 epochs on the
    # same images at lr 0.02 (cosine) with lam 1e-2, our estimate, chosen before measuring, of the strength at
    # which a clear share of gammas goes to ~0 in that time (Liu et al.: lam 1e-5 over 160 epochs from scratch, about
    # 2,000 times our sum of learning rates over the steps; the L1 drift of a gamma is lam x that sum);
    # lam_probe: the same sparsity training at a third and three times that strength, for the histograms.
    # Fine-tuning of the pruned networks in bf16 NCHW (faster than channels_last for narrow layers on 1 thread).
    "budget": dict(baseline="budget", rates=[0.2, 0.4, 0.6, 0.8], iterations=3, lam=1e-2, lam_probe=[3e-3, 3e-2],
                   n_train=10000,
                   n_test=None, sparsity=dict(epochs=4, lr=0.02, schedule="cosine", batch_size=128,
                                              momentum=0.9, nesterov=True, weight_decay=5e-4, bf16=True,
                                              channels_last=True, seed=0),
                   finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128,
                                              momentum=0.9, nesterov=True, weight_decay=5e-4, bf16=True,
                                              channels_last=False, seed=0),
                   sweep_rates=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], resnet50_size=64,
                   hrank_weights="baseline", hrank_batches=5, rank_batch=128, latency_batches=[1, 128],
                   latency_repeats=15),
    # Section 4.1: 3 iterations, 10 epochs of fine-tuning after each (ResNet-50), lr 0.01, wd 1e-4, lam 1e-5
    # (their "smooth-L1": here the L1 of Liu et al.). Sparsity training: Liu et al.'s CIFAR recipe (160
    # epochs, batch 64, lr 0.1 divided by 10 at 50% and 75%, wd 1e-4, lam 1e-5 for ResNets); ours: from
    # the trained baseline, where Liu et al. train from scratch.
    "paper": dict(baseline="paper", rates=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], iterations=3,
                  lam=1e-5, lam_probe=[], n_train=None, n_test=None,
                  sparsity=dict(epochs=160, lr=0.1, schedule="step", milestones=[80, 120], batch_size=64,
                                momentum=0.9, nesterov=False, weight_decay=1e-4, bf16=False,
                                channels_last=False, seed=0),
                  finetune=dict(epochs=10, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                nesterov=False, weight_decay=1e-4, bf16=False, channels_last=False, seed=0),
                  sweep_rates=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], resnet50_size=224,
                  hrank_weights="baseline", hrank_batches=5, rank_batch=128, latency_batches=[1, 128],
                  latency_repeats=30),
}

CIFAR = (1, 3, 32, 32)


def _baseline(profile: str):
    rec = baseline.run(profile)
    return baseline.load_model(rec), rec


def rates_of(model, masks: dict, small, input_size=CIFAR) -> dict:
    """Nominal (share of filters removed by the masks) vs actual (share of parameters / FLOPs gone from
    the shrunk network, true convention) pruning rates, and the counts behind them."""
    dense, shrunk = count(model, input_size), count(small, input_size)
    filters = sum(len(k) for k in masks.values())
    removed = sum(int((~k).sum()) for k in masks.values())
    return {"filters": filters, "filters_removed": removed, "nominal_rate": removed / filters,
            "params_dense": dense["params"], "params_shrunk": shrunk["params"],
            "flops_dense": dense["flops"], "flops_shrunk": shrunk["flops"],
            "actual_rate": 1 - shrunk["params"] / dense["params"],
            "actual_flops_rate": 1 - shrunk["flops"] / dense["flops"]}


# --------------------------------------------------------------------------- network slimming

@plan.recipe
def sparsity(profile: str | None = None, lam: float | None = None) -> dict:
    """Sparsity training of the baseline (Liu et al.'s first step), shared by every slimming rate: the
    preset's ``sparsity`` epochs on the slimming's training images with the L1 penalty ``lam`` (default: the
    preset's) on the gamma of every BN after a conv. Keeps the weights, and the |gamma| histograms before
    and after. The preset's ``lam_probe`` strengths are run too, to show how strongly each one sparsifies."""
    p = profiles.get("structural", profile)
    model, base = _baseline(p["baseline"])
    config = {"part": "sparsity", "profile": p["profile"], "baseline": base["hash"], "model": base["config"]["model"],
              **{k: p[k] for k in ("lam", "n_train", "n_test", "sparsity")}}
    if lam is not None:
        config["lam"] = lam

    def fn(config, paths):
        d = data_mod.load(base["config"]["dataset"]).subset(config["n_train"], config["n_test"]).to(device())
        convs = masks_mod.conv_layers(model)
        before = slim.gamma_histogram(model, convs)
        seed_everything(config["sparsity"]["seed"])
        curves = slim.sparsify(model, d, config["lam"], layers=convs, checkpoint=paths["checkpoint"],
                               **config["sparsity"])
        save_atomic(model.state_dict(), paths["weights"])
        return {**d.describe(), "model": config["model"], "weights": paths["weights"].name, "curves": curves,
                "gamma_histogram": {"before": before, "after": slim.gamma_histogram(model, convs)},
                "metrics": {"test_acc": evaluate(model, d.test_x, d.test_y)["acc"],
                            "baseline_test_acc": base["metrics"]["test_acc"]}}
    return runs.run("structural", config, fn)


def sparse_model(record: dict):
    """The sparsity-trained network of a ``sparsity`` record (its weights file, loaded with weights_only)."""
    model, _ = _baseline(profiles.get("structural", record["config"]["profile"])["baseline"])
    path = runs.paths("structural", record["config"])["weights"]
    model.load_state_dict(runs.load_weights(path, map_location=device()))
    return model.eval()


@plan.recipe
def slimming(profile: str | None = None, rate: float = 0.5) -> dict:
    p = profiles.get("structural", profile)
    base, srec = baseline.run(p["baseline"]), sparsity(profile)
    config = {"part": "slimming", "profile": p["profile"], "baseline": base["hash"], "model": base["config"]["model"],
              "sparsity": srec["hash"], "rate": rate,
              **{k: p[k] for k in ("iterations", "lam", "n_train", "n_test", "finetune")}}

    def fn(config, paths):
        model = sparse_model(srec)
        d = data_mod.load(base["config"]["dataset"]).subset(config["n_train"], config["n_test"]).to(device())
        seed_everything(config["finetune"]["seed"])
        masks, history = slim.prune(model, d, rate, iterations=config["iterations"], lam=config["lam"],
                                    checkpoint_prefix=paths["checkpoint"].with_suffix(""), **config["finetune"])
        out = {"masked": evaluate(model, d.test_x, d.test_y)["acc"]}
        small = surgery.shrink(model, masks)
        out["shrunk"] = evaluate(small, d.test_x, d.test_y)["acc"]
        literal = surgery.shrink(model, masks, exact=False)  # the document's Algorithm 1 as printed
        out["shrunk_literal"] = evaluate(literal, d.test_x, d.test_y)["acc"]
        for ckpt in paths["checkpoint"].parent.glob(paths["checkpoint"].stem + "-it*.pt"):
            ckpt.unlink()
        return {**d.describe(), "model": config["model"],
                "metrics": {"test_acc_masked": out["masked"], "test_acc_shrunk": out["shrunk"],
                            "test_acc_shrunk_literal": out["shrunk_literal"], "baseline_test_acc": base["metrics"]["test_acc"],
                            "test_acc_after_sparsity": srec["metrics"]["test_acc"], **rates_of(model, masks, small),
                            "actual_rate_literal": 1 - count(literal, CIFAR)["params"] / count(model, CIFAR)["params"]},
                "gamma_histogram": srec["gamma_histogram"],  # |gamma| before and after the sparsity training
                "curves": [dict(c, iteration=h["iteration"], target=h["rate"]) for h in history for c in h["curves"]]}
    return runs.run("structural", config, fn)


# --------------------------------------------------------------------------- structure-only sweeps

@plan.recipe
def sweep(profile: str | None = None) -> dict:
    p = profiles.get("structural", profile)
    model56, base = _baseline(p["baseline"])
    config = {"part": "sweep", "profile": p["profile"], "baseline": base["hash"], "rates": p["sweep_rates"],
              "resnet50_size": p["resnet50_size"], "seed": 0}

    def fn(config, paths):
        torch.manual_seed(config["seed"])
        model50 = create("resnet50").eval().to(device())
        size50 = (1, 3, config["resnet50_size"], config["resnet50_size"])
        nets = [(base["model"], model56, CIFAR, "trained baseline"), ("resnet50", model50, size50, "random init")]
        rows = []
        for name, model, size, weights in nets:
            convs = masks_mod.conv_layers(model)
            l1 = criteria.get("l1norm")(model, convs)
            for scope in ("local", "global"):
                for rate in tqdm(config["rates"], desc=f"{name} {scope}", leave=False):
                    m = masks_mod.from_scores(l1, rate, scope=scope)
                    small = surgery.shrink(model, m, size)
                    rows.append({"model": name, "weights": weights, "scope": scope, "rate": rate,
                                 "input_size": list(size), **rates_of(model, m, small, size)})
        return {"model": "resnet56+resnet50", "metrics": {"rows": len(rows)}, "rows": rows}
    return runs.run("structural", config, fn)


# --------------------------------------------------------------------------- HRank through the lens

def hrank_masks(model, images: torch.Tensor, rates: list[float], batch: int, n_batches: int) -> dict:
    """HRank's masks: the rank criterion over ``n_batches`` batches of ``images`` (uint8, no
    augmentation), the per-layer ``rates`` of a spec (local rule: int(C * r) filters pruned)."""
    convs = masks_mod.conv_layers(model)
    batches = data_mod.batches(images, torch.zeros(len(images), dtype=torch.long, device=images.device), batch)
    ranks = criteria.get("hrank")(model, convs, batches, n_batches=n_batches)
    return masks_mod.from_scores(ranks, dict(zip(convs, rates)), scope="local")


def lens_rows(model, images, p: dict, *, latency: bool = True) -> list[dict]:
    """Per Table 1 spec: HRank-convention counts, true counts of the shrunk network, latencies."""
    convs = masks_mod.conv_layers(model)
    rows = []
    for row, s in tqdm(spec.table1().items(), desc="HRank specs", leave=False):
        rates = spec.parse(s, n_layers=len(convs))
        masks = hrank_masks(model, images, rates, p["rank_batch"], p["hrank_batches"])
        small = surgery.shrink(model, masks)
        hr = count(model, CIFAR, convention="hrank", rates=rates)
        rec = {"row": row, "spec": spec.format(rates), "params_hrank": hr["params"], "flops_hrank": hr["flops"],
               **rates_of(model, masks, small)}
        masked = surgery.apply_masks(model, masks)
        with torch.no_grad():
            x = data_mod.normalize(images[:64])
            rec["max_abs_diff_shrunk_vs_masked"] = (small.eval()(x) - masked.eval()(x)).abs().max().item()
        if latency:
            nets = {"dense": model, "masked": masked, "shrunk": small}
            for b in p["latency_batches"]:
                t = latency_interleaved(nets, (b, 3, 32, 32), repeats=p["latency_repeats"], warmup=3)
                for k, v in t.items():
                    rec[f"ms_{k}_b{b}"] = v["median_ms"]
                rec["threads"] = t["dense"]["threads"]
        rows.append(rec)
    return rows


@plan.recipe
def hrank_lens(profile: str | None = None) -> dict:
    p = profiles.get("structural", profile)
    keys = ("hrank_weights", "hrank_batches", "rank_batch", "latency_batches", "latency_repeats")
    if p["hrank_weights"] == "baseline":
        model, base = _baseline(p["baseline"])
        weights = base["hash"]
    else:
        torch.manual_seed(0)
        model, weights = create("resnet56").eval().to(device()), "random-init seed 0"
    config = {"part": "hrank_lens", "profile": p["profile"], "weights": weights, **{k: p[k] for k in keys}}

    def fn(config, paths):
        d = data_mod.load("cifar10")
        rows = lens_rows(model.eval(), d.train_x[: p["rank_batch"] * p["hrank_batches"]].to(device()), p)
        return {"model": "resnet56", "dataset": d.copy, "metrics": {"rows": len(rows)}, "rows": rows}
    return runs.run("structural", config, fn)


def all_runs(profile: str | None = None) -> dict:
    """Every run the chapter shows: the sparsity training and slimming at each rate, the structure sweeps,
    HRank's specs through the lens."""
    p = profiles.get("structural", profile)
    return {"sparsity": sparsity(profile), "lam_probe": [sparsity(profile, lam) for lam in p["lam_probe"]],
            "slimming": [slimming(profile, r) for r in p["rates"]], "sweep": sweep(profile),
            "hrank_lens": hrank_lens(profile)}


def bench_results(name: str = "shrink_latency") -> dict | None:
    """The latest ``make bench`` results ``data/results/bench/<name>.json`` (``shrink_latency``, ``prune_speed``),
    or None."""
    path = runs.results_dir() / "bench" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def width_scaling(bench: dict) -> "pd.DataFrame":
    """``benchmarks/shrink_latency.py``'s single 3x3 convolutions (c -> c channels), one row per (map size, width):
    the width and the FLOPs as fractions of the stage's dense width and FLOPs, the time as a fraction of the
    dense width's time, and that time over the width fraction (1.0: time proportional to the width, that is to
    the activations read and written; the FLOPs fraction over the width fraction where time follows FLOPs)."""
    import pandas as pd
    if not bench.get("conv_widths"):
        raise ValueError("these shrink_latency results have no 'conv_widths': rerun benchmarks/shrink_latency.py")
    W = pd.DataFrame(bench["conv_widths"])
    dense = W[W["channels"] == W["dense_channels"]].set_index("size")["ms"]
    if set(dense.index) != set(W["size"]):
        raise ValueError(f"conv_widths lacks the dense width at map sizes {sorted(set(W['size']) - set(dense.index))}")
    out = pd.DataFrame({"size": W["size"], "dense width": W["dense_channels"], "width": W["channels"]})
    out["width fraction"] = W["channels"] / W["dense_channels"]
    out["FLOPs fraction"] = out["width fraction"] ** 2
    out["time fraction"] = W["ms"] / W["size"].map(dense)
    out["time / width fraction"] = out["time fraction"] / out["width fraction"]
    return out.sort_values(["size", "width"], ascending=[False, True]).reset_index(drop=True)


def speed_table(bench: dict, batch: int) -> "pd.DataFrame":
    """``benchmarks/prune_speed.py``'s results at ``batch``, one row per (Table 1 row, network): true FLOPs ratio
    to the dense network, speed-up over the dense network on each backend (eager, ONNX Runtime, the fastest of
    both) and speed-up / FLOPs ratio, with the fastest variant's label; where the results have them (runs after
    2026-11-28), the ratio of the elements the convolutions read and write and the fastest speed-up over it."""
    import pandas as pd
    if batch not in bench.get("batches", [batch]):
        raise ValueError(f"prune_speed results have batch sizes {bench['batches']}, not {batch}: pick one of them, "
                         f"or rerun benchmarks/prune_speed.py --batches {batch}")
    out = []
    for row in bench["rows"]:
        cell = row[f"b{batch}"]
        for net, ratio in row["flops_ratio"].items():
            if net == "dense":
                continue
            rec = {"row": row["row"], "network": net, "FLOPs ratio": ratio, "params": row["params"][net]}
            for backend, speedups in cell["speedup"].items():
                rec[f"speed-up {backend}"] = speedups[net]
                rec[f"{backend} / FLOPs ratio"] = speedups[net] / ratio
            if "activation_ratio" in row:
                rec["activation ratio"] = row["activation_ratio"][net]
                rec["best / activation ratio"] = cell["speedup"]["best"][net] / row["activation_ratio"][net]
            rec["fastest"] = cell["best"][net]["label"]
            out.append(rec)
    return pd.DataFrame(out)


if __name__ == "__main__":
    ap = profiles.cli_parser(__doc__)
    ap.add_argument("--part", default="all", choices=["all", "slimming", "sweep", "hrank_lens"])
    a = ap.parse_args()
    if a.part in ("all", "sweep"):
        print("sweep:", sweep(a.profile)["hash"])
    if a.part in ("all", "hrank_lens"):
        print("hrank_lens:", hrank_lens(a.profile)["hash"])
    if a.part in ("all", "slimming"):
        h = sparsity(a.profile)["gamma_histogram"]
        print("sparsity training: share of |gamma| < 1e-2 " + " -> ".join(f"{h[k]['share_below']['0.01']:.3f}" for k in ("before", "after")))
        for r in profiles.get("structural", a.profile)["rates"]:
            rec = slimming(a.profile, r)
            print(f"slimming {r}: acc {rec['metrics']['test_acc_shrunk']:.4f}, actual rate {rec['metrics']['actual_rate']:.3f}")


def comparisons(profile: str | None = None) -> list:
    """The reproduction summary's rows of this chapter (committed runs only): the one number of Tessier et al.'s
    figures that their text states (ResNet-50 at 60%, accuracy before and after their method)."""
    from .. import plan, reference, summary
    p = profiles.get("structural", profile)
    paper = reference.load("tessier_prose").set_index("metric")["value"]
    recs = [r for r in plan.committed(lambda: [slimming(profile, r) for r in p["rates"]]) if not plan.is_planned(r)]
    last = max(recs, key=lambda r: r["config"]["rate"]) if recs else None
    ours = (100 * (last["metrics"]["test_acc_shrunk_literal"] - last["metrics"]["test_acc_masked"])) if last else None
    return [summary.Row("structural-vs-nominal",
                        f"accuracy change from the masked network to the literal Algorithm 1's, ResNet-50 / ImageNet "
                        f"pruned at {paper['pruning_rate_pct']:g}% (points, Sec. 4.2 text)",
                        float(paper["top1_pct_after_method"] - paper["top1_pct_before_method"]), ours,
                        f"{p['profile']}: ResNet-56 / CIFAR-10 slimmed to {last['config']['rate']:.0%} of its filters"
                        if last else p["profile"], "not comparable" if last else "not run yet",
                        "another network, data set and pruning budget; only the direction is comparable" if last else "")]
