import math

import pytest
import torch

from reprolib import data, models, train


def test_lr_schedules():
    kw = dict(lr=0.1, epochs=10)
    assert train.lr_at(0, **kw) == pytest.approx(0.1)
    assert train.lr_at(5, **kw) == pytest.approx(0.05)
    assert train.lr_at(10, **kw) == pytest.approx(0.0, abs=1e-12)
    step = dict(lr=0.1, epochs=10, schedule="step", milestones=[3, 6], gamma=0.1)
    assert [round(train.lr_at(t, **step), 6) for t in (0, 2.9, 3, 5.5, 6, 9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert train.lr_at(0.5, lr=0.1, epochs=10, warmup_epochs=1) < 0.06
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        train.lr_at(0, lr=0.1, epochs=1, schedule="linear")


def _fit(tmp_path, on_epoch=None, name="ckpt.pt", **kw):
    d = data.synthetic_cifar10(256, 128)
    torch.manual_seed(0)
    model = models.create("resnet20")
    args = dict(epochs=3, lr=0.05, batch_size=64, seed=3, checkpoint=tmp_path / name, on_epoch=on_epoch)
    args.update(kw)
    return model, train.fit(model, d, **args)


@pytest.mark.parametrize("bf16,channels_last", [(False, False), (True, True)])
def test_killed_run_resumes_to_the_same_metrics(tmp_path, bf16, channels_last):
    _, full = _fit(tmp_path, name="a.pt", bf16=bf16, channels_last=channels_last)

    def kill(epoch, model, history):
        if epoch == 2:
            raise KeyboardInterrupt  # the process dies after epoch 2, before its checkpoint
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, on_epoch=kill, name="b.pt", bf16=bf16, channels_last=channels_last)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["epoch"] == 1
    model, resumed = _fit(tmp_path, name="b.pt", bf16=bf16, channels_last=channels_last)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(resumed) == strip(full)
    assert len(resumed) == 3


def test_training_learns_and_is_deterministic(tmp_path):
    kw = dict(epochs=6, batch_size=32, lr=0.1, checkpoint=None)
    m1, h1 = _fit(tmp_path, **kw)
    m2, h2 = _fit(tmp_path, **kw)
    assert h1[-1]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_evaluate_counts_correct_predictions():
    class Oracle(torch.nn.Module):
        def forward(self, x):  # predicts class 3 always
            out = torch.zeros(len(x), 10)
            out[:, 3] = 1
            return out
    d = data.synthetic_cifar10(10, 200)
    res = train.evaluate(Oracle(), d.test_x, d.test_y, batch_size=64)
    assert res["acc"] == pytest.approx((d.test_y == 3).float().mean().item())
    share3 = (d.test_y == 3).float().mean().item()  # loss log(e+9) - 1 on class 3, log(e+9) elsewhere
    assert res["loss"] == pytest.approx(math.log(math.e + 9) - share3, rel=1e-5)
