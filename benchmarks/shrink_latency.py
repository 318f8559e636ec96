"""Does removing filters for real make ResNet-56 faster on this CPU, as much as its FLOPs say?

For each compress-rate spec of the HRank study's Table 1, the dense network, the masked one (HRank's
zeros, same shapes) and the shrunk one (``surgery.shrink``) are timed side by side, round-robin, at
batch 1 and batch 128 (median of repeated forward passes). Printed: the FLOPs ratio dense / shrunk
(true convention) and the measured latency ratios. Written to data/results/bench/shrink_latency.json.

    make bench      # sets MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ for stable timings

Masks: L1-norm of the filters at the spec's per-layer rates (which filters does not change the cost
of a layer, but across blocks it decides how many residual channels survive). Weights: the committed
budget baseline if it is there, else a seeded random initialisation (latency does not depend on them).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from reprolib import criteria, masks as masks_mod, spec, surgery
from reprolib.counting import count, latency_interleaved
from reprolib.models import create
from reprolib.runs import results_dir, write_json_atomic


def baseline_or_random() -> tuple[torch.nn.Module, str]:
    from reprolib import baseline, runs
    try:
        os.environ.setdefault("REPROLIB_CACHED_ONLY", "1")
        rec = baseline.run("budget")
        return baseline.load_model(rec), f"budget baseline {rec['hash']}"
    except runs.NotCachedError:
        torch.manual_seed(0)
        return create("resnet56").eval(), "random initialisation (seed 0)"


def main(repeats: int, batches: list[int]) -> dict:
    model, weights = baseline_or_random()
    convs = masks_mod.conv_layers(model)
    l1 = criteria.get("l1norm")(model, convs)
    rows = []
    for row, s in spec.table1().items():
        rates = dict(zip(convs, spec.parse(s, n_layers=len(convs))))
        masks = masks_mod.from_scores(l1, rates, scope="local")
        nets = {"dense": model, "masked": surgery.apply_masks(model, masks), "shrunk": surgery.shrink(model, masks)}
        flops = {k: count(m, (1, 3, 32, 32))["flops"] for k, m in nets.items()}
        params = {k: count(m, (1, 3, 32, 32))["params"] for k, m in nets.items()}
        rec = {"row": row, "spec": s, "params_dense": params["dense"], "params_shrunk": params["shrunk"],
               "flops_dense": flops["dense"], "flops_shrunk": flops["shrunk"],
               "flops_ratio": flops["dense"] / flops["shrunk"]}
        for b in batches:
            t = latency_interleaved(nets, (b, 3, 32, 32), repeats=repeats, warmup=3)
            for k in nets:
                rec[f"ms_{k}_b{b}"] = t[k]["median_ms"]
            rec[f"speedup_shrunk_b{b}"] = t["dense"]["median_ms"] / t["shrunk"]["median_ms"]
            rec[f"speedup_masked_b{b}"] = t["dense"]["median_ms"] / t["masked"]["median_ms"]
            rec[f"threads"] = t["dense"]["threads"]
        rows.append(rec)
        print(f"row {row}: FLOPs ratio {rec['flops_ratio']:.2f}, " +
              ", ".join(f"b{b} speedup shrunk {rec[f'speedup_shrunk_b{b}']:.2f} masked "
                        f"{rec[f'speedup_masked_b{b}']:.2f}" for b in batches), flush=True)
    return {"benchmark": "shrink_latency", "weights": weights, "masks": "l1norm, local, HRank Table 1 rates",
            "repeats": repeats, "batches": batches, "threads": torch.get_num_threads(),
            "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    args = ap.parse_args()
    out = main(args.repeats, args.batches)
    print(f"\nResNet-56, {out['threads']} threads, median of {args.repeats} interleaved passes; weights: {out['weights']}")
    head = f"{'row':>3} {'FLOPs ratio':>11}" + "".join(
        f" {'b' + str(b) + ' shrunk':>10} {'/FLOPs':>7} {'b' + str(b) + ' masked':>10}" for b in out["batches"])
    print(head)
    for r in out["rows"]:
        print(f"{r['row']:>3} {r['flops_ratio']:>11.2f}" + "".join(
            f" {r[f'speedup_shrunk_b{b}']:>9.2f}x {r[f'speedup_shrunk_b{b}'] / r['flops_ratio']:>7.2f}"
            f" {r[f'speedup_masked_b{b}']:>9.2f}x" for b in out["batches"]))
    path = results_dir() / "bench" / "shrink_latency.json"
    write_json_atomic(out, path)
    print(f"-> {path}")
