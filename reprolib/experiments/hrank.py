"""The HRank study on ResNet-56 (Lu 2023), each experiment a cached run of experiment "hrank".

* ``ranks(profile)``: HRank's criterion on the baseline, once (average rank of each filter's feature
  maps over a few batches of training images);
* ``finetune(profile, spec, criterion, seed, lr)``: masks at the per-layer rates of ``spec`` (filters
  chosen by ``criterion``: "hrank", or the controls "l1norm" and "random"), the network shrunk
  (``surgery.shrink``: the same function as the masked one, fewer channels), then fine-tuned;
* helpers for the chapter's grids: Table 1's seven specs, the learning-rate sweep on spec 1, and the
  dense sweep of the middle group's rate (``middle_spec``).

    python -m reprolib.experiments.hrank --profile budget        # every run the chapter shows (resumable)
"""
from __future__ import annotations

import statistics

import torch

from .. import criteria, data as data_mod, masks as masks_mod, profiles, runs, spec as spec_mod, surgery, plan
from . import baseline
from ..counting import count
from ..device import current as device
from ..train import evaluate, fit, seed_everything


# The HRank study (Lu 2023): Table 1's seven specs, a learning-rate sweep on spec 1, a dense sweep of
# the middle group's rate, and L1-norm / random controls at spec 1's rates.
PRESETS = {
    # A 1-epoch ResNet-56 on 1,024 images stands in for the baseline (the specs have 55 entries).
    "smoke": dict(baseline="smoke", baseline_overrides=dict(model="resnet56"), rank_batches=1, rank_batch=32,
                  seeds=[0], lrs=[0.01, 0.05], middle_rates=[0.3, 0.6], n_train=256, n_test=256,
                  finetune=dict(epochs=1, lr=0.01, schedule="cosine", milestones=[], batch_size=128,
                                momentum=0.9, nesterov=False, weight_decay=5e-4, bf16=True, channels_last=True)),
    # Ours: two epochs on the first 10,000 training images (the document: 30 on all 50,000), cosine from lr; bf16
    # in NCHW, the faster format for the shrunk networks on this CPU (spec 1's, batch-128 steps on 1 thread:
    # 296 img/s in bf16 NCHW, 265 in bf16 channels_last, 274 in fp32; measured for issue 15).
    "budget": dict(baseline="budget", baseline_overrides={}, rank_batches=5, rank_batch=128, seeds=[0, 1, 2],
                   lrs=[0.001, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1],
                   middle_rates=[0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], n_train=10000, n_test=None,
                   finetune=dict(epochs=2, lr=0.01, schedule="cosine", milestones=[], batch_size=128,
                                 momentum=0.9, nesterov=False, weight_decay=5e-4, bf16=True, channels_last=False)),
    # The study states only "30 epochs" of fine-tuning (Sections 3.1 and 3.7) on CIFAR-10. Ours: SGD with
    # momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 divided by 10 at epochs 15 and 25 (the study names no
    # schedule), fp32, all 50,000 training images, three seeds.
    "paper": dict(baseline="paper", baseline_overrides={}, rank_batches=5, rank_batch=128, seeds=[0, 1, 2],
                  lrs=[0.001, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1],
                  middle_rates=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], n_train=None, n_test=None,
                  finetune=dict(epochs=30, lr=0.01, schedule="step", milestones=[15, 25], batch_size=128,
                                momentum=0.9, nesterov=False, weight_decay=5e-4, bf16=False, channels_last=False)),
}
# The study's fine-tuning protocol on the budget baseline (issue 15): the paper preset's 30 epochs on all 50,000
# training images (ours as there: lr 0.01 divided by 10 at epochs 15 and 25, momentum 0.9, wd 5e-4, batch 128),
# one seed, from the corrected budget baseline; Table 1's seven specs, the L1-norm and random controls at spec 1,
# spec 1 at three learning rates. Ours too: bf16 autocast in NCHW, as fast as any format for spec 1's shrunk
# network on this CPU (batch-128 fit steps, quiet machine, 2026-12-07, 1 thread: 172 img/s bf16 NCHW, 179 bf16
# channels_last, 140 fp32, ``OMP_NUM_THREADS=1 benchmarks/train_throughput.py --models resnet56 hrank-spec1``,
# data/results/bench/train_throughput_1thread.json; a first check gave 174-190 bf16 NCHW against 132-138 fp32),
# run as two 1-thread workers, about 2.3 h a run each:
# ``python -m reprolib.sweep hrank --runs protocol_runs --executor ray --cpus-per-run 1``. The chapter shows
# those that are committed.
PROTOCOL = dict(n_train=None, n_test=None, seeds=[0], lrs=[0.005, 0.01, 0.05],
                finetune=dict(PRESETS["paper"]["finetune"], bf16=True))
PRESETS["budget"]["protocol"] = PROTOCOL


CIFAR = (1, 3, 32, 32)


def _baseline(p):
    rec = baseline.run(p["baseline"], **p["baseline_overrides"])
    return baseline.load_model(rec), rec


@plan.recipe
def ranks(profile: str | None = None) -> dict:
    """Per-filter average ranks of every conv of the baseline (the scores HRank prunes by)."""
    p = profiles.get("hrank", profile)
    model, base = _baseline(p)
    config = {"part": "ranks", "profile": p["profile"], "baseline": base["hash"],
              "rank_batches": p["rank_batches"], "rank_batch": p["rank_batch"]}

    def fn(config, paths):
        d = data_mod.load(base["config"]["dataset"])
        n = config["rank_batches"] * config["rank_batch"]
        batches = data_mod.batches(d.train_x[:n].to(device()), d.train_y[:n].to(device()), config["rank_batch"])
        convs = masks_mod.conv_layers(model)
        scores = criteria.get("hrank")(model, convs, batches, n_batches=config["rank_batches"])
        return {"model": base["model"], "dataset": d.copy, "metrics": {"layers": len(scores)},
                "ranks": {k: v.tolist() for k, v in scores.items()}}
    return runs.run("hrank", config, fn)


def masks_for(model, rates: list[float], criterion: str, seed: int, rank_record: dict) -> dict:
    """Keep-masks at HRank's per-layer ``rates`` (local: int(C * r) filters pruned per conv)."""
    convs = masks_mod.conv_layers(model)
    if criterion == "hrank":
        scores = {k: torch.tensor(v) for k, v in rank_record["ranks"].items()}
    elif criterion == "random":
        scores = criteria.get("random")(model, convs, seed=seed)
    else:
        scores = criteria.get(criterion)(model, convs)
    return masks_mod.from_scores(scores, dict(zip(convs, rates)), scope="local")


@plan.recipe
def finetune(profile: str | None = None, spec: str | None = None, criterion: str = "hrank", seed: int = 0,
             lr: float | None = None, protocol: bool = False) -> dict:
    """Prune the baseline at ``spec`` (default: Table 1 row 1) by ``criterion``, shrink, fine-tune; with
    ``protocol``, fine-tune at the profile's ``protocol`` (the study's 30 epochs) instead of its own recipe."""
    p = profiles.get("hrank", profile)
    if protocol:
        if "protocol" not in p:
            raise ValueError(f"profile {p['profile']!r} of hrank has no 'protocol' section (budget has)")
        p.update({k: p["protocol"][k] for k in ("n_train", "n_test", "finetune")})
    model, base = _baseline(p)
    rates = spec_mod.parse(spec or spec_mod.table1()[1], n_layers=len(masks_mod.conv_layers(model)))
    ft = dict(p["finetune"], seed=seed, lr=lr if lr is not None else p["finetune"]["lr"])
    config = {"part": "finetune", "profile": p["profile"], "baseline": base["hash"], "spec": spec_mod.format(rates),
              "criterion": criterion, "n_train": p["n_train"], "n_test": p["n_test"], "finetune": ft}
    rank_record = ranks(profile) if criterion == "hrank" else None
    if rank_record is not None:
        config["ranks"] = rank_record["hash"]

    def fn(config, paths):
        d = data_mod.load(base["config"]["dataset"]).subset(config["n_train"], config["n_test"]).to(device())
        masks = masks_for(model, rates, criterion, seed, rank_record)
        small = surgery.shrink(model, masks)
        hr, true = count(model, CIFAR, convention="hrank", rates=rates), count(small, CIFAR)
        before = evaluate(small, d.test_x, d.test_y)["acc"]
        seed_everything(seed)
        curves = fit(small, d, checkpoint=paths["checkpoint"], desc=f"{criterion} seed {seed} lr {ft['lr']}", **ft)
        final = evaluate(small, d.test_x, d.test_y)  # fp32, NCHW
        return {**d.describe(), "model": base["model"],
                "metrics": {"test_acc": final["acc"], "test_acc_before_finetune": before,
                            "baseline_test_acc": base["metrics"]["test_acc"],
                            "params_hrank": hr["params"], "flops_hrank": hr["flops"],
                            "params_true": true["params"], "flops_true": true["flops"]},
                "curves": curves}
    return runs.run("hrank", config, fn)


def middle_spec(rate: float, row: int = 1) -> str:
    """Table 1's spec ``row`` with its middle group (layers 2-36, ``[0.60]*35``) at ``rate``."""
    rates = spec_mod.parse(spec_mod.table1()[row])
    rates[1:36] = [rate] * 35
    return spec_mod.format(rates)


def all_runs(profile: str | None = None) -> dict[str, list[dict]]:
    """Every run the chapter shows, by section (trains what is missing unless REPROLIB_CACHED_ONLY=1)."""
    p = profiles.get("hrank", profile)
    out = {"table1": [finetune(profile, s, "hrank", seed) for s in spec_mod.table1().values() for seed in p["seeds"]],
           "lr": [finetune(profile, None, "hrank", 0, lr) for lr in p["lrs"]],
           "middle": [finetune(profile, middle_spec(r), "hrank", 0) for r in p["middle_rates"]],
           "controls": [finetune(profile, None, c, seed) for c in ("l1norm", "random") for seed in p["seeds"]]}
    return out


def protocol_runs(profile: str | None = None) -> dict[str, list[dict]]:
    """The runs at the study's fine-tuning protocol (the profile's ``protocol`` section; budget only)."""
    q = profiles.get("hrank", profile).get("protocol")
    if q is None:
        return {}
    run = lambda spec=None, c="hrank", seed=0, lr=None: finetune(profile, spec, c, seed, lr, protocol=True)  # noqa: E731
    return {"table1": [run(s, seed=seed) for s in spec_mod.table1().values() for seed in q["seeds"]],
            "lr": [run(lr=lr) for lr in q["lrs"] if lr != q["finetune"]["lr"]],
            "controls": [run(c=c, seed=seed) for c in ("l1norm", "random") for seed in q["seeds"]]}


def drop_note(accs: list[float], dense: float, paper_acc: float, dense_paper: float | None = None) -> str:
    """The note beside a Table 1 accuracy row: our drop from our dense network with its seed spread, and the
    paper's drop from ``dense_paper`` when given. A drop is dense minus pruned (points lost; positive when
    pruning costs accuracy), as in ``hrank_protocol.table``. Accuracies in %."""
    mean = statistics.fmean(accs)
    sd = statistics.stdev(accs) if len(accs) > 1 else None
    return (f"our dense network {dense:.2f}% (JPEG copy), the study states none; drop from ours {dense - mean:.2f} "
            "points" + (f", seed std {sd:.2f}" if sd is not None else ", one seed")
            + (f"; the paper's drop from the original HRank paper's {dense_paper:.2f}% dense ResNet-56 (outside "
               f"the documents): {dense_paper - paper_acc:.2f}" if dense_paper else ""))


def lr_rows(chapter: str, lrs: dict[float, float], sd: float | None, spread: str, protocol: str,
            label: str = "") -> list:
    """The summary's two rows on the best fine-tuning learning rate (Section 3.7 and the Conclusion say 0.005,
    the Abstract 0.05) from spec 1's accuracy (%) at each rate, one seed each. A verdict needs the best rate
    ahead of every other by more than ``sd`` (None: unknown), the seed spread that ``spread`` names."""
    from .. import summary
    rows = []
    for lr_paper, where in ((0.005, "Section 3.7 and Conclusion"), (0.05, "the Abstract")):
        what = f"best fine-tuning learning rate ({where}){label}"
        if lr_paper not in lrs:
            rows.append(summary.Row(chapter, what, lr_paper, None, protocol, "not run yet"))
            continue
        best = max(lrs, key=lrs.get)
        if best == lr_paper:
            verdict = "reproduced" if sd is not None and all(lrs[best] - a > sd for k, a in lrs.items() if k != best) \
                else "not comparable"
        else:
            verdict = "not reproduced" if sd is not None and lrs[best] - lrs[lr_paper] > sd else "not comparable"
        why = (f"one seed per rate; {lr_paper:g} reaches {lrs[lr_paper]:.2f}%, the best {lrs[best]:.2f}%; {spread}: "
               + (f"{sd:.2f} points" if sd is not None else "unknown (one seed)")
               + ("; the gaps are within it" if verdict == "not comparable" else ""))
        rows.append(summary.Row(chapter, what, lr_paper, best, protocol, verdict, why))
    return rows


def comparisons(profile: str | None = None) -> list:
    """The reproduction summary's rows of the HRank chapter, from the committed runs only: Table 1's counts
    under the study's rule (no training), its accuracies at the profile's fine-tuning and, where committed, at
    the study's 30-epoch protocol (``protocol_runs``), and the learning-rate claims of Fig. 3."""
    from .. import models, reference, summary
    from . import hrank_protocol
    p = profiles.get("hrank", profile)
    ref = reference.load("hrank_table1")
    paper = ref.pivot_table(index="row", columns="metric", values="value", aggfunc="first")
    paper.index = paper.index.astype(int)
    n_layers = len(masks_mod.conv_layers(models.create("resnet56")))
    rows, chapter = [], "hrank-resnet56"
    for row, s in spec_mod.table1().items():
        hr = count(models.create("resnet56"), CIFAR, convention="hrank", rates=spec_mod.parse(s, n_layers=n_layers))
        for metric, n, label in (("params_M", hr["params"], "params (M)"), ("flops_M", hr["flops"], "FLOPs (M)")):
            mine = round(n / 1e6, 2)
            rows.append(summary.Row(chapter, f"Table 1 row {row}: {label}, the study's counting rule",
                                    float(paper.loc[row, metric]), mine, "counted, no training",
                                    summary.judge(paper.loc[row, metric], mine, 0.005),
                                    "tolerance: the printed precision (0.005M)"))

    def accuracy_rows(recs, label, protocol, dense_paper=None):
        by_row = {}
        row_of = {spec_mod.format(spec_mod.parse(s)): r for r, s in spec_mod.table1().items()}
        for rec in recs:
            if not plan.is_planned(rec):
                by_row.setdefault(row_of[rec["config"]["spec"]], []).append(rec)
        for row in spec_mod.table1():
            got = by_row.get(row, [])
            accs = [100 * r["metrics"]["test_acc"] for r in got]
            mean = statistics.fmean(accs) if accs else None
            dense = 100 * got[0]["metrics"]["baseline_test_acc"] if got else None
            why = drop_note(accs, dense, float(paper.loc[row, "top1_pct"]), dense_paper) if got else ""
            rows.append(summary.Row(chapter, f"Table 1 row {row}: accuracy (%), {label}", float(paper.loc[row, "top1_pct"]),
                                    mean, protocol, "not comparable" if got else "not run yet", why))
    # Table 1's accuracies and Fig. 3's best learning rate, 0.005 (Section 3.7, Conclusion) or 0.05 (Abstract),
    # at the profile's fine-tuning and, where committed, at the study's 30 epochs (one seed per rate there).
    runs_, ft = plan.committed(all_runs, profile), p["finetune"]
    spec1_key = spec_mod.format(spec_mod.parse(spec_mod.table1()[1]))
    acc_by_lr = lambda recs: {r["config"]["finetune"]["lr"]: 100 * r["metrics"]["test_acc"]  # noqa: E731
                              for r in recs if not plan.is_planned(r)}
    spec1 = [100 * r["metrics"]["test_acc"] for r in runs_["table1"]
             if not plan.is_planned(r) and r["config"]["spec"] == spec1_key]
    sd = statistics.stdev(spec1) if len(spec1) > 1 else None
    spread = f"spec 1's seed std at lr {ft['lr']:g}"
    accuracy_rows(runs_["table1"], f"{ft['epochs']}-epoch fine-tuning ({p['profile']})",
                  f"{p['profile']}: {ft['epochs']} epoch(s) on {p['n_train'] or 50000:,} images, {len(p['seeds'])} seed(s)")
    rows += lr_rows(chapter, acc_by_lr(runs_["lr"]), sd, spread,
                    f"{p['profile']}: {ft['epochs']} epoch(s) on {p['n_train'] or 50000:,} images")
    if "protocol" in p:
        q, proto = p["protocol"], plan.committed(protocol_runs, profile)
        accuracy_rows(proto["table1"], "the study's 30 epochs",
                      f"{p['profile']} baseline, {q['finetune']['epochs']} epochs on all 50,000 images, "
                      f"{len(q['seeds'])} seed(s)", dense_paper=hrank_protocol.paper_dense())
        lrs = acc_by_lr(proto["lr"] + [r for r in proto["table1"] if r["config"]["spec"] == spec1_key])
        rows += lr_rows(chapter, lrs if len(lrs) == len(q["lrs"]) else {}, sd,
                        spread + " (budget fine-tuning, the only spread we have)",
                        "the study's 30 epochs on all 50,000 images, one seed per rate", ", the study's 30 epochs")
    return rows


if __name__ == "__main__":
    ap = profiles.cli_parser(__doc__)
    res = all_runs(ap.parse_args().profile)
    for section, recs in res.items():
        print(section, [round(r["metrics"]["test_acc"], 4) for r in recs])
