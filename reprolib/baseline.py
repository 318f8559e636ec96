"""The trained dense baselines that the pruning chapters start from.

    python -m reprolib.baseline --profile budget     # trains (resumable) or reads the cache
"""
from __future__ import annotations

import torch

from . import data as data_mod, models, profiles, runs, train


def _dataset(config: dict):
    d = data_mod.load(config["dataset"])
    return d.subset(config["n_train"], config["n_test"])


def _train(config: dict, paths: dict) -> dict:
    d = _dataset(config)
    train.seed_everything(config["seed"])
    model = models.create(config["model"])
    keys = ("epochs", "lr", "batch_size", "momentum", "nesterov", "weight_decay", "schedule", "milestones",
            "warmup_epochs", "label_smoothing", "bf16", "channels_last", "seed")
    history = train.fit(model, d, checkpoint=paths["checkpoint"], desc=config["model"],
                        **{k: config[k] for k in keys})
    final = train.evaluate(model, d.test_x, d.test_y)  # fp32, NCHW: the number we report
    train.save_atomic(model.state_dict(), paths["weights"])
    return {"model": config["model"], **d.describe(),
            "metrics": {"test_acc": final["acc"], "test_loss": final["loss"],
                        "train_acc_last_epoch": history[-1]["train_acc"]},
            "curves": history, "weights": paths["weights"].name}


def run(profile: str | None = None, **overrides) -> dict:
    """The baseline record of ``profile`` (trained now if not cached)."""
    config = dict(profiles.get("baseline", profile), **overrides)
    return runs.run("baseline", config, _train)


def load_model(record: dict) -> torch.nn.Module:
    """The trained model of a baseline record (weights loaded with weights_only=True)."""
    model = models.create(record["config"]["model"])
    path = runs.paths("baseline", record["config"])["weights"]
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


if __name__ == "__main__":
    ap = profiles.cli_parser(__doc__)
    rec = run(ap.parse_args().profile)
    print(f"{rec['config']['model']} [{rec['profile']}] on {rec['dataset']}: test_acc={rec['metrics']['test_acc']:.4f}"
          f" after {len(rec['curves'])} epochs, {rec['wall_time_s'] / 60:.1f} min -> {runs.paths('baseline', rec['config'])['json']}")
