"""Is training fast on this device, and not waiting for its input?

For ResNet-56 and VGG-16 on the library's device (``$REPROLIB_DEVICE``, else CUDA when available, else
the CPU), in each number format (fp32 NCHW; bf16 autocast in NCHW; bf16 autocast + channels_last), and on a
GPU also compiled with ``torch.compile``. ``--models hrank-spec1`` (any of Table 1's rows) times the
ResNet-56 shrunk at the HRank study's spec instead (filters drawn at random: the speed depends on the widths
alone), the networks the protocol runs fine-tune. Threads: as torch sets them (``OMP_NUM_THREADS=1`` for one).

* **images/s** of training steps: ``train.fit`` itself (the loop the studies run: shuffling,
  augmentation, normalisation, forward, backward, SGD step, the running sums), timed by its own
  per-epoch clock over ``--steps`` steps of batch ``--batch-size``, after a first epoch of the same
  length as warm-up (kernel selection, compilation); fit's evaluation is on one batch only;
* **prep share**: the time the batch pipeline alone takes for the same steps (``data.batches``:
  index, crop/flip, normalise; the move to the device and the memory format as fit does them), as a
  share of a whole step. It is an upper bound: on a GPU the CPU prepares the next batch while the GPU
  still computes the last one. The target is under 5%.

The images are ``data.synthetic_cifar10`` (CIFAR-10's shapes; the speed does not depend on the pixels),
decoded uint8 tensors moved to the device once, as in the studies. Written to
data/results/bench/train_throughput.json (``--out`` elsewhere): device in words, threads, batch size,
formats, torch version.

    python benchmarks/train_throughput.py                 # all of it (minutes on a CPU)
    python benchmarks/train_throughput.py --steps 3 --out /tmp/tt.json   # a quick check that it runs
    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --models resnet56 hrank-spec1 --out /tmp/tt1.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from reprolib import criteria, data as data_mod, device as devices, masks, models, runs, spec, surgery, train

MODELS = ("resnet56", "vgg16")
SPECS = tuple(f"hrank-spec{row}" for row in spec.table1())
FORMATS = {"fp32 NCHW": dict(bf16=False, channels_last=False),
           "bf16 NCHW": dict(bf16=True, channels_last=False),
           "bf16 channels_last": dict(bf16=True, channels_last=True)}


def network(name: str) -> torch.nn.Module:
    """A model of the registry, or ``hrank-specN``: ResNet-56 shrunk at the HRank study's Table 1 spec N."""
    if name not in SPECS:
        return models.create(name)
    dense = models.create("resnet56")
    convs = masks.conv_layers(dense)
    rates = spec.parse(spec.table1()[int(name.removeprefix("hrank-spec"))], n_layers=len(convs))
    keep = masks.from_scores(criteria.get("random")(dense, convs, seed=0), dict(zip(convs, rates)), scope="local")
    return surgery.shrink(dense, keep)


def prep_seconds(d, batch_size: int, steps: int, dev: torch.device, channels_last: bool) -> float:
    """Seconds per step of the batch pipeline alone (after one warm-up pass), synchronised at the end."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def one_pass() -> int:
        g = torch.Generator(dev).manual_seed(0)
        n = 0
        for xb, yb in data_mod.batches(d.train_x, d.train_y, batch_size, train=True, g=g):
            xb, yb = xb.to(dev).contiguous(memory_format=fmt), yb.to(dev)
            n += 1
        return n
    one_pass()
    devices.synchronize(dev)
    t0 = time.perf_counter()
    n = one_pass()
    devices.synchronize(dev)
    return (time.perf_counter() - t0) / n


def measure(name: str, fmt: str, compiled: bool, d, batch_size: int, steps: int, dev: torch.device) -> dict:
    """One row: fit's second epoch (``steps`` steps) timed by fit itself, and the prep share."""
    torch.manual_seed(0)
    model = network(name).to(dev)
    net = torch.compile(model) if compiled else model
    history = train.fit(net, d, epochs=2, lr=0.01, batch_size=batch_size, checkpoint=None, desc=f"{name} {fmt}",
                        device=dev, **FORMATS[fmt])
    step = history[1]["seconds"] / steps  # epoch 2: warm; its clock includes evaluating one batch
    prep = prep_seconds(d, batch_size, steps, dev, FORMATS[fmt]["channels_last"])
    return {"model": name, "format": fmt, "compiled": compiled, "images_per_s": batch_size / step,
            "step_ms": step * 1e3, "prep_ms": prep * 1e3, "prep_share": prep / step}


def main(steps: int, batch_size: int, names=MODELS, formats=tuple(FORMATS), compile_: bool | None = None) -> dict:
    dev = devices.current()
    compile_ = dev.type == "cuda" if compile_ is None else compile_
    d = data_mod.synthetic_cifar10(n_train=steps * batch_size, n_test=batch_size).to(dev)
    rows = [measure(name, fmt, c, d, batch_size, steps, dev)
            for name in names for fmt in formats for c in ((False, True) if compile_ else (False,))]
    return {"device": devices.describe(dev), "threads": torch.get_num_threads(), "batch_size": batch_size,
            "steps": steps, "formats": list(formats), "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}


def table(out: dict) -> str:
    lines = [f"{out['device']}; torch {out['torch']}, {out['threads']} thread(s), batch {out['batch_size']}, "
             f"{out['steps']} timed steps",
             f"{'model':<12} {'format':<19} {'compiled':>8} {'img/s':>8} {'step ms':>8} {'prep ms':>8} {'prep %':>7}"]
    for r in out["rows"]:
        lines.append(f"{r['model']:<12} {r['format']:<19} {str(r['compiled']):>8} {r['images_per_s']:>8.0f} "
                     f"{r['step_ms']:>8.1f} {r['prep_ms']:>8.2f} {100 * r['prep_share']:>6.1f}%")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50, help="timed training steps per row (default 50)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(models.available()) + list(SPECS))
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--compile", dest="compile_", action=argparse.BooleanOptionalAction, default=None,
                    help="also time torch.compile'd models (default: on a GPU only)")
    ap.add_argument("--out", type=Path, default=None,
                    help="the JSON file to write (default data/results/bench/train_throughput.json)")
    args = ap.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        ap.error("--steps and --batch-size must be positive")
    try:
        devices.current()
    except devices.DeviceError as e:
        ap.exit(2, f"error: {e}\n")
    out = main(args.steps, args.batch_size, args.models, args.formats, args.compile_)
    print(table(out))
    path = args.out or runs.results_dir() / "bench" / "train_throughput.json"
    runs.write_json_atomic(out, Path(path))
    print(f"-> {path}")
