"""Are pruned ResNet-56s as fast as their FLOPs say? One run, side by side, for HRank's Table 1 specs.

For each compress-rate spec (masks from HRank's rank criterion on the committed budget baseline if it
is there, else on a seeded random initialisation: the output says which), these networks:

* ``dense``: the ResNet-56;  ``masked``: HRank's zeros, same shapes;
* ``shrunk``: ``surgery.shrink`` of the masks (the papers' exact rates);
* ``shrunk_r<k>``: the same masks with ``round_to=k`` (kept filters rounded up to a multiple of k,
  the extra ones by rank), the hardware-aware option, for each k of ``--round-to`` (default 8 and 16);
* ``tp``, ``tp_r<k>``: Torch-Pruning (L1 magnitude, per-layer ratio searched so that its true FLOPs
  match ``shrunk`` / ``shrunk_r<k>``; its stem and classifier are left alone, as it cannot prune
  through the option-A shortcut otherwise);

are timed in PyTorch eager (BatchNorm folded; NCHW and channels_last; for shrunk networks also with
the indexation-additions fused into their convolutions where that costs no extra 16-channel block)
and in ONNX Runtime (``reprolib.deploy``), at each batch size, round-robin (``latency_interleaved``,
medians). A network's time on a backend is its fastest variant and format there; ``best`` is its
fastest over both backends. Speed-ups are against the dense network's time on the same backend
(``best``: the dense network's fastest). Printed: speed-up / true FLOPs ratio, the target being
>= 0.8 at batch 128 (ONNX Runtime: >= 0.7), and beside it the ratio of the elements the convolutions
read and write (``count``'s ``conv_activations``), which narrowing cuts linearly where it cuts FLOPs
quadratically. Then training-step throughput (batch 128, SGD) of the
dense and shrunk networks of the training specs, each in its fastest format. Written to
data/results/bench/prune_speed.json (``--out`` to change).

    make bench                                   # sets the allocator variables of BENCH_ENV
    python benchmarks/prune_speed.py --quick --out /tmp/prune_speed.json
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from reprolib import criteria, data as data_mod, deploy, formats, masks as masks_mod, runs, spec, surgery
from reprolib.counting import count, latency_interleaved
from reprolib.models import create

CIFAR = (1, 3, 32, 32)
MALLOC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def weights() -> tuple[nn.Module, str]:
    """The committed budget baseline if it is there, else a seeded random initialisation."""
    from reprolib.experiments import baseline
    os.environ["REPROLIB_CACHED_ONLY"] = "1"  # never train from a benchmark
    try:
        rec = baseline.run("budget")
        return baseline.load_model(rec).cpu().eval(), f"budget baseline {rec['hash']}"
    except (runs.NotCachedError, FileNotFoundError):
        torch.manual_seed(0)
        return create("resnet56").eval(), "random initialisation (seed 0): no committed budget baseline"


def hrank_scores(model: nn.Module, n_batches: int, batch: int) -> dict[str, torch.Tensor]:
    """HRank's per-filter ranks of every conv, on the first ``n_batches * batch`` training images."""
    images = data_mod.load("cifar10").train_x[: n_batches * batch]
    convs = masks_mod.conv_layers(model)
    batches = data_mod.batches(images, torch.zeros(len(images), dtype=torch.long), batch)
    return criteria.get("hrank")(model, convs, batches, n_batches=n_batches)


def flops(model: nn.Module) -> int:
    return count(model, CIFAR)["flops"]


def tp_at_flops(model: nn.Module, target: int, round_to: int | None, steps: int) -> tuple[nn.Module, float]:
    """Torch-Pruning's L1 pruning of ``model`` at the uniform ratio whose true FLOPs are closest to
    ``target`` (bisection over the ratio); returns the pruned copy and the ratio."""
    import torch_pruning as tp

    def prune(ratio: float) -> nn.Module:
        net = copy.deepcopy(model).eval()
        pruner = tp.pruner.BasePruner(net, torch.randn(CIFAR), importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=[net.conv1, net.fc], round_to=round_to)
        pruner.step()
        return net

    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        net = prune(mid)
        f = flops(net)
        if best is None or abs(f - target) < abs(best[2] - target):
            best = (net, mid, f)
        lo, hi = (mid, hi) if f > target else (lo, mid)
    return best[0], best[1]


def eager_variants(nets: dict[str, nn.Module]) -> dict[str, dict[str, nn.Module]]:
    """Per network, the inference variants timed in PyTorch: BN folded, and for shrunk networks also
    with the indexation-additions fused where that is free (``surgery.fuse_index_add``)."""
    out = {}
    for k, m in nets.items():
        folded = surgery.fold_bn(m)
        out[k] = {"fold": folded}
        if k.startswith("shrunk"):
            out[k]["fold+fuse"] = surgery.fuse_index_add(folded)
    return out


def time_eager(variants: dict, batch: int, repeats: int, warmup: int, threads: int) -> dict[str, float]:
    mods = {f"{k}|{v}|{formats.name(fmt)}": formats.Formatted(copy.deepcopy(m), fmt)
            for k, vs in variants.items() for v, m in vs.items() for fmt in formats.INFERENCE}
    t = latency_interleaved(mods, (batch, 3, 32, 32), repeats=repeats, warmup=warmup, threads=threads)
    return {k: r["median_ms"] for k, r in t.items()}


def time_ort(paths: dict[str, Path], batch: int, repeats: int, warmup: int, threads: int) -> dict[str, float]:
    mods = {k: deploy.OrtModule(deploy.session(p, threads)) for k, p in paths.items()}
    t = latency_interleaved(mods, (batch, 3, 32, 32), repeats=repeats, warmup=warmup, threads=threads)
    return {k: r["median_ms"] for k, r in t.items()}


def fastest(times: dict[str, float], net: str) -> tuple[str, float]:
    """The fastest label of ``net`` (labels are ``net|variant|format``) and its ms."""
    mine = {k: v for k, v in times.items() if k.split("|")[0] == net}
    k = min(mine, key=mine.get)
    return k, mine[k]


def one_spec(row: int, s: str, model, scores, dense_onnx: Path, tmp: Path, a) -> dict:
    convs = masks_mod.conv_layers(model)
    rates = spec.parse(s, n_layers=len(convs))
    exact = masks_mod.from_scores(scores, dict(zip(convs, rates)), scope="local")
    nets = {"dense": model, "masked": surgery.apply_masks(model, exact), "shrunk": surgery.shrink(model, exact).eval()}
    for k in a.round_to:
        rounded = masks_mod.from_scores(scores, dict(zip(convs, rates)), scope="local", round_to=k)
        nets[f"shrunk_r{k}"] = surgery.shrink(model, rounded).eval()
    tp_ratio = {}
    nets["tp"], tp_ratio["tp"] = tp_at_flops(model, flops(nets["shrunk"]), None, a.tp_steps)
    for k in a.round_to:
        nets[f"tp_r{k}"], tp_ratio[f"tp_r{k}"] = tp_at_flops(model, flops(nets[f"shrunk_r{k}"]), k, a.tp_steps)
    counts = {k: count(m, CIFAR) for k, m in nets.items()}
    rec = {"row": row, "spec": spec.format(rates), "round_to": a.round_to, "tp_ratio": tp_ratio,
           "flops": {k: c["flops"] for k, c in counts.items()}, "params": {k: c["params"] for k, c in counts.items()},
           "conv_activations": {k: c["conv_activations"] for k, c in counts.items()}}
    rec["flops"]["masked"] = rec["flops"]["dense"]  # same shapes: the zeros are still multiplied
    rec["flops_ratio"] = {k: rec["flops"]["dense"] / f for k, f in rec["flops"].items()}
    rec["activation_ratio"] = {k: rec["conv_activations"]["dense"] / n for k, n in rec["conv_activations"].items()}
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rec["max_abs_diff_shrunk_vs_masked"] = (nets["shrunk"](x) - nets["masked"].eval()(x)).abs().max().item()
    variants = eager_variants(nets)
    paths = {"dense": dense_onnx}
    if not a.no_onnx:
        for k, vs in variants.items():
            if k == "dense":
                continue
            for v, m in vs.items():
                paths[f"{k}|{v}"] = deploy.export(m, tmp / f"{row}-{k}-{v.replace('+', '-')}.onnx", fold=False)
        rec["onnx_ops"] = {k: deploy.op_counts(p) for k, p in paths.items()}
    for b in a.batches:
        eager = time_eager(variants, b, a.repeats if b > 1 else a.repeats_b1, a.warmup, a.threads)
        ort = {} if a.no_onnx else time_ort(paths, b, a.repeats if b > 1 else a.repeats_b1, a.warmup, a.threads)
        ort = {(k if "|" in k else f"{k}|fold") + "|fp32": v for k, v in ort.items()}
        cell = {"eager_ms": eager, "ort_ms": ort, "best": {}, "speedup": {}, "per_flops": {}}
        backends = {"eager": eager, "ort": ort} if ort else {"eager": eager}
        for backend, times in list(backends.items()) + [("best", {**{f"{k}": v for k, v in eager.items()},
                                                                   **{f"{k}|ort": v for k, v in ort.items()}})]:
            dense = fastest(times, "dense")[1]
            cell["speedup"][backend], cell["per_flops"][backend] = {}, {}
            for net in nets:
                label, ms = fastest(times, net)
                if backend == "best":
                    cell["best"][net] = {"label": label, "ms": ms}
                cell["speedup"][backend][net] = dense / ms
                cell["per_flops"][backend][net] = dense / ms / rec["flops_ratio"][net]
        rec[f"b{b}"] = cell
    return rec


def training(model, scores, rows: list[int], a) -> list[dict]:
    """Training-step throughput of dense and shrunk (and shrunk + round_to) networks, each in its fastest
    format (picked by measuring all four), then timed side by side."""
    convs = masks_mod.conv_layers(model)
    out = []
    for row in rows:
        rates = spec.parse(spec.table1()[row], n_layers=len(convs))
        nets = {"dense": model, "shrunk": surgery.shrink(model, masks_mod.from_scores(scores, dict(zip(convs, rates))))}
        for k in a.round_to:
            nets[f"shrunk_r{k}"] = surgery.shrink(model, masks_mod.from_scores(scores, dict(zip(convs, rates)), round_to=k))
        picks, all_ips = {}, {}
        for k, m in tqdm(nets.items(), desc=f"training formats, row {row}", leave=False):
            picks[k], all_ips[k] = formats.pick_training(m, a.train_batch, repeats=a.train_repeats, warmup=1,
                                                         threads=a.threads)
        t = formats.training_throughput({k: (m, {"memory_format": picks[k]["memory_format"], "bf16": picks[k]["bf16"]})
                                         for k, m in nets.items()}, a.train_batch, repeats=a.train_repeats,
                                        warmup=1, threads=a.threads)
        out.append({"row": row, "batch_size": a.train_batch, "formats_images_per_s": all_ips,
                    "best_format": {k: formats.name({"memory_format": p["memory_format"], "bf16": p["bf16"]})
                                    for k, p in picks.items()},
                    "images_per_s": {k: v["images_per_s"] for k, v in t.items()},
                    "speedup": {k: t[k]["images_per_s"] / t["dense"]["images_per_s"] for k in t}})
    return out


def table(out: dict) -> str:
    lines = [f"ResNet-56, {out['threads']} threads, fp32 inference (BN folded), medians of round-robin passes",
             f"weights: {out['weights']}; masks: {out['masks']}"]
    for b in out["batches"]:
        lines += ["", f"batch {b}: speed-up vs dense on the same backend (/ = speed-up / true FLOPs ratio)",
                  f"{'row':>3} {'FLOPs x':>7} | {'eager':>12} {'ORT':>12} {'best':>12} | {'TP FLOPs':>8} {'TP best':>12} | "
                  + "".join(f"{'r%d FLOPs' % k:>9} {'r%d best' % k:>12} {'TP r%d best' % k:>12} | " for k in out["round_to"])
                  + f"{'act. x':>6} {'best/act':>8} {'best shrunk':<28}"]
        for row in out["rows"]:
            c, fr = row[f"b{b}"], row["flops_ratio"]
            cell = lambda backend, net: (f"{c['speedup'][backend][net]:5.2f}x/{c['per_flops'][backend][net]:4.2f}"
                                         if backend in c["speedup"] else "-")
            lines.append(f"{row['row']:>3} {fr['shrunk']:>7.2f} | {cell('eager', 'shrunk'):>12} {cell('ort', 'shrunk'):>12} "
                         f"{cell('best', 'shrunk'):>12} | {fr['tp']:>8.2f} {cell('best', 'tp'):>12} | "
                         + "".join(f"{fr[f'shrunk_r{k}']:>9.2f} {cell('best', f'shrunk_r{k}'):>12} "
                                   f"{cell('best', f'tp_r{k}'):>12} | " for k in out["round_to"])
                         + (f"{row['activation_ratio']['shrunk']:>6.2f} "
                            f"{c['speedup']['best']['shrunk'] / row['activation_ratio']['shrunk']:>8.2f} "
                            if "activation_ratio" in row else f"{'-':>6} {'-':>8} ")
                         + f"{c['best']['shrunk']['label']:<28}")
    if out.get("training"):
        lines += ["", "training step (SGD, batch %d), each network in its fastest format:" % out["training"][0]["batch_size"]]
        for t in out["training"]:
            lines.append(f"row {t['row']}: " + ", ".join(
                f"{k} {t['images_per_s'][k]:.0f} img/s ({t['best_format'][k]}, {t['speedup'][k]:.2f}x)" for k in t["images_per_s"]))
    lines += ["", "targets (batch 128): best-backend speed-up >= 0.8 x FLOPs ratio and above Torch-Pruning's ratio; "
              "ORT >= 0.7 x FLOPs ratio; training >= 1.5x (row 1)"]
    if 128 in out["batches"]:
        for row in out["rows"]:
            pf = row["b128"]["per_flops"]
            ok_best = pf["best"]["shrunk"] >= 0.8 and pf["best"]["shrunk"] > pf["best"]["tp"]
            ok_ort = "ort" in pf and pf["ort"]["shrunk"] >= 0.7 and row["b128"]["speedup"]["ort"]["shrunk"] > 1
            lines.append(f"row {row['row']}: best {'met' if ok_best else 'NOT met'}, ORT {'met' if ok_ort else 'NOT met'}")
    for t in out.get("training", []):
        lines.append(f"training row {t['row']}: {'met' if t['speedup']['shrunk'] >= 1.5 else 'NOT met'}")
    return "\n".join(lines)


def main(a) -> dict:
    torch.set_num_threads(a.threads)
    missing = [k for k in MALLOC if not os.environ.get(k)]
    if missing:
        print(f"warning: {', '.join(missing)} not set; run through `make bench` (BENCH_ENV) for stable timings")
    model, source = weights()
    scores = hrank_scores(model, a.hrank_batches, a.rank_batch)
    table1 = spec.table1()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dense_onnx = deploy.export(model, tmp / "dense.onnx") if not a.no_onnx else None
        for row in tqdm(a.specs, desc="HRank specs"):
            rows.append(one_spec(row, table1[row], model, scores, dense_onnx, tmp, a))
    import onnxruntime
    import torch_pruning
    return {"benchmark": "prune_speed", "quick": a.quick, "weights": source,
            "masks": f"HRank ranks ({a.hrank_batches} x {a.rank_batch} training images) of these weights, "
                     "Table 1 rates, local rule",
            "round_to": a.round_to, "threads": a.threads, "batches": a.batches, "repeats": a.repeats,
            "repeats_b1": a.repeats_b1, "malloc_env": {k: os.environ.get(k) for k in MALLOC},
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "torch_pruning": torch_pruning.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows,
            "training": [] if a.no_train else training(model, scores, a.train_specs, a)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="row 1 only, batches 1 and 16, few repeats (a check that it runs)")
    ap.add_argument("--specs", type=int, nargs="+", default=None, help="Table 1 rows (default all seven)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None, help="passes per network at batch > 1 (default 15)")
    ap.add_argument("--repeats-b1", type=int, default=None, help="passes per network at batch 1 (default 50)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--round-to", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--tp-steps", type=int, default=None, help="bisection steps for Torch-Pruning's ratio (default 8)")
    ap.add_argument("--train-specs", type=int, nargs="*", default=[1])
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--train-repeats", type=int, default=None, help="default 5")
    ap.add_argument("--hrank-batches", type=int, default=None, help="default 5 batches of 128 images")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="default data/results/bench/prune_speed.json")
    a = ap.parse_args(argv)
    q = a.quick
    a.specs = a.specs or ([1] if q else list(spec.table1()))
    a.batches = a.batches or ([1, 16] if q else [1, 128])
    a.repeats = a.repeats or (2 if q else 15)
    a.repeats_b1 = a.repeats_b1 or (5 if q else 50)
    a.tp_steps = a.tp_steps or (4 if q else 8)
    a.train_repeats = a.train_repeats or (1 if q else 5)
    a.hrank_batches, a.rank_batch = (a.hrank_batches or (1 if q else 5)), (32 if q else 128)
    if q:
        a.train_batch = min(a.train_batch, 32)
    bad = [r for r in a.specs + a.train_specs if r not in spec.table1()]
    if bad:
        ap.error(f"unknown Table 1 rows {bad}: choose from {list(spec.table1())}")
    if any(k < 2 for k in a.round_to):
        ap.error(f"--round-to values must be >= 2, got {a.round_to}")
    return a


if __name__ == "__main__":
    args = parse_args()
    result = main(args)
    print(table(result))
    path = args.out or runs.results_dir() / "bench" / "prune_speed.json"
    runs.write_json_atomic(result, Path(path))
    print(f"-> {path}")
