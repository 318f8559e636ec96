"""Presets per experiment: ``smoke`` (seconds, tiny data; CI), ``budget`` (the experiment
scaled to 2 CPU cores; what the book shows), ``paper`` (the source document's protocol; for a GPU).

A notebook's ``profile`` parameter defaults to ``$REPROLIB_PROFILE``, else ``budget``.
"""
from __future__ import annotations

import copy
import os

PROFILES = ("smoke", "budget", "paper")

# The ResNet-56 baseline every HRank / structural / criteria chapter starts from.
_BASELINE_COMMON = dict(model="resnet56", dataset="cifar10", batch_size=128, momentum=0.9, nesterov=True,
                        weight_decay=5e-4, schedule="cosine", milestones=[], warmup_epochs=0.0,
                        label_smoothing=0.0, bf16=True, channels_last=True, seed=0, n_train=None, n_test=None)

_PRESETS = {
    "baseline": {
        # 1 epoch on 1,024 / 512 images of the real data with ResNet-20: exercises the whole path.
        "smoke": dict(_BASELINE_COMMON, model="resnet20", epochs=1, lr=0.05, n_train=1024, n_test=512),
        # Cosine schedule, 40 epochs: about 2 hours on 2 cores (bf16 + channels_last).
        "budget": dict(_BASELINE_COMMON, epochs=40, lr=0.1),
        # He et al. 2016 (Sec. 4.2): 64k iterations of batch 128 (164 epochs), lr 0.1 divided by 10 at
        # 32k and 48k iterations (epochs 82 and 123), weight decay 1e-4, momentum 0.9, fp32.
        "paper": dict(_BASELINE_COMMON, epochs=164, lr=0.1, nesterov=False, weight_decay=1e-4, schedule="step",
                      milestones=[82, 123], bf16=False, channels_last=False),
    },
    # Structural vs nominal pruning ratio (Tessier et al. 2022): network slimming of the baseline,
    # structure-only sweeps of ResNet-56 and ResNet-50, and HRank's specs through the same lens.
    "structural": {
        "smoke": dict(baseline="smoke", rates=[0.3, 0.6], iterations=3, lam=1e-5, n_train=512, n_test=512,
                      finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                    nesterov=True, weight_decay=5e-4, bf16=True, channels_last=True, seed=0),
                      sweep_rates=[0.3, 0.6], resnet50_size=32, hrank_weights="random", hrank_batches=1,
                      rank_batch=32, latency_batches=[1, 8], latency_repeats=2),
        # One epoch of fine-tuning per iteration (the document: 10 on ImageNet), four target rates.
        "budget": dict(baseline="budget", rates=[0.2, 0.4, 0.6, 0.8], iterations=3, lam=1e-5, n_train=None,
                       n_test=None, finetune=dict(epochs=1, lr=0.01, schedule="cosine", batch_size=128,
                                                  momentum=0.9, nesterov=True, weight_decay=5e-4, bf16=True,
                                                  channels_last=True, seed=0),
                       sweep_rates=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], resnet50_size=64,
                       hrank_weights="baseline", hrank_batches=5, rank_batch=128, latency_batches=[1, 128],
                       latency_repeats=15),
        # Section 4.1: 3 iterations, 10 epochs of fine-tuning after each (ResNet-50), lr 0.01, wd 1e-4.
        "paper": dict(baseline="paper", rates=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], iterations=3,
                      lam=1e-5, n_train=None, n_test=None,
                      finetune=dict(epochs=10, lr=0.01, schedule="cosine", batch_size=128, momentum=0.9,
                                    nesterov=False, weight_decay=1e-4, bf16=False, channels_last=False, seed=0),
                      sweep_rates=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], resnet50_size=224,
                      hrank_weights="baseline", hrank_batches=5, rank_batch=128, latency_batches=[1, 128],
                      latency_repeats=30),
    },
}


def default_profile() -> str:
    return os.environ.get("REPROLIB_PROFILE", "budget")


def get(experiment: str, profile: str | None = None) -> dict:
    """The config dict of ``experiment`` under ``profile`` (a fresh copy, with ``profile`` in it)."""
    profile = profile or default_profile()
    if experiment not in _PRESETS:
        raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(sorted(_PRESETS))}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    return dict(copy.deepcopy(_PRESETS[experiment][profile]), profile=profile)
