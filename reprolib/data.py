"""CIFAR-10 as uint8 tensors, decoded once, with augmentation as batched tensor ops.

Where the images come from (first hit wins):
  1. ``$REPROLIB_DATA``: the offline archive (``cifar10-jpeg.tar.gz``), an extracted
     ImageFolder tree (``train/<class>/*.jpg``, ``test/...``), or a folder holding
     the official ``cifar-10-batches-py``;
  2. the official dataset already downloaded into the cache folder;
  3. the offline archive at ``../shared/data/cifar10-jpeg.tar.gz`` beside the repo;
  4. the official download through ``torchvision.datasets.CIFAR10`` (needs internet).
The copy that was used is named in ``Cifar10.copy``: "cifar10-official" or
"cifar10-jpeg" ("synthetic" for the unit-test stand-in). Every results file records it.

MNIST and Fashion-MNIST (``load("mnist")``, ``load("fashion-mnist")``) come in the same container,
as uint8 [N, 1, 28, 28] tensors read from the idx files (see ``load_grey``). Batches of grey images
are scaled to [0, 1] and not augmented (the LeNet recipe); CIFAR-10's path is unchanged.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Where decoded tensors and extracted archives live (``$REPROLIB_CACHE``, else data/cache)."""
    return Path(os.environ.get("REPROLIB_CACHE", REPO / "data" / "cache"))

SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
ARCHIVE_SHA256 = "c439afa2614aa14f2d067db88187fdd6d8f9c7dd0f7adf582feb118519b95417"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)  # normalisation of the HRank code
STD = (0.2023, 0.1994, 0.2010)
GREY_SCALE = 1 / 255  # grey 28x28 images: pixels scaled to [0, 1] as Caffe's LeNet does (Han et al. 2015)


class DataError(RuntimeError):
    """The dataset is missing, corrupted or in an unknown layout."""


@dataclass
class Cifar10:
    train_x: torch.Tensor  # uint8 [N, 3, 32, 32]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    copy: str  # "cifar10-official" | "cifar10-jpeg" | "synthetic"
    _copies: dict = field(default_factory=dict, repr=False, compare=False)  # device -> this data there

    def to(self, device) -> "Cifar10":
        """These images and labels on ``device``: copied there at the first call, the same copy after."""
        device = torch.device(device)
        tensors = (self.train_x, self.train_y, self.test_x, self.test_y)
        if all(t.device == device for t in tensors):
            return self
        if str(device) not in self._copies:
            self._copies[str(device)] = Cifar10(*(t.to(device) for t in tensors), self.copy)
        return self._copies[str(device)]

    def subset(self, n_train: int | None, n_test: int | None) -> "Cifar10":
        """The first n images of each split (the official order), for smoke runs."""
        return Cifar10(self.train_x[:n_train], self.train_y[:n_train],
                       self.test_x[:n_test], self.test_y[:n_test], self.copy)

    def describe(self) -> dict:
        return {"dataset": self.copy, "n_train": len(self.train_y), "n_test": len(self.test_y)}


# --------------------------------------------------------------------------- sources

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract_archive(archive: Path, dest: Path) -> Path:
    """Verify the archive's SHA-256, then extract it safely (no absolute paths, no links
    out of ``dest``) into ``dest``; returns the ImageFolder root ``dest/cifar10-jpeg``."""
    root = dest / "cifar10-jpeg"
    if (root / "official-order.csv").exists():
        return root
    digest = sha256(archive)
    if digest != ARCHIVE_SHA256:
        raise DataError(
            f"{archive} is corrupted or not the study's archive: SHA-256 {digest}, expected "
            f"{ARCHIVE_SHA256}. Copy it again (see ../shared/data/README.md) or point "
            "REPROLIB_DATA at a good copy.")
    tmp = dest / f".extract-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")  # refuses absolute paths, '..' and outside links
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"could not extract {archive}: {e}") from e
    os.replace(tmp / "cifar10-jpeg", root)
    tmp.rmdir()
    return root


def _decode_imagefolder(root: Path) -> dict:
    """Decode an ImageFolder tree once, in the official order when ``official-order.csv``
    is present (else in ImageFolder order)."""
    out = {}
    order = root / "official-order.csv"
    rows = list(csv.DictReader(open(order))) if order.exists() else None
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no '{split}/' folder: expected an ImageFolder tree "
                            "train/<class>/*.jpg and test/<class>/*.jpg")
        folder = torchvision.datasets.ImageFolder(root / split)
        if tuple(folder.classes) != CLASSES:
            raise DataError(f"{root / split} has classes {folder.classes}, expected {list(CLASSES)}")
        if rows is not None:
            mine = sorted((r for r in rows if r["split"] == split), key=lambda r: int(r["index"]))
            items = [(root / r["path"], CLASSES.index(r["label"])) for r in mine]
        else:
            items = [(Path(p), y) for p, y in folder.samples]
        x = torch.empty(len(items), 3, 32, 32, dtype=torch.uint8)
        y = torch.empty(len(items), dtype=torch.int64)
        for i, (path, label) in enumerate(tqdm(items, desc=f"decode {split}", leave=False)):
            img = torchvision.io.decode_image(str(path), mode=torchvision.io.ImageReadMode.RGB)
            if img.shape != (3, 32, 32):
                raise DataError(f"{path} is {tuple(img.shape)}, expected a 32x32 RGB image")
            x[i], y[i] = img, label
        out[split] = (x, y)
    return out


def _decode_official(root: Path) -> dict:
    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = torchvision.datasets.CIFAR10(root, train=train, download=False)
        out[split] = (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                      torch.tensor(ds.targets, dtype=torch.int64))
    return out


def _official_present(folder: Path) -> bool:
    return (folder / "cifar-10-batches-py" / "data_batch_1").exists()


def _resolve(download: bool) -> tuple[str, Path]:
    """Return (copy, path) of the first source found, or raise a DataError listing where we looked."""
    looked = []
    env = os.environ.get("REPROLIB_DATA")
    if env:
        p = Path(env).expanduser()
        looked.append(f"$REPROLIB_DATA={p}")
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
            return "cifar10-jpeg", p
        if p.is_dir() and _official_present(p):
            return "cifar10-official", p
        if p.is_dir() and (p / "train").is_dir():
            return "cifar10-jpeg", p
        if p.is_dir() and (p / "cifar10-jpeg" / "train").is_dir():
            return "cifar10-jpeg", p / "cifar10-jpeg"
        raise DataError(f"REPROLIB_DATA={p} is neither the cifar10-jpeg archive, an ImageFolder "
                        "tree with train/ and test/, nor a folder holding cifar-10-batches-py.")
    official = cache_dir() / "cifar10-official"
    looked.append(str(official / "cifar-10-batches-py"))
    if _official_present(official):
        return "cifar10-official", official
    looked.append(str(SHARED_ARCHIVE))
    if SHARED_ARCHIVE.exists():
        return "cifar10-jpeg", SHARED_ARCHIVE
    if download:
        try:
            torchvision.datasets.CIFAR10(official, train=True, download=True)
            return "cifar10-official", official
        except Exception as e:  # no internet, proxy, ...
            looked.append(f"official download ({type(e).__name__}: {e})")
    raise DataError(
        "CIFAR-10 not found. Looked in: " + "; ".join(looked) + ". Fix: run `make data` on a "
        "machine with internet (official download), or set REPROLIB_DATA to the "
        "cifar10-jpeg.tar.gz archive or its extracted folder.")


def load_cifar10(download: bool = True) -> Cifar10:
    """CIFAR-10 as uint8 tensors; decoded once into ``<cache_dir>/<copy>-<id>.pt`` (written atomically)."""
    copy, path = _resolve(download)

    def decode():
        if copy == "cifar10-official":
            return _decode_official(path)
        return _decode_imagefolder(extract_archive(path, cache_dir()) if path.is_file() else path)
    d = _decoded(copy, path, decode)
    return Cifar10(*d["train"], *d["test"], copy=copy)


def _decoded(copy: str, path: Path, decode) -> dict:
    """``decode()`` of the source at ``path``, cached in ``<cache_dir>/<copy>-<id>.pt`` (written atomically).
    Called only once the source itself was found (the id is its path's hash): a source hidden by the
    environment variables is never read back from this cache."""
    cache = cache_dir() / f"{copy}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    d = decode()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save(d, tmp)
    os.replace(tmp, cache)
    return d


def synthetic_cifar10(n_train: int = 512, n_test: int = 256, seed: int = 0) -> Cifar10:
    """A learnable stand-in for unit tests: each class is a fixed random colour plus pixel noise
    (a colour survives random crops and flips, so a small CNN learns it in a few dozen steps)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(10, 3, 1, 1, generator=g) * 255

    def make(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = protos[y] * 0.6 + torch.rand(n, 3, 32, 32, generator=g) * 255 * 0.4
        return x.round().clamp(0, 255).to(torch.uint8), y

    return Cifar10(*make(n_train), *make(n_test), copy="synthetic")


# --------------------------------------------------------------------------- MNIST, Fashion-MNIST

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# name -> (environment variable, torchvision class; its download lands in <cache>/<class name>/raw)
GREY = {"mnist": ("REPROLIB_MNIST", torchvision.datasets.MNIST),
        "fashion-mnist": ("REPROLIB_FASHION_MNIST", torchvision.datasets.FashionMNIST)}


def read_idx(path: Path) -> torch.Tensor:
    """An idx file (LeCun's MNIST format, gzipped or not) as a uint8 tensor: images [N, H, W], labels [N]."""
    import gzip
    raw = (gzip.open if Path(path).suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 8 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DataError(f"{path} is not a uint8 idx file (header {raw[:4].hex()}, expected 00000801 or 00000803)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3])]
    body = raw[4 + 4 * raw[3]:]
    if len(body) != int(torch.tensor(dims).prod()):
        raise DataError(f"{path} is truncated or corrupted: header says {dims}, found {len(body)} bytes of data")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _idx_path(folder: Path, stem: str) -> Path | None:
    return next((folder / f for f in (stem, stem + ".gz") if (folder / f).is_file()), None)


def _grey_folder(folder: Path) -> bool:
    return all(_idx_path(folder, stem) for pair in IDX_FILES.values() for stem in pair)


def _resolve_grey(name: str, download: bool) -> Path:
    """The folder holding the four idx files of ``name``, or a DataError listing where we looked.
    A set ``$REPROLIB_MNIST`` / ``$REPROLIB_FASHION_MNIST`` is the only place searched (as ``$REPROLIB_DATA``
    is for CIFAR-10): an environment can hide the data, e.g. to prove that a chapter renders from its results."""
    env_var, cls = GREY[name]
    files = ", ".join(s for pair in IDX_FILES.values() for s in pair)
    if os.environ.get(env_var):
        folder = Path(os.environ[env_var]).expanduser()
        if _grey_folder(folder):
            return folder
        raise DataError(f"{env_var}={folder} does not hold the {name} idx files ({files}, plain or .gz); when "
                        f"{env_var} is set it is the only place searched. Point it at such a folder, or unset it.")
    looked, candidates = [], []
    if name == "fashion-mnist":
        candidates.append(("Debian package dataset-fashion-mnist", DEBIAN_FASHION_MNIST))
    raw = cache_dir() / cls.__name__ / "raw"  # torchvision's download layout
    candidates.append(("torchvision download", raw))
    for label, folder in candidates:
        looked.append(f"{label}: {folder}")
        if _grey_folder(folder):
            return folder
    if download:
        try:
            cls(cache_dir(), train=True, download=True)
            return raw
        except Exception as e:  # no internet, proxy, ...
            looked.append(f"download ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    debian = " `apt-get install dataset-fashion-mnist` (Debian), or" if name == "fashion-mnist" else ""
    raise DataError(f"{name} not found. Looked in: " + "; ".join(looked) + f". Fix:{debian} set {env_var} to a "
                    f"folder holding {files} (plain or .gz), "
                    "or run on a machine with internet (torchvision download).")


def load_grey(name: str, download: bool = True) -> Cifar10:
    """MNIST or Fashion-MNIST (``name``) as uint8 [N, 1, 28, 28] tensors in the CIFAR container
    (``copy`` is ``name``), read from the idx files: ``$REPROLIB_MNIST`` / ``$REPROLIB_FASHION_MNIST`` (only
    there when set), else Debian's ``/usr/share/datasets/fashion-mnist``, or torchvision's download folder in the cache."""
    if name not in GREY:
        raise ValueError(f"unknown grey dataset {name!r}: choose {' or '.join(map(repr, GREY))}")
    folder = _resolve_grey(name, download)

    def decode():
        out = {}
        for split, (images, labels) in IDX_FILES.items():
            x, y = read_idx(_idx_path(folder, images)), read_idx(_idx_path(folder, labels))
            if x.dim() != 3 or x.shape[1:] != (28, 28) or y.dim() != 1 or len(x) != len(y):
                raise DataError(f"{folder}: {split} images {tuple(x.shape)} and labels {tuple(y.shape)} do not "
                                "match (expected [N, 28, 28] and [N])")
            out[split] = (x[:, None].contiguous(), y.long())
        return out
    d = _decoded(name, folder, decode)
    return Cifar10(*d["train"], *d["test"], copy=name)


def load(name: str, **kw) -> Cifar10:
    """The dataset registry: "cifar10", "mnist", "fashion-mnist" or "synthetic"."""
    if name == "cifar10":
        return load_cifar10(**kw)
    if name in GREY:
        return load_grey(name, **kw)
    if name == "synthetic":
        return synthetic_cifar10(**kw)
    raise ValueError(f"unknown dataset {name!r}: choose 'cifar10', 'mnist', 'fashion-mnist' or 'synthetic'")


# --------------------------------------------------------------------------- batches

@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """HRank's mean and std as [1, 3, 1, 1] tensors on ``device``, made once (no copy per batch); ordinary
    tensors even when first asked for under ``torch.inference_mode``."""
    with torch.inference_mode(False):
        return torch.tensor(MEAN, device=device).view(1, 3, 1, 1), torch.tensor(STD, device=device).view(1, 3, 1, 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float, normalised with the HRank mean/std; grey [B,1,H,W] -> float in [0, 1]."""
    if x.shape[1] == 1:
        return x.float() * GREY_SCALE
    mean, std = _mean_std(x.device)
    return (x.float() / 255 - mean) / std


def _draw(g: torch.Generator | None, device: torch.device) -> torch.device:
    """Where random numbers for data on ``device`` are drawn: on ``g``'s device (a CUDA generator draws
    on the GPU, without waiting for it), else on the data's."""
    return g.device if g is not None else device


def augment(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a uint8 batch, as tensor ops on ``x``'s
    device; the offsets and flips are drawn from ``g`` on its device (the CPU's draws are unchanged)."""
    b, _, h, w = x.shape
    dev, on = x.device, _draw(g, x.device)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g, device=on).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g, device=on).to(dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = xp[torch.arange(b, device=dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
             rows, cols]
    flip = (torch.rand(b, generator=g, device=on) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, train: bool = False,
            g: torch.Generator | None = None):
    """Yield normalised (images, labels) batches on the images' device; shuffled when ``train``, and
    augmented too for colour images (grey digits and garments are not flipped or shifted)."""
    n = len(y)
    order = torch.randperm(n, generator=g, device=_draw(g, x.device)) if train else torch.arange(n, device=x.device)
    order = order.to(x.device)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        xb = x[idx]
        if train and x.shape[1] == 3:
            xb = augment(xb, g)
        yield normalize(xb), y[idx]


if __name__ == "__main__":  # `make data`: find, verify, extract and decode CIFAR-10 once
    d = load_cifar10()
    print(f"CIFAR-10 ready: {d.describe()} (decoded cache in {cache_dir()})")
