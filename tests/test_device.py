"""The device the library runs on (reprolib.device) and the GPU code paths, exercised on a CPU: CUDA is
mocked where only its presence matters, and the "meta" device (shapes, no data) stands in for a device
that is not the CPU."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from reprolib import counting, data, device as devices, models, runs, train
from reprolib.criteria import gradient_outlier

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cuda(monkeypatch):
    """A machine with two CUDA devices, as far as device resolution can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA Fake 80GB")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


# --------------------------------------------------------------------------- resolution

@pytest.mark.parametrize("value, expected", [(None, "cuda:0"), ("", "cuda:0"), ("cpu", "cpu"), ("cuda", "cuda:0"),
                                             ("cuda:1", "cuda:1"), (" CUDA:1 ", "cuda:1")])
def test_device_comes_from_the_variable_else_cuda_when_available(monkeypatch, cuda, value, expected):
    if value is None:
        monkeypatch.delenv(devices.ENV, raising=False)
    else:
        monkeypatch.setenv(devices.ENV, value)
    assert devices.current() == torch.device(expected)


def test_without_cuda_the_default_is_the_cpu(monkeypatch, no_cuda):
    monkeypatch.delenv(devices.ENV, raising=False)
    assert devices.current() == torch.device("cpu")
    monkeypatch.setenv(devices.ENV, "cpu")
    assert devices.current() == torch.device("cpu")


@pytest.mark.parametrize("value, match", [
    ("gpu0", r"REPROLIB_DEVICE='gpu0' is not a device: use 'cpu', 'cuda' or 'cuda:<index>'"),
    ("cuda:x", "REPROLIB_DEVICE='cuda:x' is not a device"),
    ("cpu:1", "REPROLIB_DEVICE='cpu:1' is not a device"),
    ("cuda", r"REPROLIB_DEVICE=cuda but this machine has no CUDA device .* set REPROLIB_DEVICE=cpu or unset it"),
    ("cuda:1", "REPROLIB_DEVICE=cuda:1 but this machine has no CUDA device"),
])
def test_bad_values_are_one_clear_error_naming_the_variable(monkeypatch, no_cuda, value, match):
    monkeypatch.setenv(devices.ENV, value)
    with pytest.raises(devices.DeviceError, match=match) as e:
        devices.current()
    assert "\n" not in str(e.value)


def test_a_cuda_index_this_machine_lacks_is_refused(monkeypatch, cuda):
    monkeypatch.setenv(devices.ENV, "cuda:2")
    with pytest.raises(devices.DeviceError, match=r"REPROLIB_DEVICE=cuda:2 but this machine has 2 CUDA device"):
        devices.current()


def test_fit_checks_its_device_argument(no_cuda):
    with pytest.raises(devices.DeviceError, match=r"fit\(device=...\)=cuda but this machine has no CUDA device"):
        train.fit(models.create("resnet20"), data.synthetic_cifar10(8, 8), epochs=1, lr=0.1, device="cuda")


@pytest.mark.parametrize("value", ["gpu0"] + (["cuda"] if not torch.cuda.is_available() else []))
def test_command_line_ends_with_one_error_line(tmp_path, value):
    env = dict(os.environ, REPROLIB_DEVICE=value, REPROLIB_RESULTS=str(tmp_path / "results"), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "reprolib.experiments.baseline", "--profile", "smoke"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode != 0
    assert len(lines) == 1 and "REPROLIB_DEVICE" in lines[0] and lines[0].startswith("error: "), lines
    assert not (tmp_path / "results").exists()  # stopped before anything ran


# --------------------------------------------------------------------------- what runs on the device

def test_autocast_takes_the_device_type():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that CUDA is not available here
        on_gpu = devices.autocast(torch.device("cuda:1"), True)
    assert isinstance(on_gpu, torch.autocast) and on_gpu.device == "cuda" and on_gpu.fast_dtype == torch.bfloat16
    on_cpu = devices.autocast(torch.device("cpu"), True)
    assert on_cpu.device == "cpu" and on_cpu.fast_dtype == torch.bfloat16
    assert not isinstance(devices.autocast(torch.device("cuda:0"), False), torch.autocast)


def test_fit_and_evaluate_autocast_on_their_device(monkeypatch):
    seen = []
    real = devices.autocast
    monkeypatch.setattr(devices, "autocast", lambda dev, bf16: seen.append((dev, bf16)) or real(dev, bf16))
    train.fit(models.create("resnet20"), data.synthetic_cifar10(16, 8), epochs=1, lr=0.1, batch_size=8, device="cpu")
    assert seen and all(dev == torch.device("cpu") and bf16 for dev, bf16 in seen)
    assert len(seen) == 2 + 1  # two training steps, one test batch


# Every way Python code can read a tensor's value to the host (on CUDA: wait for the device).
READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def _reads_during_fit(monkeypatch, n_train: int) -> int:
    count = [0]
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            count[0] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    try:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(4, 10))
        train.fit(net, data.synthetic_cifar10(n_train, 16), epochs=1, lr=0.01, batch_size=4, device="cpu")
    finally:
        monkeypatch.undo()
    return count[0]


def test_the_training_loop_reads_the_device_once_an_epoch_not_per_step(monkeypatch):
    """3 steps or 45 steps (the progress bar updates at steps 0, 20 and 40): the same number of reads."""
    few, many = _reads_during_fit(monkeypatch, 12), _reads_during_fit(monkeypatch, 180)
    assert few == many


def test_totals_are_the_float64_sums_of_the_python_floats():
    """The epoch means of the old loop (Python floats: loss.item() * batch size, summed) to the last bit."""
    g = torch.Generator().manual_seed(0)
    totals, loss_sum, correct = train._Totals(torch.device("cpu")), 0.0, 0
    for n in (7, 128, 128, 5, 33) * 20:
        loss = torch.rand((), generator=g) * 3  # float32, like the loss under autocast
        out, y = torch.randn(n, 10, generator=g), torch.randint(0, 10, (n,), generator=g)
        totals.add(loss.double() * n, out, y)
        loss_sum += loss.item() * n
        correct += (out.argmax(1) == y).sum().item()
    assert totals.read() == (loss_sum, correct)
    assert totals.seen == 2 * 128 * 20 + (7 + 5 + 33) * 20


def test_dataset_moves_to_a_device_once():
    d = data.synthetic_cifar10(8, 4)
    assert d.to("cpu") is d
    on = d.to("meta")  # "meta": a device that is not the CPU, tensors without data
    assert {t.device.type for t in (on.train_x, on.train_y, on.test_x, on.test_y)} == {"meta"}
    assert on.train_x.shape == d.train_x.shape and on.copy == d.copy
    assert d.to(torch.device("meta")) is on  # the copy is kept, not made again


def test_batches_stay_on_the_data_device():
    """Shuffled, cropped, flipped and normalised on the images' device, even with a CPU generator."""
    d = data.synthetic_cifar10(16, 4).to("meta")
    out = list(data.batches(d.train_x, d.train_y, 8, train=True, g=torch.Generator().manual_seed(0)))
    assert len(out) == 2
    assert all(x.device.type == "meta" and y.device.type == "meta" and x.shape == (8, 3, 32, 32) for x, y in out)
    assert data.normalize(d.test_x).device.type == "meta"


def test_gradient_norms_run_where_the_model_is():
    model = models.create("vgg16").to("meta")
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))]  # CPU batches, a model elsewhere
    norms = gradient_outlier.gradient_norms(model, ["features.0", "features.3"], iter(batches))
    assert norms["features.0"].device.type == "meta" and norms["features.0"].shape == (1, 64)


def test_synchronize_waits_for_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    devices.synchronize(torch.device("cuda:1"))
    devices.synchronize(torch.device("cpu"))
    assert calls == [torch.device("cuda:1")]


def test_latency_timers_synchronise_around_every_pass(monkeypatch):
    events = []
    monkeypatch.setattr(devices, "synchronize", lambda dev: events.append(("sync", dev)))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            events.append(("forward", x.device))
            return self.conv(x)
    net = Net().to("meta")  # the timer's input and synchronisation follow the model's device
    counting.latency(net, (2, 3, 8, 8), repeats=3, warmup=1)
    meta = torch.device("meta")
    assert events == [("sync", meta), ("forward", meta), ("sync", meta)] * 4


# --------------------------------------------------------------------------- results files

def test_describe_names_the_cpu_and_its_threads_or_the_gpu(cuda):
    threads = torch.get_num_threads()
    cpu = devices.describe(torch.device("cpu"))
    assert cpu == f"CPU {devices.cpu_name()}, {threads} thread{'s' if threads != 1 else ''}"
    if Path("/proc/cpuinfo").exists() and "model name" in Path("/proc/cpuinfo").read_text():
        first = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
        assert devices.cpu_name() == first.split(":", 1)[1].strip()
    assert devices.describe(torch.device("cuda:1")) == "GPU NVIDIA Fake 80GB (cuda:1)"


def test_records_name_the_device_which_is_not_in_the_config_hash(monkeypatch, cuda):
    calls = []

    def fn(config, paths):
        calls.append(config)
        return {"metrics": {}}
    cfg = {"model": "resnet20", "lr": 0.1}
    monkeypatch.setenv(devices.ENV, "cpu")
    on_cpu = runs.paths("demo", cfg)["json"]
    rec = runs.run("demo", cfg, fn)
    assert rec["device"] == devices.describe(torch.device("cpu")) and rec["device"].startswith("CPU ")
    assert "versions" in rec and rec["config"] == cfg

    monkeypatch.setenv(devices.ENV, "cuda")  # the same run on a GPU: the same file, read not recomputed
    assert runs.paths("demo", cfg)["json"] == on_cpu
    assert runs.run("demo", cfg, fn) == rec and len(calls) == 1
    other = runs.run("demo", dict(cfg, lr=0.2), fn)  # a new run there records the GPU
    assert other["device"] == "GPU NVIDIA Fake 80GB (cuda:0)" and len(calls) == 2
