"""Weight pruning: the MNIST / Fashion-MNIST loader, held weight masks, iterative pruning, CSR layers."""
import gzip

import pytest
import torch
import torch.nn as nn

from reprolib import data, masks as masks_mod, runs, train
from reprolib.experiments import weight_pruning as wp
from reprolib.models import create


def write_idx(path, t: torch.Tensor, gz: bool = False):
    header = bytes([0, 0, 8, t.dim()]) + b"".join(d.to_bytes(4, "big") for d in t.shape)
    blob = header + t.to(torch.uint8).numpy().tobytes()
    (gzip.open if gz else open)(path, "wb").write(blob)


def fake_grey_folder(folder, n_train=20, n_test=10, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = data.IDX_FILES[split]
        write_idx(folder / (images + ".gz" * gz), torch.randint(0, 256, (n, 28, 28), generator=g), gz)
        write_idx(folder / (labels + ".gz" * gz), torch.arange(n) % 10, gz)
    return folder


def grey_data(n_train=64, n_test=32):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    x = (y.view(-1, 1, 1, 1) * 25 + torch.randint(0, 20, (n_train + n_test, 1, 28, 28), generator=g)).to(torch.uint8)
    return data.Cifar10(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "synthetic-grey")


# --------------------------------------------------------------------------- data

@pytest.mark.skipif(not data._grey_folder(data.DEBIAN_FASHION_MNIST),
                    reason=f"Debian's Fashion-MNIST is not in {data.DEBIAN_FASHION_MNIST} "
                           "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.delenv("REPROLIB_FASHION_MNIST", raising=False)
    d = data.load("fashion-mnist", download=False)
    assert d.describe() == {"dataset": "fashion-mnist", "n_train": 60000, "n_test": 10000}
    assert d.train_x.shape == (60000, 1, 28, 28) and d.train_x.dtype == torch.uint8
    assert d.train_y.bincount().tolist() == [6000] * 10 and d.test_y.bincount().tolist() == [1000] * 10


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_are_read_from_the_environment_folder(tmp_path, monkeypatch, gz):
    monkeypatch.setenv("REPROLIB_MNIST", str(fake_grey_folder(tmp_path / "mnist", gz=gz)))
    d = data.load("mnist", download=False)
    assert d.copy == "mnist" and d.train_x.shape == (20, 1, 28, 28) and d.test_y.tolist() == list(range(10))
    assert torch.equal(data.load("mnist", download=False).train_x, d.train_x)  # second call: decoded cache


def test_missing_or_corrupted_idx_files_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("REPROLIB_MNIST", raising=False)
    with pytest.raises(data.DataError, match=r"(?s)mnist not found.*torchvision download: .*MNIST/raw.*set REPROLIB_MNIST"):
        data.load("mnist", download=False)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 10)
    with pytest.raises(data.DataError, match="truncated or corrupted"):
        data.read_idx(bad)
    bad.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(data.DataError, match="not a uint8 idx file"):
        data.read_idx(bad)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_a_set_variable_is_the_only_place_searched(tmp_path, monkeypatch, name):
    """$REPROLIB_MNIST / $REPROLIB_FASHION_MNIST at an empty folder hides the data set (what `make book-check`
    relies on), although Debian's folder and torchvision's download folder hold it, it was decoded into the
    cache already, and a download is allowed."""
    env_var, cls = data.GREY[name]
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", fake_grey_folder(tmp_path / "debian"))
    fake_grey_folder(data.cache_dir() / cls.__name__ / "raw")
    monkeypatch.delenv(env_var, raising=False)
    assert data.load(name, download=False).train_x.shape == (20, 1, 28, 28)  # found without the variable

    def download(*args, **kwargs):
        raise AssertionError(f"{name} download attempted although {env_var} is set")
    monkeypatch.setattr(cls, "__init__", download)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(env_var, str(tmp_path / "empty"))
    with pytest.raises(data.DataError, match=f"{env_var}=.*empty does not hold the {name} idx files.*only place"):
        data.load(name)


def test_grey_batches_are_scaled_to_unit_range_and_not_augmented():
    d = grey_data()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(d.train_y), generator=torch.Generator().manual_seed(0))
    xb, yb = next(data.batches(d.train_x, d.train_y, 16, train=True, g=g))
    assert torch.allclose(xb, d.train_x[order[:16]].float() / 255) and torch.equal(yb, d.train_y[order[:16]])
    colour = data.synthetic_cifar10(8, 8)  # CIFAR's path is unchanged
    assert torch.allclose(next(data.batches(colour.test_x, colour.test_y, 8))[0], data.normalize(colour.test_x))


# --------------------------------------------------------------------------- pruning

def test_iterative_magnitude_pruning_reaches_the_sparsity_and_holds_the_zeros():
    torch.manual_seed(0)
    model, d = create("lenet300"), grey_data()
    layers = wp.weight_layers(model)
    assert layers == ["1", "3", "5"]
    masks = None
    for s in (0.5, 0.8):
        previous = masks
        masks = wp.prune_to(model, wp.weight_scores(model, "magnitude", layers), s, masks)
        total = sum(m.numel() for m in masks.values())
        assert masks_mod.sparsity(masks) == pytest.approx(int(total * s) / total)
        if previous is not None:  # pruned weights stay pruned: kept now implies kept before
            assert all((masks[n] <= previous[n]).all() for n in masks)
        hooks = wp.hold_weight_masks(model, masks)
        train.fit(model, d, epochs=1, lr=0.1, batch_size=16, weight_decay=5e-4, momentum=0.9, bf16=False)
        for h in hooks:
            h.remove()
        assert wp.pruned_are_zero(model, masks)
        assert all(model.get_submodule(n).weight[m].ne(0).float().mean() > 0.99 for n, m in masks.items())


def test_obd_and_magnitude_rank_weights_differently_and_unknown_criteria_fail():
    torch.manual_seed(0)
    model, d = create("lenet5"), grey_data(32, 8)
    layers = wp.weight_layers(model)
    batches = list(data.batches(d.train_x, d.train_y, 16))
    obd = wp.weight_scores(model, "obd", layers, batches)
    mag = wp.weight_scores(model, "magnitude", layers)
    assert all(obd[n].shape == mag[n].shape for n in layers)
    assert not torch.equal(masks_mod.weight_masks(obd, 0.5)["0"], masks_mod.weight_masks(mag, 0.5)["0"])
    with pytest.raises(ValueError, match="unknown weight criterion 'l1norm'"):
        wp.weight_scores(model, "l1norm", layers)
    with pytest.raises(ValueError, match="mask for '1' has shape"):
        wp.apply_weight_masks(create("lenet300"), {"1": torch.ones(3, dtype=torch.bool)})


def test_csr_layers_compute_what_the_dense_ones_do():
    torch.manual_seed(0)
    model = create("lenet300").eval()
    wp.prune_to(model, wp.weight_scores(model, "magnitude", wp.weight_layers(model)), 0.9)
    sparse = wp.csr_copy(model)
    assert sum(isinstance(m, wp.CSRLinear) for m in sparse.modules()) == 3
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert (sparse(x) - model(x)).abs().max() < 1e-5
    nnz = sum(int(model.get_submodule(n).weight.ne(0).sum()) for n in wp.weight_layers(model))
    stored = sum(m.weight.values().numel() for m in sparse.modules() if isinstance(m, wp.CSRLinear))
    assert stored == nnz and isinstance(model[1], nn.Linear)  # the original is untouched


# --------------------------------------------------------------------------- the chapter without the data set

def test_cached_runs_are_available_and_read_with_every_data_source_hidden(tmp_path, monkeypatch):
    """A data set whose LeNet runs are all cached counts as available without being read, and the chapter's runs
    come from their results files with the data hidden; one run missing and no data: the reason says what to set."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(empty))
    why = wp.available("smoke")["fashion-mnist"]
    assert why is not None and "REPROLIB_FASHION_MNIST" in why and not wp.cached("smoke", "fashion-mnist")

    monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(fake_grey_folder(tmp_path / "fashion", n_train=64, n_test=32)))
    assert wp.available("smoke") == {"fashion-mnist": None}  # loadable: the runs can be computed
    curves = [wp.curve("smoke", "fashion-mnist", m, c, mode) for m in ("lenet300", "lenet5") for c in wp.CRITERIA
              for mode in wp.MODES]
    table = wp.csr("smoke", "fashion-mnist")

    for var in ("REPROLIB_FASHION_MNIST", "REPROLIB_MNIST", "REPROLIB_DATA"):
        monkeypatch.setenv(var, str(empty))
    monkeypatch.setenv("REPROLIB_CACHED_ONLY", "1")
    assert wp.cached("smoke", "fashion-mnist") and wp.available("smoke") == {"fashion-mnist": None}
    assert [wp.curve("smoke", "fashion-mnist", r["model"], r["config"]["criterion"], r["config"]["mode"])
            for r in curves] == curves
    assert wp.csr("smoke", "fashion-mnist") == table
    assert wp.load_dense(wp.dense("smoke", "fashion-mnist", "lenet5"))(torch.zeros(2, 1, 28, 28)).shape == (2, 10)

    runs.paths(wp.EXPERIMENT, curves[-1]["config"])["json"].unlink()  # one run missing: the data are needed again
    assert not wp.cached("smoke", "fashion-mnist")
    assert "REPROLIB_FASHION_MNIST" in wp.available("smoke")["fashion-mnist"]
