import csv
import io
import tarfile
from pathlib import Path

import pytest
import torch
import torchvision

from reprolib import data


def test_augment_is_a_shifted_crop_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = data.augment(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):  # every output is one of the 81 crops of the padded image, maybe flipped
        crops = [padded[i, :, a:a + 32, b:b + 32] for a in range(9) for b in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    flipped = sum(not any(torch.equal(out[i], padded[i, :, a:a + 32, b:b + 32]) for a in range(9) for b in range(9))
                  for i in range(len(x)))
    assert 10 < flipped < 54  # about half are mirrored


def test_normalize_uses_hrank_statistics():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = data.normalize(x)
    assert torch.allclose(y[0, :, 0, 0], (1 - torch.tensor(data.MEAN)) / torch.tensor(data.STD))


def test_batches_cover_the_split_once():
    d = data.synthetic_cifar10(100, 30)
    seen = torch.cat([yb for _, yb in data.batches(d.test_x, d.test_y, 8)])
    assert torch.equal(seen, d.test_y)
    g = torch.Generator().manual_seed(1)
    train = torch.cat([yb for _, yb in data.batches(d.train_x, d.train_y, 32, train=True, g=g)])
    assert sorted(train.tolist()) == sorted(d.train_y.tolist())


def _write_tree(root: Path, per_class: int = 2):
    """A tiny cifar10-jpeg tree with official-order.csv listing images in a shuffled order."""
    rows, k = [], 0
    for split in ("train", "test"):
        for c, name in enumerate(data.CLASSES):
            (root / split / name).mkdir(parents=True)
            for j in range(per_class):
                img = torch.full((3, 32, 32), 10 * c + j, dtype=torch.uint8)
                torchvision.io.write_jpeg(img, str(root / split / name / f"{j:04d}.jpg"), quality=100)
                rows.append([split, None, name, f"{split}/{name}/{j:04d}.jpg"])
    for split in ("train", "test"):
        mine = [r for r in rows if r[0] == split][::-1]  # official order = reversed listing
        for i, r in enumerate(mine):
            r[1] = i
    with open(root / "official-order.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "index", "label", "path"])
        w.writerows(sorted(rows, key=lambda r: (r[0], r[1])))


def test_imagefolder_tree_is_decoded_in_official_order(tmp_path, monkeypatch):
    _write_tree(tmp_path / "cifar10-jpeg")
    monkeypatch.setenv("REPROLIB_DATA", str(tmp_path / "cifar10-jpeg"))
    d = data.load_cifar10(download=False)
    assert d.copy == "cifar10-jpeg" and d.train_x.shape == (20, 3, 32, 32)
    assert d.train_y.tolist() == [c for c in range(9, -1, -1) for _ in range(2)]
    assert abs(int(d.train_x[0, 0, 5, 5]) - 91) <= 2  # truck image 1 (value 91) comes first
    again = data.load_cifar10(download=False)  # second call reads the uint8 cache
    assert torch.equal(again.train_x, d.train_x)
    assert list((tmp_path / "cache").glob("cifar10-jpeg-*.pt"))


def test_missing_data_says_where_it_looked_and_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHARED_ARCHIVE", tmp_path / "nowhere" / "cifar10-jpeg.tar.gz")
    with pytest.raises(data.DataError, match=r"(?s)not found.*nowhere/cifar10-jpeg.tar.gz.*make data.*REPROLIB_DATA"):
        data.load_cifar10(download=False)
    monkeypatch.setenv("REPROLIB_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="REPROLIB_DATA=.*empty is neither"):
        data.load_cifar10(download=False)


def test_corrupted_archive_is_refused(tmp_path):
    bad = tmp_path / "cifar10-jpeg.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really a tarball")
    with pytest.raises(data.DataError, match="corrupted.*SHA-256"):
        data.extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "cifar10-jpeg").exists()


def test_archive_members_escaping_the_folder_are_refused(tmp_path, monkeypatch):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        payload = b"x"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    monkeypatch.setattr(data, "ARCHIVE_SHA256", data.sha256(evil))  # pass the checksum, test the extraction
    with pytest.raises(data.DataError, match="could not extract"):
        data.extract_archive(evil, tmp_path / "out" / "deep")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "escaped.txt").exists()


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.load("imagenet")


def test_a_set_REPROLIB_DATA_is_the_only_place_searched(tmp_path, monkeypatch):
    """REPROLIB_DATA at an empty folder hides CIFAR-10 (what `make book-check` relies on), although the ../shared
    archive is there, was already extracted and decoded into the cache, and a download is allowed."""
    _write_tree(tmp_path / "src" / "cifar10-jpeg")
    archive = tmp_path / "shared" / "cifar10-jpeg.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10-jpeg", arcname="cifar10-jpeg")
    monkeypatch.setattr(data, "SHARED_ARCHIVE", archive)
    monkeypatch.setattr(data, "ARCHIVE_SHA256", data.sha256(archive))
    monkeypatch.delenv("REPROLIB_DATA", raising=False)
    assert data.load_cifar10(download=False).train_x.shape == (20, 3, 32, 32)  # found: the archive is usable
    assert list((tmp_path / "cache").glob("cifar10-jpeg-*.pt"))

    def download(*args, **kwargs):
        raise AssertionError("CIFAR-10 download attempted although REPROLIB_DATA is set")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", download)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("REPROLIB_DATA", str(tmp_path / "empty"))
    with pytest.raises(data.DataError, match="REPROLIB_DATA=.*empty is neither"):
        data.load_cifar10()
    with pytest.raises(data.DataError, match="REPROLIB_DATA"):
        data.load("cifar10")
