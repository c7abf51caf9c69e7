"""Datasets whose random transforms are a function of (seed, epoch, index).

A DataLoader worker draws from its own RNG, seeded once per worker, so which
crop an image gets depends on which worker loads it and what that worker
loaded before: a resumed run, or one with another worker count, augments
differently. Here every sample's draws come from a seed mixed from
``(seed, epoch, index)`` instead, so an image gets the same crop in epoch e
whatever the workers, the batch composition or an interruption.

The trainer (:class:`robustlab.train.batches.EpochBatches`) asks a *keyed*
dataset for ``dataset[(seed, epoch, index)]``; a plain integer index means
``(0, 0, index)``, so the dataset still works with any DataLoader.

    train = rl.data.augmented(rl.data.load_dataset("cifar10", "train"), "flip_crop")
    rl.train.fit(model, train, recipe, workers=4)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from robustlab.data.augment import Augment, create_augment

_MASK = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's draws: SplitMix64 over the three numbers
    (neighbouring indices get unrelated streams)."""
    z = 0
    for v in (seed, epoch, index):
        z = (z ^ (int(v) & _MASK)) + 0x9E3779B97F4A7C15 & _MASK
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK
        z ^= z >> 31
    return z >> 1


def split_key(key: int | tuple[int, int, int]) -> tuple[int, int, int]:
    """``(seed, epoch, index)`` of a dataset key (a plain index is ``(0, 0, index)``)."""
    if isinstance(key, tuple):
        if len(key) != 3:
            raise IndexError(f"a keyed dataset takes an index or (seed, epoch, index); got {key!r}")
        return int(key[0]), int(key[1]), int(key[2])
    return 0, 0, int(key)


class SeededTransform(Dataset):
    """``transform(sample image)`` with torch's RNG seeded from (seed, epoch, index).

    Args:
        base: a map-style dataset of ``(image, label)``.
        transform: a callable on one image; its randomness must come from
            torch's global RNG (torchvision's transforms do), which is forked
            for the call, so the caller's RNG stream is untouched.
        indices: the samples of ``base`` this dataset shows (a subset), or None.
        info: the :class:`~robustlab.data.info.DatasetInfo` to carry.
    """

    keyed = True

    def __init__(self, base: Dataset, transform: Callable[[Any], Any], *, indices: Sequence[int] | None = None,
                 info: Any = None) -> None:
        self.base, self.transform = base, transform
        self.indices = list(indices) if indices is not None else None
        self.info = info if info is not None else getattr(base, "info", None)

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[Any, Any]:
        seed, epoch, i = split_key(key)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for a dataset of {len(self)} samples")
        x, y = self.base[self.indices[i] if self.indices is not None else i]
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also seed every accelerator's
            # (and build a stack trace for each), 0.3 ms per image in a worker.
            torch.default_generator.manual_seed(sample_seed(seed, epoch, i))
            return self.transform(x), y


class _PerImage:
    """A batch augmentation applied to one (C, H, W) image (picklable, for workers)."""

    def __init__(self, augment: Augment) -> None:
        self.augment = augment

    def __call__(self, x: Tensor) -> Tensor:
        return self.augment(x[None], None)[0]


class Augmented(SeededTransform):
    """A tensor dataset with a :mod:`robustlab.data.augment` augmentation.

    Streamed (``dataset[(seed, epoch, index)]``, e.g. in DataLoader workers),
    each image is augmented with draws from its key. In memory (a base with
    ``batch``, such as ``load_dataset``'s tensors), the trainer augments whole
    batches on the data's device instead, with a generator seeded from
    (seed, epoch, step): also reproducible, without a per-image loop.
    """

    def __init__(self, base: Dataset, augment: str | Augment) -> None:
        self.augment = create_augment(augment) if isinstance(augment, str) or augment is None else augment
        if not callable(self.augment):
            raise TypeError(f"augment must be a name or a callable (images, generator) -> images; got {augment!r}")
        super().__init__(base, _PerImage(self.augment))

    @property
    def in_memory(self) -> bool:
        return hasattr(self.base, "batch")

    def batch(self, index: Tensor | slice, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        x, y = self.base.batch(index)
        return self.augment(x, generator), y

    @property
    def nbytes(self) -> int:
        return getattr(self.base, "nbytes", 0)

    @property
    def device(self) -> torch.device:
        return getattr(self.base, "device", torch.device("cpu"))

    def to(self, device: torch.device | str) -> Augmented:
        return Augmented(self.base.to(device), self.augment)


def augmented(dataset: Dataset, augment: str | Augment) -> Dataset:
    """``dataset`` with a training augmentation (``none``, ``flip_crop``,
    ``random_resized_crop``, ``autoaugment``, or a callable
    ``f(images, generator)``) drawn per (seed, epoch, index); ``none`` returns
    ``dataset`` itself. For an ImageFolder, pass ``augment=`` to
    ``load_dataset`` instead: it crops the decoded full-size image."""
    if isinstance(augment, str) and create_augment(augment) is create_augment("none"):
        return dataset
    return Augmented(dataset, augment)
