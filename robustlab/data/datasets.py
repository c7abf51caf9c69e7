"""Datasets by name and batch loaders.

``load_dataset("fashion_mnist", "test", limit=512)`` returns images as
tensors in memory (small datasets) or an ImageFolder (``imagefolder:ROOT``,
ImageNet layout). Every batch a loader yields is ``(x, y)`` with x float in
[0, 1], (N, C, H, W).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from robustlab.data import sources
from robustlab.data.augment import create_augment
from robustlab.data.folder import image_folder
from robustlab.data.info import INFO, DatasetInfo
from robustlab.data.streaming import augmented

SPLITS = ("train", "test")
_logger = logging.getLogger(__name__)


def dataset_names() -> list[str]:
    return sorted(INFO) + ["imagefolder:ROOT"]


class TensorImageDataset(Dataset):
    """Images held in memory: uint8 (N, C, H, W) scaled by 1/255, or float in [0, 1]."""

    def __init__(self, images: Tensor, labels: Tensor, info: DatasetInfo) -> None:
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images (N, C, H, W) and labels (N,) must agree; got {tuple(images.shape)}, {tuple(labels.shape)}"
            )
        self.images, self.labels, self.info = images, labels.long(), info

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return to_float(self.images[i]), self.labels[i]

    def batch(self, index: Tensor | slice) -> tuple[Tensor, Tensor]:
        if isinstance(index, Tensor):
            index = index.to(self.images.device)
        return to_float(self.images[index]), self.labels[index]

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> TensorImageDataset:
        """The same dataset with its tensors on ``device`` (training keeps small
        in-memory datasets on the GPU: no host copy, no sync per batch)."""
        return TensorImageDataset(self.images.to(device), self.labels.to(device), self.info)


def to_float(images: Tensor) -> Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def load_dataset(
    name: str,
    split: str = "test",
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    download: bool = True,
    size: int | None = None,
    channels: int | None = None,
    augment: str | None = None,
) -> Dataset:
    """A dataset by name.

    Args:
        name: ``fashion_mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``digits``
            (scikit-learn's 8×8 digits, shipped with scikit-learn: ``pip install
            'robustlab[digits]'``) or
            ``imagefolder:ROOT`` (ROOT/SPLIT/CLASS/IMAGE, split ``val`` or ``test``).
        split: ``train`` or ``test``.
        data_dir: where to look first (then $ROBUSTLAB_DATA, ~/.cache/robustlab,
            system paths).
        limit: keep the first ``limit`` samples (a fixed, class-mixed subset).
        download: fetch missing files when online.
        size, channels: resize to size×size and/or repeat gray to 3 channels
            once in memory (e.g. Fashion-MNIST as CIFAR-shaped input). For an
            ImageFolder, ``size`` is the crop (224 by default).
        augment: training augmentation (``none``, ``flip_crop``,
            ``random_resized_crop``, ``autoaugment``), drawn per (seed, epoch,
            index): an ImageFolder then crops the decoded image in the loader
            workers (:mod:`robustlab.data.folder`); in-memory data is wrapped
            by :func:`robustlab.data.streaming.augmented`. None: no augmentation
            (ImageFolder: the evaluation pre-processing).
    """
    if split not in SPLITS and not str(name).startswith("imagefolder:"):
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive integer; got {limit!r}")
    for arg, value in (("size", size), ("channels", channels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{arg} must be a positive integer (or None to keep the dataset's); got {value!r}")
    if augment is not None:
        create_augment(augment)  # an unknown name fails before any file is read
    if str(name).startswith("imagefolder:"):
        return image_folder(name.split(":", 1)[1], split, limit=limit, size=size or 224, augment=augment,
                            channels=channels or 3)
    key = str(name).lower().replace("-", "_")
    if key not in INFO:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    info = INFO[key]
    if key in sources.IDX_SOURCES:
        x, y = sources.load_idx(key, split, data_dir, download)
        images = torch.from_numpy(x)[:, None]
    elif key in sources.CIFAR_SOURCES:
        x, y = sources.load_cifar(key, split, data_dir, download)
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    else:
        images, y = _digits(split)
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    images, info = _reshape(images, info, size, channels)
    dataset = TensorImageDataset(images, labels, info)
    return augmented(dataset, augment) if augment is not None else dataset


def _digits(split: str) -> tuple[Tensor, np.ndarray]:
    """scikit-learn's 1797 digits (0–16 gray levels), a fixed 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(f"the digits data set comes with scikit-learn: pip install 'robustlab[digits]' ({err})"
                          ) from None

    d = load_digits()
    order = np.random.RandomState(0).permutation(len(d.target))
    cut = int(0.8 * len(order))
    idx = order[:cut] if split == "train" else order[cut:]
    images = torch.from_numpy(d.images[idx].astype(np.float32) / 16.0)[:, None]
    return images, d.target[idx]


def _reshape(images: Tensor, info: DatasetInfo, size: int | None, channels: int | None) -> tuple[Tensor, DatasetInfo]:
    if channels is not None and channels != info.channels:
        if info.channels != 1 or channels != 3:
            raise ValueError(f"channels: only gray → 3 channels is supported; {info.name} has {info.channels}")
        images = images.expand(-1, 3, -1, -1).contiguous()
        info = DatasetInfo(info.name, info.num_classes, 3, info.size, info.mean * 3, info.std * 3, info.classes)
    if size is not None and size != info.size:
        dtype = images.dtype
        images = F.interpolate(to_float(images), size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < info.size).clamp_(0, 1)
        if dtype == torch.uint8:
            images = (images * 255).round_().to(torch.uint8)
        info = DatasetInfo(info.name, info.num_classes, info.channels, size, info.mean, info.std, info.classes)
    return images, info


class TensorBatches:
    """Batches of an in-memory dataset by slicing, without per-sample collation.

    Reshuffled each epoch from ``seed`` when ``shuffle`` is set, so runs are
    reproducible."""

    def __init__(self, dataset: TensorImageDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False) -> None:
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            if self.drop_last and stop - start < self.batch_size:
                break
            index = order[start:stop] if order is not None else slice(start, stop)
            yield self.dataset.batch(index)


def make_loader(dataset: Dataset, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False):  # noqa: ANN201
    """Batches of ``(x, y)``; in-memory datasets are sliced, others use a DataLoader."""
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if isinstance(dataset, TensorImageDataset):
        return TensorBatches(dataset, batch_size, shuffle, seed, drop_last)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=num_workers,
                      drop_last=drop_last)


def load_tensors(dataset: Dataset, *, workers: int = 0, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Every (image, label) of ``dataset`` as two CPU tensors: an in-memory
    dataset's own, a streamed one's (an ImageFolder) decoded through a
    DataLoader of ``workers`` processes. For the evaluations that index their
    images (curves, transfer, a study's): they hold N·C·H·W floats (5000
    ImageNet images at 224 px: 3 GB), so give them a limit."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.batch(slice(0, len(dataset)))
    if len(dataset) == 0:
        raise ValueError("the dataset holds no images")
    xs, ys = [], []
    for x, y in make_loader(dataset, batch_size, num_workers=workers):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    x, y = torch.cat(xs), torch.cat(ys)
    _logger.info("%d test images held in memory (%.2g GB)", len(y), x.numel() * x.element_size() / 1e9)
    return x, y


def dataset_info(dataset: Dataset) -> DatasetInfo:
    info = getattr(dataset, "info", None)
    if info is None:
        raise ValueError("dataset carries no DatasetInfo; build it with robustlab.data.load_dataset")
    return info
