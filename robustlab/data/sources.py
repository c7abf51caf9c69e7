"""Finding dataset files on disk (or downloading them) and reading their formats.

Search order for a dataset's files: the ``data_dir`` given, ``$ROBUSTLAB_DATA``,
``~/.cache/robustlab``, then system locations (Debian's
``dataset-fashion-mnist`` installs IDX files under
``/usr/share/datasets/fashion-mnist``). When nothing is found and downloads
are allowed, the files are fetched into the first writable location; when
that fails too, the error names every path tried.

Nothing read here can execute code: downloads go over https and
are checked against the digests in :data:`CHECKSUMS` (a file without an entry
is never fetched), and the CIFAR python batches, which are pickles, are read
with :class:`CifarUnpickler`, which admits only the numpy arrays, lists,
dicts, strings and integers a real batch holds.
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import shutil
import tarfile
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from robustlab._io import atomic_write, file_digest

_logger = logging.getLogger(__name__)

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_SOURCES = {
    "fashion_mnist": {
        "dirs": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
        "system": ("/usr/share/datasets/fashion-mnist",),
        "urls": (
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        ),
    },
    "mnist": {
        "dirs": ("mnist", "MNIST/raw", "MNIST"),
        "system": ("/usr/share/datasets/mnist",),
        "urls": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    },
}
CIFAR_SOURCES = {
    "cifar10": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}
# The published digests of every file robustlab may download, by (dataset, file
# name): (algorithm, hex digest). Only MD5 is published for these datasets
# (torchvision's and the dataset pages' values); a file missing here is never
# downloaded.
CHECKSUMS: dict[tuple[str, str], tuple[str, str]] = {
    ("cifar10", "cifar-10-python.tar.gz"): ("md5", "c58f30108f718f92721af3b95e74349a"),
    ("cifar100", "cifar-100-python.tar.gz"): ("md5", "eb9058c3a382ffc7106e4002c42a8d85"),
    ("fashion_mnist", "train-images-idx3-ubyte.gz"): ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    ("fashion_mnist", "train-labels-idx1-ubyte.gz"): ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
    ("fashion_mnist", "t10k-images-idx3-ubyte.gz"): ("md5", "bef4ecab320f06d8554ea6380940ec79"),
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"): ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
    ("mnist", "train-images-idx3-ubyte.gz"): ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("mnist", "train-labels-idx1-ubyte.gz"): ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("mnist", "t10k-images-idx3-ubyte.gz"): ("md5", "9fb629c4189551a2d022fa330f9573f3"),
    ("mnist", "t10k-labels-idx1-ubyte.gz"): ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
}


class ChecksumError(ValueError):
    """A downloaded file's digest differs from the published one (the file is deleted)."""


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
    errors, mismatch = [], False
    if download:
        target = _writable(roots[-1] / src["dirs"][0] if data_dir is None else roots[0] / src["dirs"][0])
        for base in src["urls"]:
            try:
                files = [_download(base + s + ".gz", target / (s + ".gz"), name) for s in stems]
                return _read_idx_pair(files[0], files[1])
            except ChecksumError as err:  # another mirror may serve the genuine file
                errors.append(f"{base}: {err}")
                mismatch = True
            except OSError as err:
                errors.append(f"{base}: {err}")
    message = _missing_message(name, [" + ".join(stems)], tried, errors, download)
    raise ChecksumError(message) if mismatch else DataNotFoundError(message)


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
            archive = _download(url, target / Path(url).name, name)
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
            return _read_cifar(target / folder, name, split)
        except (OSError, tarfile.TarError) as err:
            errors.append(f"{url}: {err}")
    raise DataNotFoundError(_missing_message(name, [folder], tried, errors, download))


def _read_cifar(folder: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key, classes = b"labels", 10
    else:
        files, key, classes = ["train" if split == "train" else "test"], b"fine_labels", 100
    xs, ys = [], []
    for f in files:
        path = folder / f
        if not path.is_file():
            raise DataNotFoundError(f"{name}: {path} is missing from {folder}")
        x, y = read_cifar_batch(path, key, classes)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).transpose(0, 2, 3, 1), np.concatenate(ys)


class NotACifarBatch(ValueError):
    """A file in a CIFAR folder is not a plain CIFAR python batch; nothing of it was run."""


class CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR python batch and nothing else.

    A pickle can name any importable callable and call it while loading, so a
    planted ``data_batch_1`` would run its payload under ``pickle.load``. A
    real batch (Python 2, protocol 2, read with ``encoding="bytes"``) holds
    only a dict of bytes keys, lists, ints, bytes and numpy arrays, so only the
    numpy reconstructors below may be looked up; any other global is refused
    before it is imported or called."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # numpy's protocol-5 reduction: an array from a bytes buffer, dtype, shape.
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "list"), ("builtins", "dict"), ("builtins", "str"), ("builtins", "bytes"),
        ("builtins", "int"),
        ("__builtin__", "list"), ("__builtin__", "dict"), ("__builtin__", "str"), ("__builtin__", "bytes"),
        ("__builtin__", "int"),
        # Python 3 writes bytes into a protocol-2 pickle as _codecs.encode(str,
        # "latin1"): a batch re-saved that way needs it; it only converts data.
        ("_codecs", "encode"),
    }

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise NotACifarBatch(f"{self.path} is not a plain CIFAR batch: it refers to {module}.{name}, "
                                 "which a CIFAR batch never holds; it was not loaded")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, key: bytes = b"labels", num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one CIFAR python batch,
    read with :class:`CifarUnpickler` and checked for the batch layout."""
    try:
        with open(path, "rb") as fh:
            batch = CifarUnpickler(fh, path).load()
    except NotACifarBatch:
        raise
    except Exception as err:  # truncated, or not a pickle at all
        raise NotACifarBatch(f"{path} is not a plain CIFAR batch: {type(err).__name__}: {err}") from None
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise NotACifarBatch(f"{path} is not a plain CIFAR batch: expected a dict with b'data' and {key!r}; "
                             f"got {found}")
    data, labels = batch[b"data"], batch[key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        form = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise NotACifarBatch(f"{path} is not a plain CIFAR batch: b'data' must be uint8 (N, 3072); got {form}")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, list) or len(labels) != data.shape[0] or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num_classes for v in labels):
        raise NotACifarBatch(f"{path} is not a plain CIFAR batch: {key!r} must be a list of {data.shape[0]} "
                             f"class indices in [0, {num_classes}) (one per image)")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _writable(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _download(url: str, dest: Path, dataset: str) -> Path:
    """Fetch ``url`` into ``dest`` and check it against :data:`CHECKSUMS`.

    Only https (or a local ``file://`` mirror) is accepted, and only files with
    a published digest; a mismatch deletes what was fetched."""
    entry = CHECKSUMS.get((dataset, dest.name))
    if entry is None:
        raise ChecksumError(f"{dataset}: no published checksum for {dest.name}; refusing to download it")
    if not url.startswith(("https://", "file://")):
        raise ChecksumError(f"{dataset}: refusing to download {url} over an unencrypted connection (https only)")
    algorithm, expected = entry
    if dest.is_file():
        actual = file_digest(dest, algorithm)
        if actual != expected:
            raise ChecksumError(f"{dest}: {algorithm} {actual} differs from the published {expected}; "
                                "delete the file to download it again")
        return dest
    _logger.info("downloading %s", url)

    def fetch(tmp: Path) -> None:  # atomic_write deletes the temp file if this raises
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        actual = file_digest(tmp, algorithm)
        if actual != expected:
            raise ChecksumError(f"{dest.name} from {url}: {algorithm} {actual} differs from the published "
                                f"{expected}; the download was deleted")

    atomic_write(dest, fetch)
    return dest


def _missing_message(name: str, files: list[str], tried: list[Path], errors: list[str], download: bool) -> str:
    lines = [f"{name}: could not find {', '.join(files)}. Paths tried:"]
    lines += [f"  {p}" for p in tried]
    if errors:
        lines.append("Downloads failed:")
        lines += [f"  {e}" for e in errors]
    elif not download:
        lines.append("Downloading was disabled (download=False).")
    lines.append("Name the folder that holds them: --data-dir (robustlab attack, eval, demo), data.data_dir=DIR "
                 "(a train config or override), defaults.data.data_dir=DIR (a study), data_dir= (Python), "
                 "or set ROBUSTLAB_DATA.")
    if name == "fashion_mnist":
        lines.append("On Debian: apt-get install dataset-fashion-mnist")
    return "\n".join(lines)
