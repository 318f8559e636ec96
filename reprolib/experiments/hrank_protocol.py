"""The HRank study at its 30-epoch fine-tuning protocol, set against the budget rows and the paper.

``hrank.protocol_runs`` computes the runs; this module reads what is committed (it trains nothing):

* ``table(proto, budget)``: one row per committed protocol run, (Table 1 row, criterion, lr): the paper's
  accuracy and its drop from the paper side's dense network, ours and our drop from our dense network, and
  the budget runs at the same (row, criterion, lr) with their seed spread. A drop is dense minus pruned
  (points; positive: accuracy lost). The study states no dense accuracy; the paper side's is the 93.26% of
  the original HRank paper (``data/reference/hrank_original.csv``, outside the five documents).
* ``findings(table)``: what the longer fine-tuning changed against the budget rows on the same baseline:
  the ordering of Table 1's rows, the HRank vs L1-norm (and random) gap at spec 1, the learning-rate verdict;
  each sentence says what is missing while runs are not committed.
"""
from __future__ import annotations

import math

import pandas as pd

from .. import plan, reference, spec as spec_mod

COLUMNS = ["paper (%)", "paper drop (points)", "ours (%)", "ours: drop (points)",
           "budget (%)", "budget std", "budget seeds", "budget drop (points)"]


def paper_dense() -> float:
    """The paper side's dense accuracy (%): the original HRank paper's ResNet-56, outside the five documents."""
    ref = reference.load("hrank_original").query("model == 'resnet56' and metric == 'top1_pct'")
    return float(ref["value"].iloc[0])


def frame(records) -> pd.DataFrame:
    """The committed runs among ``records`` (a list or a dict of lists) as rows: Table 1 row (None for a spec
    outside Table 1), criterion, lr, seed, accuracy and dense accuracy (%)."""
    row_of = {spec_mod.format(spec_mod.parse(s)): r for r, s in spec_mod.table1().items()}
    rows = [{"row": row_of.get(r["config"]["spec"]), "criterion": r["config"]["criterion"],
             "lr": r["config"]["finetune"]["lr"], "seed": r["config"]["finetune"]["seed"],
             "acc": 100 * r["metrics"]["test_acc"], "dense": 100 * r["metrics"]["baseline_test_acc"]}
            for r in {r["hash"]: r for r in plan.done(records)}.values()]  # a run shown in two sections counts once
    return pd.DataFrame(rows, columns=["row", "criterion", "lr", "seed", "acc", "dense"])


def table(proto, budget, recipe_lr: float, paper_top1: pd.Series | None = None,
          dense_paper: float | None = None) -> pd.DataFrame:
    """Protocol runs beside the paper and the budget runs, indexed (row, criterion, lr).

    ``proto`` and ``budget``: records (``hrank.protocol_runs`` / ``hrank.all_runs``; planned ones are left
    out); ``recipe_lr``: the protocol's own rate, the one at which Table 1's rows are run (the paper's
    accuracies are shown on those rows only; the study does not say which rate its Table 1 used);
    ``paper_top1``: the paper's accuracy by Table 1 row (default: ``hrank_table1``); ``dense_paper``: the
    paper side's dense accuracy (default: ``paper_dense()``)."""
    if paper_top1 is None:
        ref = reference.load("hrank_table1").query("metric == 'top1_pct'")
        paper_top1 = pd.Series(ref["value"].values, index=ref["row"].astype(int))
    dense_paper = paper_dense() if dense_paper is None else dense_paper
    p, b = frame(proto), frame(budget)
    keys = ["row", "criterion", "lr"]
    g = b.groupby(keys, dropna=False)
    bud = pd.DataFrame({"budget (%)": g["acc"].mean(), "budget std": g["acc"].std(ddof=1),
                        "budget seeds": g["acc"].count(), "budget dense": g["dense"].mean()})
    out = p.groupby(keys, dropna=False).agg(acc=("acc", "mean"), dense=("dense", "mean")).join(bud)
    on_table1 = [(c == "hrank" and lr == recipe_lr) for _, c, lr in out.index]
    out["paper (%)"] = [paper_top1.get(r) if ok else math.nan for (r, _, _), ok in zip(out.index, on_table1)]
    out["paper drop (points)"] = dense_paper - out["paper (%)"]
    out["ours (%)"] = out["acc"]
    out["ours: drop (points)"] = out["dense"] - out["acc"]
    out["budget drop (points)"] = out["budget dense"] - out["budget (%)"]
    return out[COLUMNS].sort_index()


def _claims() -> dict:
    """The study's best learning rate by where it says it (``hrank_figures``: the Abstract, Section 3.7)."""
    figs = reference.load("hrank_figures").query("metric == 'lr'")
    return dict(zip(figs["table"], figs["value"]))


def _fmt_std(std: float, n: int) -> str:
    return f"seed std {std:.2f}, {n} seeds" if n > 1 and not math.isnan(std) else "one seed"


def findings(t: pd.DataFrame, recipe_lr: float, rows=tuple(spec_mod.table1())) -> list[str]:
    """Sentences on what the protocol changed against the budget rows (see the module's docstring)."""
    out = []
    # 1. Ordering of Table 1's rows, by accuracy.
    t1 = t[[c == "hrank" and lr == recipe_lr and r in rows for r, c, lr in t.index]].droplevel(["criterion", "lr"])
    if len(t1) < len(rows):
        out.append(f"Row ordering: {len(t1)} of Table 1's {len(rows)} rows are committed at the protocol; the "
                   "ordering is judged once all are.")
    else:
        rank = lambda s: s.rank(ascending=False)  # noqa: E731
        rho = lambda a, b: rank(a).corr(rank(b))  # noqa: E731  Spearman: Pearson on the ranks
        same = lambda a, b: bool((rank(a) == rank(b)).all())  # noqa: E731
        order = ", ".join(str(r) for r in t1["ours (%)"].sort_values(ascending=False).index)
        out.append(f"Row ordering (best first) at the protocol: rows {order}; "
                   f"{'the same as' if same(t1['ours (%)'], t1['paper (%)']) else 'not'} the paper's "
                   f"(Spearman {rho(t1['ours (%)'], t1['paper (%)']):.2f}; the budget rows: "
                   f"{rho(t1['budget (%)'], t1['paper (%)']):.2f}); one seed a row, so rows closer than the "
                   "budget's seed spread are not ordered by the data.")
    # 2. HRank against the controls at spec 1.
    spec1 = {c: t.loc[(1, c, recipe_lr)] for c in ("hrank", "l1norm", "random") if (1, c, recipe_lr) in t.index}
    if len(spec1) < 3:
        out.append(f"Controls: {len(spec1)} of 3 spec-1 runs (HRank, L1-norm, random) are committed at the "
                   "protocol; the gaps are given once all are.")
    else:
        h, l1, rnd = (spec1[c] for c in ("hrank", "l1norm", "random"))
        # each gap against the larger budget seed std of its two criteria (a random mask varies more by seed)
        gaps, judged = {}, []
        for name, c in (("L1-norm", l1), ("random", rnd)):
            gaps[name] = (h["ours (%)"] - c["ours (%)"], h["budget (%)"] - c["budget (%)"])
            stds = [s for s in (h["budget std"], c["budget std"]) if not math.isnan(s)]
            if stds:
                judged.append(f"the HRank - {name} gap is " + (
                    f"larger than the budget's seed std ({max(stds):.2f})" if abs(gaps[name][0]) > max(stds) else
                    f"within the budget's seed std ({max(stds):.2f}): the protocol does not separate HRank from "
                    f"{name}"))
        out.append(f"Controls at spec 1, protocol (one seed each): HRank {h['ours (%)']:.2f}%, L1-norm "
                   f"{l1['ours (%)']:.2f}%, random {rnd['ours (%)']:.2f}%; HRank - L1-norm {gaps['L1-norm'][0]:+.2f} "
                   f"points (budget: {gaps['L1-norm'][1]:+.2f}, {_fmt_std(h['budget std'], int(h['budget seeds']))} "
                   f"for HRank), HRank - random {gaps['random'][0]:+.2f} (budget: {gaps['random'][1]:+.2f}). "
                   + ("The protocol has one seed, so its gaps have no spread of their own; taking the larger budget "
                      "seed std of the two criteria compared, " + "; ".join(judged) + "."
                      if judged else "No seed spread is committed to judge the gaps by."))
    # 3. The learning rate (the study's two claims, from data/reference/hrank_figures.csv).
    lrs = sorted(lr for r, c, lr in t.index if r == 1 and c == "hrank")
    if len(lrs) < 3:
        out.append(f"Learning rate: spec 1 is committed at {len(lrs)} of the protocol's 3 rates; the verdict is "
                   "given once all are.")
    else:
        at = {lr: t.loc[(1, "hrank", lr)] for lr in lrs}
        best = max(lrs, key=lambda lr: at[lr]["ours (%)"])
        bud = {lr: at[lr]["budget (%)"] for lr in lrs if not math.isnan(at[lr]["budget (%)"])}
        bbest = max(bud, key=bud.get) if bud else None
        sd = at[recipe_lr]["budget std"] if recipe_lr in at else math.nan
        second = sorted((at[lr]["ours (%)"] for lr in lrs), reverse=True)[1]
        margin = at[best]["ours (%)"] - second
        out.append("Learning rate at spec 1, protocol (one seed each): "
                   + ", ".join(f"{lr:g}: {at[lr]['ours (%)']:.2f}%" for lr in lrs)
                   + f"; best {best:g}, by {margin:.2f} points over the next"
                   + (f" (budget: best of these {bbest:g})" if bbest is not None else "")
                   + f". The Abstract names {_claims()['Abstract (text)']:g}, Section 3.7 and the Conclusion "
                     f"{_claims()['Section 3.7 (text)']:g}"
                   + (f"; the margin is {'above' if margin > sd else 'within'} the budget's seed std at lr "
                      f"{recipe_lr:g} ({sd:.2f}), the only spread we have." if not math.isnan(sd) else "."))
    return out
