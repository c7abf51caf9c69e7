"""The batches one process trains on, epoch by epoch.

Each epoch's order is a permutation drawn from ``seed + epoch`` — what
``torch.utils.data.DistributedSampler`` draws — so any step of any epoch can
be reproduced without replaying the ones before it (bit-exact resume). With
K processes, rank r takes every K-th index of that order and cuts it into
batches of ``batch_size / K``: the union of the K local batches of step s is
exactly the global batch s of a one-process run.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset


def as_dataset(data: object) -> Dataset:
    """A Dataset from a Dataset or an ``(images, labels)`` pair of tensors."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
            raise ValueError(f"data must be images (N, C, H, W) and labels (N,); got shapes {tuple(x.shape)}, "
                             f"{tuple(y.shape)}")
        return TensorDataset(x, y)
    raise TypeError(f"data must be a torch Dataset or an (images, labels) tuple; got {type(data).__name__}")


#: In-memory datasets up to this size move to the GPU once, instead of being
#: copied batch by batch from pageable host memory (a sync per step).
DEVICE_DATA_BYTES = 4 * 2**30


def on_device(dataset: Dataset, device: torch.device) -> Dataset:
    """``dataset`` moved to a CUDA ``device`` when it is in memory and small."""
    if device.type != "cuda":
        return dataset
    if isinstance(dataset, TensorDataset):
        if sum(t.nbytes for t in dataset.tensors) <= DEVICE_DATA_BYTES:
            return TensorDataset(*(t.to(device) for t in dataset.tensors))
    elif hasattr(dataset, "to") and getattr(dataset, "nbytes", DEVICE_DATA_BYTES + 1) <= DEVICE_DATA_BYTES:
        return dataset.to(device)
    return dataset


class EpochBatches:
    """Local batches of ``dataset`` for process ``rank`` of ``world``."""

    def __init__(self, dataset: Dataset, batch_size: int, *, rank: int = 0, world: int = 1, seed: int = 0,
                 workers: int = 0) -> None:
        if batch_size % world:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes ({world})")
        self.dataset, self.rank, self.world, self.seed, self.workers = dataset, rank, world, seed, workers
        self.local_batch = batch_size // world
        self.steps_per_epoch = len(dataset) // batch_size  # the last partial batch is dropped
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({len(dataset)} images)")

    def indices(self, epoch: int) -> list[int]:
        sampler = DistributedSampler(self.dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)[: self.steps_per_epoch * self.local_batch]

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The local batches of ``epoch``, from step ``skip`` on."""
        idx = self.indices(epoch)[skip * self.local_batch:]
        b = self.local_batch
        if hasattr(self.dataset, "batch") or isinstance(self.dataset, TensorDataset):
            # In-memory data: slicing, no collation. The epoch's indices go to the data's
            # device once: a host-to-device copy per batch would stall the GPU queue each step.
            order = torch.tensor(idx, device=_device(self.dataset))
            for s in range(0, len(idx), b):
                sel = order[s: s + b]
                if hasattr(self.dataset, "batch"):
                    yield self.dataset.batch(sel)
                else:
                    yield tuple(t[sel] for t in self.dataset.tensors)[:2]
        else:
            batches = [idx[s: s + b] for s in range(0, len(idx), b)]
            yield from DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers)


def _device(dataset: Dataset) -> torch.device:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0].device
    return getattr(dataset, "device", torch.device("cpu"))
