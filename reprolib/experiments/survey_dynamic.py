"""The dynamic and automated methods of the survey (summary Sections 4.6 and 7.2) on the ResNet-56 baseline,
each part a cached run of experiment "survey_dynamic":

* ``fbs_train(profile, density)``: feature boosting and suppression (``reprolib.fbs``): the baseline with a
  channel gate on every block conv, fine-tuned at each density of the profile in turn (1.0 first, then lower:
  each stage starts from the previous one, as the authors' code suggests); accuracy, and the *real* FLOPs per
  test image (only the channels computed, input and output side, plus the gates' own cost);
* ``fbs_latency(profile)``: CPU latency of the dense baseline, the gated networks as trained (every channel
  computed, the suppressed ones multiplied by 0) and as a skipping implementation (``fbs.Sliced``: per-image
  gathers of the kept weights), beside the statically pruned L1-norm networks of the criteria benchmark;
* ``amc_search(profile, target)``: AMC (``reprolib.amc``): the DDPG agent's per-block pruning rates at a true
  FLOPs target, each episode's network evaluated without fine-tuning on held-out training images;
* ``amc_finetune(profile, target, seed)`` and ``blocks_uniform_finetune(profile, target, seed)``: the best
  policy found, and one rate for every block (the same layers, the same FLOPs rule), shrunk and fine-tuned with
  the criteria benchmark's recipe, beside that benchmark's uniform and global L1-norm rows
  (``criteria_benchmark.finetune``) at the same target.

Not in ``reprolib.experiments.NAMES`` yet: its presets are read here (``preset``), not by ``profiles.get``.

    python -m reprolib.experiments.survey_dynamic --profile budget     # every run (resumable)
"""
from __future__ import annotations


import torch
from tqdm import tqdm

from .. import amc, data as data_mod, fbs, plan, profiles, runs, surgery
from ..counting import count, latency_table
from ..device import current as device
from ..train import evaluate, fit, save_atomic, seed_everything
from . import criteria_benchmark as cb

EXPERIMENT = "survey_dynamic"
CIFAR = (1, 3, 32, 32)
# The AMC agent (reprolib.amc.DDPG): the paper's settings and ours (sigma decay, reward baseline; see its
# docstring), written out so that a change shows in the hashes.
AGENT = dict(hidden=300, lr_actor=1e-4, lr_critic=1e-3, buffer=2000, batch=64, sigma=0.5, sigma_decay=0.99,
             baseline_decay=0.95)

# Costs below, for one quiet thread: the brief's rate of dense ResNet-56 training (about 300 images/s in bf16)
# times ratios measured on tiny steps of this code (process CPU time, 1 thread, on the shared machine, whose
# absolute times were 2-3x slower): a gated training step costs 1.5x a dense one (batch 128: the gates' sort,
# scatter and extra elementwise passes); a bf16 forward pass ~1.3 ms per image (an AMC episode of 1,000 images
# ~1.3 s); a criteria-benchmark fine-tuning ~1 min (the issue measured ~5 min each on the shared machine).
PRESETS = {
    # The 1-epoch smoke ResNet-20 baseline, 256 / 128 images, two densities, a 6-episode search: every part.
    "smoke": dict(baseline="smoke", fbs_densities=[1.0, 0.5], fbs_gate_l1=1e-4, n_train=256, n_test=128,
                  fbs_finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                    nesterov=True, weight_decay=5e-4, bf16=True, channels_last=False),
                  flops_batch=64, static_references=[0.5], latency_batches=[1, 2], latency_repeats=1,
                  amc_targets=[0.5], amc_episodes=6, amc_warmup=3, amc_n_val=64, amc_a_max=0.8, amc_bf16=True,
                  amc_search_seed=0, seeds=[0]),
    # FBS: densities 1.0 -> 0.75 -> 0.5 -> 0.3 (each stage from the previous one), two epochs each on the first
    # 10,000 training images with the criteria benchmark's recipe (ours: the paper fine-tunes longer, on
    # ImageNet). L1 on the saliencies 1e-4 (ours): about 0.2 added to the loss at the all-pass start (2,016
    # gated channels at g = 1), but it moves a saliency by at most lr x momentum factor x 1e-4 = 1e-5 per step,
    # < 1e-2 over the ~630 steps: within this budget k-WTA alone decides the sparsity (the records keep the
    # mean saliency and the share of saliencies at 0 to show it). ~7 min of training (8 x 10,000 images at
    # 1.5x the dense cost) + ~3 min of test-set evaluation and FLOPs counting. Latency (timed, alone): 13
    # networks at batch 1 and 128, 10 repeats; the sliced networks loop over the images: ~2 min.
    # AMC: targets 0.5 and 0.7 (two of the criteria benchmark's), the paper's 400 episodes (100 at random),
    # each scored on the last 1,000 training images (ours; the baseline trained on them, the fine-tunings use
    # the first 10,000): ~9 min per search. Then the benchmark's 1-epoch fine-tuning, 2 seeds, of the AMC and
    # the same-layers uniform networks: 8 x ~1 min. About 40 min on one quiet thread in all (up to ~1.5 h on the
    # shared machine); the benchmark's reference rows are its own runs (cached there).
    "budget": dict(baseline="budget", fbs_densities=[1.0, 0.75, 0.5, 0.3], fbs_gate_l1=1e-4, n_train=10000,
                   n_test=None,
                   fbs_finetune=dict(epochs=2, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                     nesterov=True, weight_decay=5e-4, bf16=True, channels_last=False),
                   flops_batch=500, static_references=[0.3, 0.5, 0.7], latency_batches=[1, 128],
                   latency_repeats=10, amc_targets=[0.5, 0.7], amc_episodes=400, amc_warmup=100, amc_n_val=1000,
                   amc_a_max=0.8, amc_bf16=True, amc_search_seed=0, seeds=[0, 1]),
}


def preset(profile: str | None = None) -> dict:
    """This study's preset of ``profile`` (``profiles.get``); it has none for ``paper`` (NoPresetError)."""
    return profiles.get(EXPERIMENT, profile)


def _benchmark(profile: str | None) -> dict:
    """The criteria benchmark's preset: its fine-tuning recipe and data sizes are the ones AMC is held to."""
    return profiles.get("criteria_benchmark", profile)


# --------------------------------------------------------------------------- FBS

def _fbs_model(base_model, record: dict):
    """The gated network of an ``fbs_train`` record (its weights), on the library's device."""
    net = fbs.gated(base_model, record["config"]["density"])
    net.load_state_dict(runs.load_weights(runs.paths(EXPERIMENT, record["config"])["weights"], map_location=device()))
    return net.eval()


@torch.no_grad()
def fbs_flops(net, x: torch.Tensor, batch: int) -> dict:
    """Real FLOPs per image of the gated ``net`` over the images ``x`` (uint8), batch by batch: mean, spread,
    parts (convs, gates, dense layers) and the mean number of computed channels of each gate."""
    base_flops = count(net, CIFAR)
    totals, parts, active, zeros, sal = [], {"convs": 0.0, "gates": 0.0, "fixed": 0.0}, {}, [], []
    for xb, _ in tqdm(data_mod.batches(x, torch.zeros(len(x), dtype=torch.long, device=x.device), batch),
                      desc="FBS FLOPs", leave=False, total=-(-len(x) // batch)):
        f = fbs.flops_per_image(net, xb, base_flops)
        totals.append(f["total"].cpu())
        for k in parts:
            parts[k] += float(f[k].double().sum())
        for k, v in f["active"].items():
            active[k] = active.get(k, 0.0) + v * len(xb)
        for g in fbs.gates(net):  # saliencies of this batch (before k-WTA)
            zeros.append(float((g.saliency == 0).double().mean()) * len(xb))
            sal.append(float(g.saliency.double().mean()) * len(xb))
    t = torch.cat(totals).double()
    n, n_gates = len(t), len(fbs.gates(net))
    return {"mean": float(t.mean()), "min": float(t.min()), "max": float(t.max()),
            "p10": float(t.quantile(0.1)), "p90": float(t.quantile(0.9)),
            **{f"{k}_mean": v / n for k, v in parts.items()},
            "active": {k: v / n for k, v in active.items()},
            "zero_saliency_share": sum(zeros) / (n * n_gates), "mean_saliency": sum(sal) / (n * n_gates)}


@plan.recipe
def fbs_train(profile: str | None = None, density: float = 1.0, seed: int = 0) -> dict:
    """The gated baseline fine-tuned at ``density``, from the previous density's network of the profile
    (the baseline itself, all gates passing, before the first)."""
    p = preset(profile)
    if density not in p["fbs_densities"]:
        raise ValueError(f"density {density} is not one of the {p['profile']} profile's {p['fbs_densities']}")
    i = p["fbs_densities"].index(density)
    model, base = cb._baseline(p["baseline"])
    prev = fbs_train(profile, p["fbs_densities"][i - 1], seed) if i else None
    config = {"part": "fbs", "profile": p["profile"], "baseline": base["hash"],
              "previous": prev["hash"] if prev else None, "density": density, "gate_l1": p["fbs_gate_l1"],
              "seed": seed, "n_train": p["n_train"], "n_test": p["n_test"], "finetune": p["fbs_finetune"],
              "flops_batch": p["flops_batch"]}

    def fn(config, paths):
        net = _fbs_model(model, prev) if prev else fbs.gated(model, density)
        fbs.set_density(net, density)
        d = data_mod.load(base["config"]["dataset"]).subset(p["n_train"], p["n_test"]).to(device())
        seed_everything(seed)
        curve_data = data_mod.Cifar10(d.train_x, d.train_y, d.test_x[:cb.CURVE_TEST], d.test_y[:cb.CURVE_TEST], d.copy)
        curves = fit(net, curve_data, checkpoint=paths["checkpoint"], desc=f"FBS d={density}",
                     penalty=fbs.penalty(p["fbs_gate_l1"]), **dict(p["fbs_finetune"], seed=seed))
        save_atomic(net.state_dict(), paths["weights"])
        acc = evaluate(net, d.test_x, d.test_y)["acc"]  # fp32, the masked network (the same function as Sliced)
        flops = fbs_flops(net.eval(), d.test_x, p["flops_batch"])
        dense = count(model, CIFAR)
        return {"model": base["model"], **d.describe(), "curves": curves, "weights": paths["weights"].name,
                "flops": flops,
                "metrics": {"test_acc": acc, "baseline_test_acc": base["metrics"]["test_acc"], "density": density,
                            "flops_mean": flops["mean"], "flops_dense": dense["flops"],
                            "flops_reduction": 1 - flops["mean"] / dense["flops"],
                            "gate_flops_mean": flops["gates_mean"],
                            "gate_params": sum(q.numel() for g in fbs.gates(net) for q in g.parameters())}}
    return runs.run(EXPERIMENT, config, fn)


@plan.recipe
def fbs_latency(profile: str | None = None) -> dict:
    """Median CPU latency (round-robin) of the dense baseline (as trained and BN-folded), every FBS network
    masked and sliced, and the criteria benchmark's uniform L1-norm networks at the profile's references."""
    p = preset(profile)
    model, base = cb._baseline(p["baseline"])
    nets = {str(d): fbs_train(profile, d)["hash"] for d in p["fbs_densities"]}
    static = {str(t): cb.search(profile, "l1norm", "uniform", t)["hash"] for t in p["static_references"]}
    config = {"part": "fbs_latency", "profile": p["profile"], "baseline": base["hash"], "fbs": nets,
              "static": static, "latency_batches": p["latency_batches"], "latency_repeats": p["latency_repeats"]}

    def fn(config, paths):
        models, flops = {"dense": model, "dense BN-folded": surgery.fold_bn(model)}, {}
        dense = count(model, CIFAR)["flops"]
        flops["dense"] = flops["dense BN-folded"] = dense
        for d in p["fbs_densities"]:
            rec = fbs_train(profile, d)
            net = _fbs_model(model, rec)
            models[f"FBS d={d} masked"], models[f"FBS d={d} sliced"] = net, fbs.Sliced(net)
            # every channel computed, plus the gates (as counted for the skipping network: a slight undercount)
            flops[f"FBS d={d} masked"] = dense + rec["metrics"]["gate_flops_mean"]
            flops[f"FBS d={d} sliced"] = rec["metrics"]["flops_mean"]
        for t in p["static_references"]:
            models[f"L1-norm uniform {t}"] = cb.pruned(profile, "l1norm", "uniform", t)[2]
            flops[f"L1-norm uniform {t}"] = cb.search(profile, "l1norm", "uniform", t)["metrics"]["flops_true"]
        rows, threads = latency_table(models, p["latency_batches"], p["latency_repeats"], warmup=2)
        for name in rows:
            rows[name]["flops"] = flops[name]
        return {"model": base["model"], "threads": threads, "rows": rows, "metrics": {"networks": len(rows)}}
    return runs.run(EXPERIMENT, config, fn)


# --------------------------------------------------------------------------- AMC

def _units_and_scores(model, scores_record: dict) -> tuple[list, dict]:
    us = amc.units(model)
    return us, {u.name: torch.tensor(scores_record["scores"][u.name]) for u in us}


def _val_reward(model, d, n_val: int, bf16: bool, scores: dict):
    """-error of the masked baseline on the last ``n_val`` training images (held out from every fine-tuning)."""
    vx, vy = d.train_x[-n_val:].to(device()), d.train_y[-n_val:].to(device())
    masked = amc.Masked(model)

    def reward(kept: dict) -> float:
        with masked(amc.masks_for(model, scores, kept)) as m:
            return evaluate(m, vx, vy, bf16=bf16)["acc"] - 1.0
    return reward


@plan.recipe
def amc_search(profile: str | None = None, target: float = 0.5, seed: int = 0) -> dict:
    """AMC's search at ``target`` of the true FLOPs removed: the best episode's filters kept per block."""
    p = preset(profile)
    model, base = cb._baseline(p["baseline"])
    srec = cb.scores(profile, "l1norm")
    config = {"part": "amc_search", "profile": p["profile"], "baseline": base["hash"], "scores": srec["hash"],
              "target": target, "seed": seed, "episodes": p["amc_episodes"], "warmup": p["amc_warmup"],
              "n_val": p["amc_n_val"], "a_max": p["amc_a_max"], "bf16": p["amc_bf16"], "agent": AGENT,
              "n_test": _benchmark(profile)["n_test"]}

    def fn(config, paths):
        us, scores = _units_and_scores(model, srec)
        dense = count(model, CIFAR)
        env = amc.Environment(us, dense["flops"], target, p["amc_a_max"])
        d = data_mod.load(base["config"]["dataset"])
        reward = _val_reward(model.eval(), d, p["amc_n_val"], p["amc_bf16"], scores)
        res = amc.search(env, reward, p["amc_episodes"], p["amc_warmup"], seed,
                         agent=amc.DDPG(a_max=p["amc_a_max"], seed=seed, **AGENT), desc=f"AMC {target:.0%}")
        best = res["best"]
        small = surgery.shrink(model, amc.masks_for(model, scores, best["kept"]))
        true = count(small, CIFAR)
        test = d.subset(0, config["n_test"]).to(device())
        uniform = amc.uniform_kept(env)
        return {"model": base["model"], "kept": best["kept"], "filters": {u.name: u.n for u in us},
                "greedy": res["greedy"], "uniform_kept": uniform,
                "history": [{"reward": h["reward"], "flops": h["flops"], "actions": [round(a, 4) for a in h["actions"]]}
                            for h in res["history"]],
                "metrics": {"val_acc": 1 + best["reward"], "val_acc_greedy": 1 + res["greedy"]["reward"],
                            "val_acc_uniform": 1 + reward(uniform), "best_episode": best["episode"],
                            "test_acc_before_finetune": evaluate(small, test.test_x, test.test_y)["acc"],
                            "flops_true": true["flops"], "params_true": true["params"],
                            "flops_dense": dense["flops"], "params_dense": dense["params"],
                            "flops_reduction": 1 - true["flops"] / dense["flops"]}}
    return runs.run(EXPERIMENT, config, fn)


def _finetune_kept(profile, base, model, scores: dict, kept: dict, seed: int, checkpoint, desc: str) -> dict:
    """Shrink the baseline to ``kept`` filters per block, fine-tune it with the criteria benchmark's recipe."""
    b = _benchmark(profile)
    small = surgery.shrink(model, amc.masks_for(model, scores, kept))
    true, dense = count(small, CIFAR), count(model, CIFAR)
    d = data_mod.load(base["config"]["dataset"]).subset(b["n_train"], b["n_test"]).to(device())
    before = evaluate(small, d.test_x, d.test_y)["acc"]
    curves, acc = cb._finetune(small, d, seed, b["finetune"], checkpoint, desc)
    return {"model": base["model"], **d.describe(), "curves": curves, "kept": kept,
            "metrics": {"test_acc": acc, "test_acc_before_finetune": before,
                        "baseline_test_acc": base["metrics"]["test_acc"],
                        "flops_true": true["flops"], "params_true": true["params"], "flops_dense": dense["flops"],
                        "params_dense": dense["params"], "flops_reduction": 1 - true["flops"] / dense["flops"]}}


@plan.recipe
def amc_finetune(profile: str | None = None, target: float = 0.5, seed: int = 0) -> dict:
    """The AMC policy at ``target`` (search seed: the profile's), shrunk and fine-tuned as the benchmark's rows."""
    p, b = preset(profile), _benchmark(profile)
    model, base = cb._baseline(p["baseline"])
    search_rec = amc_search(profile, target, p["amc_search_seed"])
    srec = cb.scores(profile, "l1norm")
    config = {"part": "amc_finetune", "profile": p["profile"], "search": search_rec["hash"], "target": target,
              "seed": seed, "n_train": b["n_train"], "n_test": b["n_test"], "finetune": b["finetune"]}

    def fn(config, paths):
        scores = _units_and_scores(model, srec)[1]
        out = _finetune_kept(profile, base, model, scores, search_rec["kept"], seed, paths["checkpoint"],
                             f"AMC {target:.0%} seed {seed}")
        out["metrics"]["val_acc_search"] = search_rec["metrics"]["val_acc"]
        return out
    return runs.run(EXPERIMENT, config, fn)


@plan.recipe
def blocks_uniform_finetune(profile: str | None = None, target: float = 0.5, seed: int = 0) -> dict:
    """The control in AMC's own space: one share of every block's conv1 filters (L1-norm), the smallest that
    meets ``target``, shrunk and fine-tuned as the benchmark's rows."""
    p, b = preset(profile), _benchmark(profile)
    model, base = cb._baseline(p["baseline"])
    srec = cb.scores(profile, "l1norm")
    config = {"part": "blocks_uniform_finetune", "profile": p["profile"], "baseline": base["hash"],
              "scores": srec["hash"], "target": target, "a_max": p["amc_a_max"], "seed": seed,
              "n_train": b["n_train"], "n_test": b["n_test"], "finetune": b["finetune"]}

    def fn(config, paths):
        us, scores = _units_and_scores(model, srec)
        kept = amc.uniform_kept(amc.Environment(us, count(model, CIFAR)["flops"], target, p["amc_a_max"]))
        return _finetune_kept(profile, base, model, scores, kept, seed, paths["checkpoint"],
                              f"blocks uniform {target:.0%} seed {seed}")
    return runs.run(EXPERIMENT, config, fn)


def references(profile: str | None = None) -> list[dict]:
    """The criteria benchmark's L1-norm rows (uniform and global scopes) at the AMC targets it has."""
    p, b = preset(profile), _benchmark(profile)
    return [cb.finetune(profile, "l1norm", scope, t, seed) for t in p["amc_targets"]
            for scope, targets in b["targets"].items() if t in targets for seed in p["seeds"]]


def all_runs(profile: str | None = None) -> dict:
    """Every run the chapter shows (trains what is missing unless REPROLIB_CACHED_ONLY=1)."""
    p = preset(profile)
    return {"fbs": [fbs_train(profile, d) for d in p["fbs_densities"]], "fbs_latency": fbs_latency(profile),
            "amc_search": [amc_search(profile, t, p["amc_search_seed"]) for t in p["amc_targets"]],
            "amc": [amc_finetune(profile, t, s) for t in p["amc_targets"] for s in p["seeds"]],
            "blocks_uniform": [blocks_uniform_finetune(profile, t, s) for t in p["amc_targets"] for s in p["seeds"]],
            "references": references(profile)}


if __name__ == "__main__":
    ap = profiles.cli_parser(__doc__)
    res = all_runs(ap.parse_args().profile)
    for r in res["fbs"]:
        m = r["metrics"]
        print(f"FBS d={m['density']}: acc {m['test_acc']:.4f}, real FLOPs -{m['flops_reduction']:.1%}")
    for key in ("amc", "blocks_uniform", "references"):
        for r in res[key]:
            c, m = r["config"], r["metrics"]
            print(f"{key} {c.get('scope', '')} {c['target']:.0%} seed {c['seed']}: acc {m['test_acc']:.4f}, "
                  f"FLOPs -{m['flops_reduction']:.1%}")
