"""Does removing filters for real make ResNet-56 faster on this CPU, as much as its FLOPs say?

For each compress-rate spec of the HRank study's Table 1 (masks from HRank's rank criterion), the
dense network, the masked one (HRank's zeros, same shapes) and the shrunk one (``surgery.shrink``) are
timed side by side, round-robin, at batch 1 and batch 128 (median of repeated forward passes; the
same measurement as the structural chapter's, ``structural.lens_rows``). Printed: the FLOPs ratio
dense / shrunk (true convention) and the measured speedups. Written to
data/results/bench/shrink_latency.json.

    make bench      # sets MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ for stable timings

Weights: the committed budget baseline if it is there, else a seeded random initialisation (latency
does not depend on the weights; which filters the ranks pick changes the shrunk shapes a little).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from reprolib import baseline, data as data_mod, profiles, runs, structural
from reprolib.models import create


def weights() -> tuple[torch.nn.Module, str]:
    os.environ["REPROLIB_CACHED_ONLY"] = "1"  # never train from a benchmark
    try:
        rec = baseline.run("budget")
        return baseline.load_model(rec), f"budget baseline {rec['hash']} (test acc {rec['metrics']['test_acc']:.4f})"
    except runs.NotCachedError:
        torch.manual_seed(0)
        return create("resnet56").eval(), "random initialisation (seed 0)"


def main(repeats: int, batches: list[int]) -> dict:
    model, source = weights()
    p = dict(profiles.get("structural", "budget"), latency_repeats=repeats, latency_batches=batches)
    images = data_mod.load("cifar10").train_x[: p["rank_batch"] * p["hrank_batches"]]
    rows = structural.lens_rows(model, images, p)
    return {"benchmark": "shrink_latency", "weights": source, "masks": "hrank rank, HRank Table 1 rates (local)",
            "repeats": repeats, "batches": batches, "threads": rows[0]["threads"],
            "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}


def table(out: dict) -> str:
    lines = [f"ResNet-56, {out['threads']} threads, median of {out['repeats']} interleaved passes; "
             f"weights: {out['weights']}",
             f"{'row':>3} {'FLOPs ratio':>11}" + "".join(
                 f" | b{b}: {'shrunk':>7} {'/FLOPs':>6} {'masked':>7}" for b in out["batches"])]
    for r in out["rows"]:
        ratio = r["flops_dense"] / r["flops_shrunk"]
        cells = []
        for b in out["batches"]:
            s, m = r[f"ms_dense_b{b}"] / r[f"ms_shrunk_b{b}"], r[f"ms_dense_b{b}"] / r[f"ms_masked_b{b}"]
            cells.append(f" | b{b}: {s:>6.2f}x {s / ratio:>6.2f} {m:>6.2f}x")
        lines.append(f"{r['row']:>3} {ratio:>11.2f}" + "".join(cells))
    lines.append("speedup = dense ms / ms; /FLOPs = shrunk speedup / FLOPs ratio (target >= 0.8 at batch 128)")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    args = ap.parse_args()
    out = main(args.repeats, args.batches)
    print(table(out))
    path = runs.results_dir() / "bench" / "shrink_latency.json"
    runs.write_json_atomic(out, path)
    print(f"-> {path}")
