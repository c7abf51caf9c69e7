"""Finding dataset files on disk (or downloading them) and reading their formats.

Search order for a dataset's files: the ``data_dir`` given, ``$ROBUSTLAB_DATA``,
``~/.cache/robustlab``, then system locations (Debian's
``dataset-fashion-mnist`` installs IDX files under
``/usr/share/datasets/fashion-mnist``). When nothing is found and downloads
are allowed, the files are fetched into the first writable location; when
that fails too, the error names every path tried.
"""
from __future__ import annotations

import gzip
import logging
import os
import pickle
import shutil
import tarfile
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

_logger = logging.getLogger(__name__)

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_SOURCES = {
    "fashion_mnist": {
        "dirs": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
        "system": ("/usr/share/datasets/fashion-mnist",),
        "urls": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    },
    "mnist": {
        "dirs": ("mnist", "MNIST/raw", "MNIST"),
        "system": ("/usr/share/datasets/mnist",),
        "urls": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    },
}
CIFAR_SOURCES = {
    "cifar10": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


class DataNotFoundError(FileNotFoundError):
    """Dataset files are missing; the message lists every path tried."""


def search_roots(data_dir: str | Path | None) -> list[Path]:
    """Directories searched for dataset folders, in order."""
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("ROBUSTLAB_DATA"):
        roots.append(Path(os.environ["ROBUSTLAB_DATA"]).expanduser())
    roots.append(Path.home() / ".cache" / "robustlab")
    return roots


def _candidates(roots: Sequence[Path], subdirs: Iterable[str], system: Iterable[str] = ()) -> list[Path]:
    out = []
    for root in roots:
        out.append(root)
        out.extend(root / s for s in subdirs)
    out.extend(Path(s) for s in system)
    return out


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dims, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path} is truncated: expected {expected} values for shape {dims}, got {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def load_idx(name: str, split: str, data_dir: str | Path | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels (N,)) of MNIST-format data."""
    src = IDX_SOURCES[name]
    stems = _IDX_FILES[split]
    roots = search_roots(data_dir)
    tried = _candidates(roots, src["dirs"], src["system"])
    for d in tried:
        files = [_find_file(d, s) for s in stems]
        if all(files):
            return _read_idx_pair(files[0], files[1])
    errors = []
    if download:
        target = _writable(roots[-1] / src["dirs"][0] if data_dir is None else roots[0] / src["dirs"][0])
        for base in src["urls"]:
            try:
                files = [_download(base + s + ".gz", target / (s + ".gz")) for s in stems]
                return _read_idx_pair(files[0], files[1])
            except OSError as err:
                errors.append(f"{base}: {err}")
    raise DataNotFoundError(_missing_message(name, [" + ".join(stems)], tried, errors, download))


def _read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels")
    return x, y


def load_cifar(name: str, split: str, data_dir: str | Path | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3), labels (N,)) from the python-pickle layout."""
    folder, url = CIFAR_SOURCES[name]
    roots = search_roots(data_dir)
    tried = _candidates(roots, (folder, f"{name}/{folder}"))
    for d in tried:
        if d.name == folder and d.is_dir():
            return _read_cifar(d, name, split)
    errors = []
    if download:
        target = _writable(roots[0] if data_dir is not None else roots[-1])
        try:
            archive = _download(url, target / Path(url).name)
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
            return _read_cifar(target / folder, name, split)
        except (OSError, tarfile.TarError) as err:
            errors.append(f"{url}: {err}")
    raise DataNotFoundError(_missing_message(name, [folder], tried, errors, download))


def _read_cifar(folder: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key = b"labels"
    else:
        files, key = ["train" if split == "train" else "test"], b"fine_labels"
    xs, ys = [], []
    for f in files:
        path = folder / f
        if not path.is_file():
            raise DataNotFoundError(f"{name}: {path} is missing from {folder}")
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[key], dtype=np.int64))
    return np.concatenate(xs).transpose(0, 2, 3, 1), np.concatenate(ys)


def _writable(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _download(url: str, dest: Path) -> Path:
    if dest.is_file():
        return dest
    _logger.info("downloading %s", url)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _missing_message(name: str, files: list[str], tried: list[Path], errors: list[str], download: bool) -> str:
    lines = [f"{name}: could not find {', '.join(files)}. Paths tried:"]
    lines += [f"  {p}" for p in tried]
    if errors:
        lines.append("Downloads failed:")
        lines += [f"  {e}" for e in errors]
    elif not download:
        lines.append("Downloading was disabled (download=False).")
    lines.append("Pass --data-dir / data_dir=, or set ROBUSTLAB_DATA.")
    if name == "fashion_mnist":
        lines.append("On Debian: apt-get install dataset-fashion-mnist")
    return "\n".join(lines)
