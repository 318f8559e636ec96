"""HRank's rank step: one batched torch.linalg.matrix_rank call per layer (``criteria.hrank``) versus
the official code's loop of one call per feature map (``hrank_reference``), on ResNet-56.

Random-init weights and synthetic images: the timing depends on the map shapes, not on their
values. Checks that both give identical ranks, then prints the timings and the speedup. Both
timings include the same forward pass. Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hrank_rank.py``.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from reprolib import criteria, masks
from reprolib.criteria.filters import hrank_reference
from reprolib.data import batches, synthetic_cifar10
from reprolib.models import create


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n-batches", type=int, default=1)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = create(args.model)
    layers = masks.conv_layers(model)
    data = synthetic_cifar10(n_train=args.batch_size * args.n_batches, n_test=1)
    data_batches = list(batches(data.train_x, data.train_y, args.batch_size))
    hrank = criteria.get("hrank")
    one_image = [(data_batches[0][0][:1], data_batches[0][1][:1])]
    for fn in (hrank, hrank_reference):  # warm-up: tracing, lazy library loading
        fn(model, layers, one_image)

    fast, fast_wall, fast_cpu = timed(hrank, model, layers, data_batches, n_batches=args.n_batches)
    slow, slow_wall, slow_cpu = timed(hrank_reference, model, layers, data_batches, n_batches=args.n_batches)
    mismatched = [n for n in layers if not torch.equal(fast[n], slow[n])]
    if mismatched:
        raise SystemExit(f"ranks differ between batched and per-map computation in {mismatched}")

    images = args.batch_size * args.n_batches
    maps = images * sum(model.get_submodule(n).out_channels for n in layers)
    print(f"HRank ranks of {args.model}, {images} images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print(f"ranks identical in all {len(layers)} layers")
    print(f"{'method':<28}{'layers':>8}{'maps':>10}{'wall s':>10}{'cpu s':>10}")
    print(f"{'batched matrix_rank':<28}{len(layers):>8}{maps:>10}{fast_wall:>10.2f}{fast_cpu:>10.2f}")
    print(f"{'per-map loop (reference)':<28}{len(layers):>8}{maps:>10}{slow_wall:>10.2f}{slow_cpu:>10.2f}")
    print(f"speedup (reference / batched): wall {slow_wall / fast_wall:.1f}x, cpu {slow_cpu / fast_cpu:.1f}x")


if __name__ == "__main__":
    main()
