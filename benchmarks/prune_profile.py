"""Where does a shrunk ResNet-56's time go? A per-operator profile beside the dense network's.

For one of HRank's Table 1 specs (masks as in ``prune_speed.py``: HRank ranks of the committed budget
baseline), the dense network (BN folded) and the shrunk one (BN folded, index-additions fused where free) are
run under ``torch.profiler`` in fp32, NCHW and channels_last, at each batch size. Printed and written, per
network, format and batch: the wall time per pass, each operator group's share of it (convolutions, the
residual index-additions and the ops they export to, element-wise ops, the rest), and the convolutions'
multiply-accumulates per second grouped by their output width, which shows whether narrow layers run slower per FLOP than the
dense network's. The profiler's own overhead inflates the wall times (more for channels_last, whose many small
reorders it records): read the shares and the per-width rates, and take latencies from ``prune_speed.py``.
Written to data/results/bench/prune_profile.json (``--out`` to change).

    make bench                                   # sets the allocator variables of BENCH_ENV
    python benchmarks/prune_profile.py --quick --out /tmp/prune_profile.json
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from prune_speed import eager_variants, hrank_scores, weights  # noqa: E402

from reprolib import formats, masks as masks_mod, runs, spec, surgery  # noqa: E402

GROUPS = {"index-addition": ("index_add", "index_select", "gather", "cat",
                                                                     "constant_pad", "pad", "slice", "narrow"),
          "element-wise": ("add", "relu", "clamp", "mul")}


def group(op: str) -> str:
    """The operator group of a profiler key: convolutions by name anywhere (at batch 1 PyTorch calls
    ``aten::_slow_conv2d_forward``, at 128 ``aten::mkldnn_convolution``), the others by prefix."""
    name = op.removeprefix("aten::")
    if "conv" in name:
        return "conv"
    for g, keys in GROUPS.items():
        if any(name.startswith(k) for k in keys):
            return g
    return "other"


def profile_one(model: torch.nn.Module, batch: int, passes: int) -> dict:
    """Self CPU time per operator group and its share of the summed self time; the convolutions' time
    (``aten::conv2d``, inclusive) and multiply-accumulates per second, grouped by output width."""
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
            t0 = time.perf_counter()
            for _ in range(passes):
                model(x)
            wall = (time.perf_counter() - t0) / passes * 1e3
    by_group, conv_ms, conv_macs = defaultdict(float), defaultdict(float), defaultdict(float)
    for e in prof.key_averages(group_by_input_shape=True):
        by_group[group(e.key)] += e.self_cpu_time_total / 1e3 / passes
        if e.key == "aten::conv2d":
            cout = e.input_shapes[1][0]  # the weight's shape: (out, in / groups, kh, kw)
            conv_ms[cout] += e.cpu_time_total / 1e3 / passes
            conv_macs[cout] += e.flops / 2 / passes  # the profiler counts 2 FLOPs per multiply-accumulate
    total = sum(by_group.values())
    return {"wall_ms": wall, "self_ms": total, "share": {g: v / total for g, v in sorted(by_group.items())},
            "conv_ms_by_width": {str(c): conv_ms[c] for c in sorted(conv_ms)},
            "conv_gmacs_by_width": {str(c): conv_macs[c] / (conv_ms[c] * 1e6) for c in sorted(conv_ms) if conv_ms[c]}}


def main(a) -> dict:
    torch.set_num_threads(a.threads)
    model, source = weights()
    scores = hrank_scores(model, a.hrank_batches, 128)
    convs = masks_mod.conv_layers(model)
    rates = spec.parse(spec.table1()[a.spec], n_layers=len(convs))
    shrunk = surgery.shrink(model, masks_mod.from_scores(scores, dict(zip(convs, rates)), scope="local")).eval()
    v = eager_variants({"dense": model, "shrunk": shrunk})
    nets = {"dense|fold": v["dense"]["fold"], "shrunk|fold+fuse": v["shrunk"]["fold+fuse"]}
    out = {"benchmark": "prune_profile", "weights": source, "spec_row": a.spec, "threads": a.threads,
           "passes": a.passes, "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": []}
    for b in a.batches:
        for k, m in nets.items():
            for fmt in formats.INFERENCE:
                rec = profile_one(formats.Formatted(copy.deepcopy(m), fmt), b, a.passes if b > 1 else 10 * a.passes)
                out["rows"].append({"network": k, "format": formats.name(fmt), "batch": b, **rec})
    return out


def table(out: dict) -> str:
    lines = [f"spec {out['spec_row']}, {out['threads']} threads, fp32, weights: {out['weights']}",
             f"{'network':<18}{'format':<9}{'batch':>6}{'ms':>9} | shares of self time | conv GMAC/s by output width"]
    for r in out["rows"]:
        share = " ".join(f"{g} {s:.0%}" for g, s in r["share"].items())
        gf = " ".join(f"{c}:{g:.0f}" for c, g in r["conv_gmacs_by_width"].items())
        lines.append(f"{r['network']:<18}{r['format']:<9}{r['batch']:>6}{r['wall_ms']:>9.2f} | {share} | {gf}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 16 only, 2 passes (a check that it runs)")
    ap.add_argument("--spec", type=int, default=1, help="Table 1 row (default 1)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 128")
    ap.add_argument("--passes", type=int, default=None, help="profiled passes at batch > 1 (default 10; x10 at batch 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hrank-batches", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="default data/results/bench/prune_profile.json")
    args = ap.parse_args()
    if args.spec not in spec.table1():
        ap.error(f"unknown Table 1 row {args.spec}: choose from {list(spec.table1())}")
    args.batches = args.batches or ([16] if args.quick else [1, 128])
    args.passes = args.passes or (2 if args.quick else 10)
    if args.quick:
        args.hrank_batches = 1
    result = main(args)
    print(table(result))
    path = args.out or runs.results_dir() / "bench" / "prune_profile.json"
    runs.write_json_atomic(result, Path(path))
    print(f"-> {path}")
