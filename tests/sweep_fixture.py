"""A tiny study for the sweep tests: one run whose worker kills itself once, after its first epoch, unless the
marker file exists (importable by Ray workers: the tests put this folder on their PYTHONPATH)."""
import os
from pathlib import Path

import torch

from reprolib import data as data_mod, models, plan, runs, train


@plan.recipe
def flaky(marker: str, epochs: int = 3) -> dict:
    config = {"part": "flaky", "model": "resnet20", "epochs": epochs, "n_train": 128, "n_test": 64}

    def fn(config, paths):
        d = data_mod.synthetic_cifar10(config["n_train"], config["n_test"])
        train.seed_everything(0)
        model = models.create(config["model"])

        def die_once(epoch, model, history):
            if epoch == 1 and not Path(marker).exists():
                Path(marker).touch()
                os._exit(1)  # the worker process dies mid-training, its checkpoint written
        curves = train.fit(model, d, epochs=config["epochs"], lr=0.05, batch_size=64, checkpoint=paths["checkpoint"],
                           on_epoch=die_once)
        # the checkpoint is written after on_epoch: a worker killed there resumes from the previous epoch
        return {"metrics": {"test_acc": curves[-1]["test_acc"], "train_loss": curves[-1]["train_loss"]},
                "curves": curves}
    return runs.run("flaky", config, fn)


def all_runs(marker: str) -> list[dict]:
    return [flaky(marker)]
