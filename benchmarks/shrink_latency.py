"""Does removing filters for real make ResNet-56 faster on this CPU, as much as its FLOPs say?

For each compress-rate spec of the HRank study's Table 1 (masks from HRank's rank criterion), the
dense network, the masked one (HRank's zeros, same shapes) and the shrunk one (``surgery.shrink``) are
timed side by side, round-robin, at batch 1 and batch 128 (median of repeated forward passes; the
same measurement as the structural chapter's, ``structural.lens_rows``). Printed: the FLOPs ratio
dense / shrunk (true convention) and the measured speedups. Then one likely reason the speedup falls
short of the FLOPs ratio, measured: the throughput (GFLOP/s) of a single 3x3 convolution at the channel
widths a shrunk ResNet-56 has, against the dense widths 16/32/64. Written to
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

from reprolib import data as data_mod, profiles, runs
from reprolib.experiments import baseline, structural
from reprolib.counting import latency_interleaved
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
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows,
            "conv_batch": max(batches), "conv_widths": conv_widths(repeats, max(batches))}


class _OwnInput(torch.nn.Module):
    """A module run on its own fixed input (so that modules of different widths can be timed round-robin)."""
    def __init__(self, module: torch.nn.Module, input_size: tuple):
        super().__init__()
        self.module, self.x = module, torch.randn(input_size)

    def forward(self, _):
        return self.module(self.x)


def conv_widths(repeats: int, batch: int = 128) -> list[dict]:
    """GFLOP/s of one 3x3, stride-1 convolution c -> c (no bias) at each stage's resolution, for the dense
    width of the stage and narrower ones, timed round-robin like the networks."""
    rows = []
    for size, dense_c in ((32, 16), (16, 32), (8, 64)):
        widths = sorted({dense_c, dense_c * 3 // 4, dense_c // 2 + 1, dense_c // 2, dense_c // 4 + 1, dense_c // 4}, reverse=True)
        convs = {c: _OwnInput(torch.nn.Conv2d(c, c, 3, padding=1, bias=False), (batch, c, size, size)) for c in widths}
        t = latency_interleaved(convs, (1,), repeats=repeats, warmup=3)
        for c in widths:
            flops = 2 * batch * c * c * 9 * size * size
            rows.append({"size": size, "channels": c, "dense_channels": dense_c, "ms": t[c]["median_ms"],
                         "gflops": flops / t[c]["median_ms"] / 1e6})
    for r in rows:
        r["rel_to_dense"] = r["gflops"] / next(q["gflops"] for q in rows if q["size"] == r["size"] and q["channels"] == r["dense_channels"])
    return rows


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
    lines.append("")
    lines.append(f"One 3x3 convolution c -> c, batch {out['conv_batch']}: throughput against the stage's dense width")
    lines.append(f"{'size':>4} {'c':>3} {'ms':>8} {'GFLOP/s':>8} {'vs dense':>8}")
    for r in out["conv_widths"]:
        lines.append(f"{r['size']:>4} {r['channels']:>3} {r['ms']:>8.2f} {r['gflops']:>8.1f} {r['rel_to_dense']:>8.2f}")
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
