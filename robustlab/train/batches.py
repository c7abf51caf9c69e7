"""The batches one process trains on, epoch by epoch.

Each epoch's order is a permutation drawn from ``seed + epoch`` — what
``torch.utils.data.DistributedSampler`` draws — so any step of any epoch can
be reproduced without replaying the ones before it (bit-exact resume). With
K processes, rank r takes every K-th index of that order and cuts it into
batches of ``batch_size / K``: the union of the K local batches of step s is
exactly the global batch s of a one-process run.

Two paths, one order:

* **In memory** (``load_dataset``'s tensors, a ``TensorDataset``): batches
  are slices, on the data's device, with no per-sample collation; an
  augmentation runs on the whole batch with a generator seeded from
  (seed, epoch, step).
* **Streamed** (any other map-style ``Dataset``, e.g. an ImageFolder): one
  ``DataLoader`` for the whole run, whose batch sampler hands it the epoch's
  indices — ``workers`` processes, kept alive across epochs, ``prefetch``
  batches ahead each, pinned memory on CUDA. A *keyed* dataset
  (:mod:`robustlab.data.streaming`) receives ``(seed, epoch, index)`` and
  draws its augmentation from it, so neither the worker count nor a resume
  changes a crop. Memory is that of the batches in flight, whatever the
  dataset's size.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, TensorDataset

from robustlab.data.streaming import Augmented, sample_seed

#: Batches each streaming worker keeps ready (DataLoader's prefetch_factor).
PREFETCH = 4


@dataclass
class LoaderSettings:
    """How a streamed dataset is loaded: ``fit``'s ``workers``, or a user's DataLoader's own settings."""

    workers: int = 0
    pin_memory: bool | None = None          # None: on CUDA
    persistent_workers: bool = True
    prefetch: int | None = PREFETCH
    collate_fn: Callable[[list[Any]], Any] | None = None
    worker_init_fn: Callable[[int], None] | None = None
    multiprocessing_context: Any = None


def training_data(data: object) -> tuple[Dataset, LoaderSettings | None, int | None]:
    """(dataset, the DataLoader's settings or None, the DataLoader's batch size or None)
    of a Dataset, a DataLoader or an ``(images, labels)`` pair of tensors."""
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            raise TypeError("data: a DataLoader over an IterableDataset has no length or index; robustlab draws "
                            "its own seeded order (exact resume, DDP) and needs a map-style Dataset")
        from torch.utils.data.dataloader import default_collate

        settings = LoaderSettings(
            workers=data.num_workers, pin_memory=data.pin_memory, persistent_workers=data.persistent_workers,
            prefetch=data.prefetch_factor, collate_fn=None if data.collate_fn is default_collate else data.collate_fn,
            worker_init_fn=data.worker_init_fn, multiprocessing_context=data.multiprocessing_context)
        return data.dataset, settings, data.batch_size
    return as_dataset(data), None, None


def as_dataset(data: object) -> Dataset:
    """A Dataset from a Dataset or an ``(images, labels)`` pair of tensors."""
    if isinstance(data, IterableDataset):
        raise TypeError("data: an IterableDataset has no length or index; robustlab draws its own seeded order "
                        "(exact resume, DDP) and needs a map-style Dataset (__len__ and __getitem__)")
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
            raise ValueError(f"data must be images (N, C, H, W) and labels (N,); got shapes {tuple(x.shape)}, "
                             f"{tuple(y.shape)}")
        return TensorDataset(x, y)
    raise TypeError(f"data must be a torch Dataset, a DataLoader or an (images, labels) tuple; "
                    f"got {type(data).__name__}")


def in_memory(dataset: Dataset) -> bool:
    """Batches of ``dataset`` are slices of tensors it holds."""
    if isinstance(dataset, Augmented):
        return dataset.in_memory
    return isinstance(dataset, TensorDataset) or hasattr(dataset, "batch")


#: In-memory datasets up to this size move to the GPU once, instead of being
#: copied batch by batch from pageable host memory (a sync per step).
DEVICE_DATA_BYTES = 4 * 2**30


def on_device(dataset: Dataset, device: torch.device) -> Dataset:
    """``dataset`` moved to a CUDA ``device`` when it is in memory and small."""
    if device.type != "cuda" or not in_memory(dataset):
        return dataset
    if isinstance(dataset, TensorDataset):
        if sum(t.nbytes for t in dataset.tensors) <= DEVICE_DATA_BYTES:
            return TensorDataset(*(t.to(device) for t in dataset.tensors))
    elif hasattr(dataset, "to") and getattr(dataset, "nbytes", DEVICE_DATA_BYTES + 1) <= DEVICE_DATA_BYTES:
        return dataset.to(device)
    return dataset


class _EpochSampler:
    """The batch sampler of the run's one DataLoader: the batches of the epoch
    :meth:`EpochBatches.epoch` set last (a persistent worker pool outlives epochs)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EpochBatches:
    """Local batches of ``dataset`` for process ``rank`` of ``world``."""

    def __init__(self, dataset: Dataset, batch_size: int, *, rank: int = 0, world: int = 1, seed: int = 0,
                 workers: int = 0, settings: LoaderSettings | None = None,
                 device: torch.device | None = None) -> None:
        if batch_size % world:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes ({world})")
        self.dataset, self.rank, self.world, self.seed = dataset, rank, world, seed
        self.settings = settings or LoaderSettings(workers=workers)
        self.device = device or torch.device("cpu")
        self.local_batch = batch_size // world
        self.steps_per_epoch = len(dataset) // batch_size  # the last partial batch is dropped
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({len(dataset)} images)")
        self.in_memory = in_memory(dataset)
        self.keyed = bool(getattr(dataset, "keyed", False))
        self._sampler = _EpochSampler()
        self._loader: DataLoader | None = None

    def indices(self, epoch: int) -> list[int]:
        sampler = DistributedSampler(self.dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)[: self.steps_per_epoch * self.local_batch]

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The local batches of ``epoch``, from step ``skip`` on."""
        idx = self.indices(epoch)[skip * self.local_batch:]
        b = self.local_batch
        if self.in_memory:
            yield from self._slices(epoch, skip, idx)
            return
        keys = [(self.seed, epoch, i) for i in idx] if self.keyed else idx
        self._sampler.batches = [keys[s: s + b] for s in range(0, len(keys), b)]
        yield from self._streaming_loader()

    def _slices(self, epoch: int, skip: int, idx: list[int]) -> Iterator[tuple[Tensor, Tensor]]:
        # In-memory data: slicing, no collation. The epoch's indices go to the data's
        # device once: a host-to-device copy per batch would stall the GPU queue each step.
        ds, b = self.dataset, self.local_batch
        order = torch.tensor(idx, device=_device(ds))
        for n, s in enumerate(range(0, len(idx), b)):
            sel = order[s: s + b]
            if isinstance(ds, Augmented):
                step = epoch * self.steps_per_epoch + skip + n
                gen = torch.Generator().manual_seed(sample_seed(self.seed, step, self.rank))
                yield ds.batch(sel, gen)
            elif hasattr(ds, "batch"):
                yield ds.batch(sel)
            else:
                yield tuple(t[sel] for t in ds.tensors)[:2]

    def _streaming_loader(self) -> DataLoader:
        if self._loader is None:
            s = self.settings
            workers = s.workers
            pin = self.device.type == "cuda" if s.pin_memory is None else s.pin_memory
            extra: dict[str, Any] = {}
            if workers > 0:
                extra = {"persistent_workers": s.persistent_workers, "prefetch_factor": s.prefetch or PREFETCH,
                         "worker_init_fn": s.worker_init_fn, "multiprocessing_context": s.multiprocessing_context}
            if s.collate_fn is not None:
                extra["collate_fn"] = s.collate_fn
            # Its own generator: drawing the workers' base seed must not advance the global
            # RNG (which the checkpoint records), or dropout would differ after a resume.
            self._loader = DataLoader(self.dataset, batch_sampler=self._sampler, num_workers=workers,
                                      pin_memory=pin, generator=torch.Generator().manual_seed(self.seed), **extra)
        return self._loader

    def first(self) -> tuple[Tensor, Tensor]:
        """One batch of epoch 0, to check before any work: a whole batch in
        memory, one sample loaded here when streamed (no workers started)."""
        if self.in_memory:
            return next(self.epoch(0))
        from torch.utils.data.dataloader import default_collate

        i = self.indices(0)[0]
        sample = self.dataset[(self.seed, 0, i) if self.keyed else i]
        return (self.settings.collate_fn or default_collate)([sample])


def to_pixels(x: Tensor) -> Tensor:
    """A batch as float [0, 1] pixels: uint8 images (streamed ImageFolder data) are scaled
    on the device they are on, after the 4×-smaller copy."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def _device(dataset: Dataset) -> torch.device:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0].device
    return getattr(dataset, "device", torch.device("cpu"))
