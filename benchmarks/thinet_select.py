"""ThiNet's greedy channel selection: vectorised vs the literal loop over candidates.

Both greedy rules of ``reprolib.criteria.thinet`` (the document's Algorithm 1 and the ICCV
removal rule) on sample matrices of the sizes ThiNet meets on VGG-16 / CIFAR-10 (thousands of
rows, 256 or 512 channels, half of them kept). Checks that both versions choose the same channels,
prints seconds and the speed-up. Single-threaded for comparable numbers (the script sets it), and
every function runs once on a small problem first so that one-time set-up is not timed; about 20 s.
Writes data/results/bench/thinet_select.json (device, threads, torch version, every row).

    .venv/bin/python benchmarks/thinet_select.py
"""
from __future__ import annotations

import time

import torch

from reprolib import device as devices, runs
from reprolib.criteria import thinet

CASES = [(4000, 256), (10000, 512)]  # (rows, channels)
R = 0.5
PAIRS = {"document (Alg. 1)": (thinet.select_greedy_ls, thinet.select_greedy_ls_reference),
         "iccv (removal)": (thinet.select_greedy, thinet.select_greedy_reference)}


def samples(m: int, c: int, seed: int = 0) -> torch.Tensor:
    """ThiNet-like rows: non-negative inputs times signed weights give signed contributions with
    channel-specific scales and a shared per-row factor (channels are correlated)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(c, generator=g, dtype=torch.float64) * 2
    row = torch.rand(m, 1, generator=g, dtype=torch.float64) + 0.5
    return torch.randn(m, c, generator=g, dtype=torch.float64) * scale * row + 0.1 * row


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    torch.set_num_threads(1)
    for fast, slow in PAIRS.values():  # warm-up: the first call of a kernel pays its set-up
        fast(samples(200, 32), R), slow(samples(200, 32), R)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), r = {R} (share of channels kept)")
    print(f"{'rule':<18} {'rows':>6} {'chan':>5} {'kept':>5} {'vectorised s':>13} {'reference s':>12} "
          f"{'speed-up':>9}  same")
    ratios, rows = [], []
    for m, c in CASES:
        X = samples(m, c)
        for rule, (fast, slow) in PAIRS.items():
            a, tf = timed(fast, X, R)
            b, ts = timed(slow, X, R)
            same = torch.equal(a, b)
            ratios.append(ts / tf)
            rows.append({"rule": rule, "rows": m, "channels": c, "kept": len(a), "vectorised_s": tf,
                         "reference_s": ts, "speedup": ts / tf, "same_channels": same})
            print(f"{rule:<18} {m:>6} {c:>5} {len(a):>5} {tf:>13.3f} {ts:>12.3f} {ts / tf:>8.1f}x  {same}")
            if not same:
                raise SystemExit(f"{rule}: the vectorised and reference selections differ")
    print(f"smallest speed-up: {min(ratios):.1f}x (target >= 10x)")
    out = runs.results_dir() / "bench" / "thinet_select.json"
    runs.write_json_atomic({"device": devices.describe(), "threads": torch.get_num_threads(), "r": R,
                            "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "rows": rows}, out)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
