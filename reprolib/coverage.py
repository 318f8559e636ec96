"""Which pruning methods the two survey documents name, and where the book measures each one, or why not.

``METHODS`` is the registry behind the coverage table of the criteria-benchmark chapter. An entry that is
``measured`` names what implements it (a criterion of ``reprolib.criteria`` or a function, as
``"module:function"``) and the notebook that measures it; ``tests/test_coverage.py`` checks that both exist,
so the table cannot claim a method the code does not have. Any other status carries the reason.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

SUMMARY, QIN = "summary-of-pruning.txt", "pruning-techniques-analysis.txt"
STATUSES = ("measured", "planned", "not measured")


@dataclass(frozen=True)
class Method:
    document: str
    section: str
    method: str
    status: str
    chapter: str | None = None          # notebook name (notebooks/<chapter>.ipynb) where it is measured
    implemented_by: tuple[str, ...] = ()  # criterion names, or "module:function"
    note: str = ""                       # where in the chapter, or why it is not measured
    study: str = ""                      # planned: the experiment module whose committed runs measure it


_CB, _WP, _ST, _TG = "criteria-benchmark", "weight-pruning", "structural-vs-nominal", "thinet-vs-gradient"
METHODS: tuple[Method, ...] = (
    Method(SUMMARY, "1", "Optimal Brain Damage (LeCun et al.)", "measured", _WP, ("obd",),
           "LeNet-300-100 / LeNet-5, Gauss-Newton diagonal of the Hessian"),
    Method(SUMMARY, "1", "Optimal Brain Surgeon (Hassibi & Stork)", "planned", _WP, study="survey_elementwise",
           implemented_by=("obs", "reprolib.criteria.obs:obs_prune"),
           note="implemented, layer-wise as in L-OBS (inverse of each layer's input Hessian, greedy removal with the "
                "compensating update, checked against brute force)"),
    Method(SUMMARY, "1", "magnitude pruning, LWC (Han et al.)", "measured", _WP, ("magnitude",),
           "iterative and one-shot, LeNets and ResNet-56"),
    Method(SUMMARY, "1.1", "sensitivity-driven regularisation (Tartaglione et al.)", "planned", _WP,
           study="survey_elementwise",
           implemented_by=("reprolib.sensitivity:SensitivityRegulariser",),
           note="implemented (specific variant, softmax outputs: our reading), with a control without the "
                "sensitivity"),
    Method(SUMMARY, "1.2", "gradual magnitude pruning, cubic schedule (Zhu & Gupta)", "planned", _WP,
           study="survey_elementwise",
           implemented_by=("reprolib.gradual:GradualMagnitude",),
           note="implemented (cubic schedule during retraining, masks every 100 steps)"),
    Method(SUMMARY, "2.1", "structured sparsity learning, group lasso (Wen et al.)", "planned", _CB,
           study="survey_regularisers",
           implemented_by=("reprolib.group_lasso:penalty", "reprolib.experiments.survey_regularisers:regularise"),
           note="implemented (group lasso over filters, block-internal channels and residual branches; pruned at a "
                "threshold and at 50% of the true FLOPs; random control)"),
    Method(SUMMARY, "2.2", "filter group approximation (Peng et al.)", "not measured",
           note="a low-rank decomposition (each conv replaced by a group conv and a 1x1 conv), not pruning; the summary "
                "gives only the heading and only the paper's abstract could be found here, so its algorithm (how groups "
                "are formed, how the approximation is solved) cannot be reproduced from the sources; the compute would "
                "fit (per-layer decompositions in seconds, one budget fine-tuning of 1-5 min per setting)"),
    Method(SUMMARY, "3.1", "L1-norm filter pruning (Li et al.)", "measured", _CB, ("l1norm",),
           "every target; also the HRank and ThiNet chapters' control"),
    Method(SUMMARY, "3.2", "network trimming, APoZ (Hu et al.)", "measured", _CB, ("apoz",),
           "filters of ResNet-56, and the iterative trimming of VGG-16"),
    Method(SUMMARY, "4.1", "network slimming, BN scaling factors (Liu et al.)", "measured", _ST,
           ("bn_gamma", "reprolib.slimming:prune"), "sparsity training with an L1 on gamma, three iterations"),
    Method(SUMMARY, "4.2", "LASSO channel selection + least squares (He et al.)", "planned", _CB,
           study="survey_structured",
           implemented_by=("lasso", "reprolib.criteria.lasso:reconstruct_network",
                           "reprolib.criteria.lasso:compare_with_thinet"),
           note="implemented (block-internal convs, scores alone and with the least-squares weight step, against "
                "ThiNet's greedy selection on the same sampled rows)"),
    Method(SUMMARY, "4.3", "ThiNet (Luo et al.)", "measured", _TG, ("reprolib.criteria.thinet:thinet_prune",),
           "VGG-16 at four ratios, against the gradient-outlier method"),
    Method(SUMMARY, "4.4", "discrimination-aware channel pruning, DCP", "planned", _CB,
           study="survey_structured", implemented_by=("dcp",),
           note="implemented at reduced scale (ours): 2 auxiliary losses (the authors: 3), heads trained on 256 images "
                "with the network frozen"),
    Method(SUMMARY, "4.5", "squeeze-and-excitation networks", "not measured",
           note="a channel-attention architecture, not a pruning method; the summary presents it before FBS"),
    Method(SUMMARY, "4.6", "feature boosting and suppression, FBS (dynamic)", "planned", _CB, study="survey_dynamic",
           implemented_by=("reprolib.fbs:gated", "reprolib.experiments.survey_dynamic:fbs_train"),
           note="implemented (gated ResNet-56 at densities 1 to 0.3, real FLOPs per image, CPU latency of the masked "
                "and of a skipping implementation)"),
    Method(SUMMARY, "4.7", "filter pruning via geometric median, FPGM (He et al.)", "measured", _CB, ("fpgm",),
           "the summary gives only the heading"),
    Method(SUMMARY, "4.8", "kernel sparsity and entropy, KSE", "planned", _CB,
           study="survey_structured", implemented_by=("kse",),
           note="implemented (its channel indicator, not its kernel clustering); the summary gives only the "
                "heading"),
    Method(SUMMARY, "4.9", "budget-aware regularisation, BAR", "planned", _CB, study="survey_regularisers",
           implemented_by=("reprolib.bar:prune", "reprolib.experiments.survey_regularisers:regularise"),
           note="implemented (Hard Concrete gates on block-internal channels under a 50% true-FLOPs budget; no "
                "distillation); the summary gives only the heading"),
    Method(SUMMARY, "5.1", "SkipNet (dynamic block skipping)", "not measured",
           note="per-input gates skip whole residual blocks, trained by supervised pre-training with soft gates and then "
                "hybrid REINFORCE, both over the whole gated network (each step at least the dense cost): even 5 + 5 "
                "epochs on the 50,000 images is ~30 min of one thread per setting, beyond this budget. Its static "
                "counterpart (blocks removed by BN gamma) is the layer-pruning section; FBS shows what per-image control "
                "flow costs on a CPU"),
    Method(SUMMARY, "6.1", "DAC, data-free acceleration (Li et al., WACV 2019)", "planned", _CB,
           study="survey_structured",
           implemented_by=("reprolib.dac:accelerate",),
           note="implemented (depthwise + pointwise decomposition from the weights, audited to see no data; the "
                "per-layer rank rule is ours); the summary gives only the heading"),
    Method(SUMMARY, "7.1", "N2N learning (reinforcement learning)", "not measured",
           note="two REINFORCE policies (layer removal, then shrinkage) whose every reward is a student trained by "
                "distillation from the teacher: at one epoch on 10,000 images per student (>= 40 s of one thread with the "
                "teacher's forward pass) a search of only 300 students is ~3.5 h, and one-epoch students rank "
                "architectures poorly"),
    Method(SUMMARY, "7.2", "ADC / AMC (reinforcement learning)", "planned", _CB, study="survey_dynamic",
           implemented_by=("reprolib.amc:search", "reprolib.experiments.survey_dynamic:amc_finetune"),
           note="implemented (DDPG over the blocks' first convs, the paper's 11 state features and action limit, 400 "
                "episodes; fine-tuned at equal true FLOPs against one rate over the same layers and the L1-norm rows)"),
    Method(QIN, "2 (Formula 1)", "channel pruning by BN scaling factors", "measured", _ST,
           ("bn_gamma", "reprolib.slimming:prune"), "network slimming; bn_gamma in the criteria benchmark"),
    Method(QIN, "3 (Formula 2), 6.1", "neuron pruning by APoZ on VGG-16", "measured", _CB,
           ("apoz", "reprolib.experiments.criteria_benchmark:apoz_iterations"), "six trimming iterations"),
    Method(QIN, "4, 6.4", "weight pruning of LeNet-300-100 / LeNet-5", "measured", _WP, ("magnitude",),
           "Fashion-MNIST (MNIST where it can be had)"),
    Method(QIN, "5", "layer pruning of residual blocks by BN gamma", "measured", _CB,
           ("reprolib.experiments.criteria_benchmark:layer_pruning",), "against blocks removed at random"),
    Method(QIN, "6.2", "ThiNet on VGG-16 / ResNet-50, ImageNet (Table 2)", "not measured",
           note="ImageNet results quoted from the original papers; ThiNet itself runs on CIFAR-10 in " + _TG),
    Method(QIN, "6.3", "extreme pruning of YOLOv3", "not measured",
           note="a detector trained on detection data, far beyond 2 CPU cores; no data set for it here"),
)


def resolve(name: str):
    """The object an ``implemented_by`` entry names: a criterion (``criteria.get``) or ``module:function``."""
    if ":" in name:
        module, attr = name.split(":")
        return getattr(importlib.import_module(module), attr)
    from . import criteria
    return criteria.get(name)


def runs_state(study: str, profile: str) -> tuple[int, int]:
    """(committed, total) runs of ``study``'s chapter at ``profile``, computing nothing (``plan.committed``)."""
    from . import plan
    module = importlib.import_module(f"reprolib.experiments.{study}")
    records = {(r["experiment"], r["hash"]): r for r in plan.flat(plan.committed(module.all_runs, profile))}
    return sum(not plan.is_planned(r) for r in records.values()), len(records)


def table(profile: str | None = None) -> list[dict]:
    """The coverage table, one row per method, in the documents' order. With ``profile``, a planned method whose
    study's runs are all committed at that profile is shown as measured; otherwise its note starts with how
    many are."""
    states = {m.study: runs_state(m.study, profile) for m in METHODS if profile and m.study}
    rows = []
    for m in METHODS:
        status, note = m.status, m.note
        if m.study in states:
            k, n = states[m.study]
            status = "measured" if k == n else status
            note = (f"{k} of {n} runs of {m.study} committed ({profile}); " if k < n else "") + note
        rows.append({"document": m.document.removesuffix(".txt"), "section": m.section, "method": m.method,
                     "status": status, "chapter": m.chapter or "", "implemented by": ", ".join(m.implemented_by),
                     "note": note})
    return rows


def notebook(chapter: str) -> Path:
    return Path(__file__).resolve().parent.parent / "notebooks" / f"{chapter}.ipynb"
