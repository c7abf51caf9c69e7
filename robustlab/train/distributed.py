"""Scale-out through ``torchrun`` and DistributedDataParallel — nothing home-made.

``torchrun --nproc_per_node=K -m robustlab train CONFIG.yaml`` starts K
processes with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; :func:`setup`
joins them into one process group (NCCL on GPUs, gloo on CPU). Each process
sees ``batch_size / K`` images of every global batch (the indices a
``DistributedSampler`` gives), DDP averages the gradients, and only rank 0
logs, evaluates and writes checkpoints.

Mixture BN and AdvProp under DDP: each step makes *one* call to the DDP
module, whose forward runs every BN route the recipe uses, so every
parameter, auxiliary BNs included, receives its gradient in the same
backward (no unused-parameter error, no ``find_unused_parameters`` cost).
Running statistics of every route are averaged over the ranks after every
step (:func:`average_running_stats`), so every rank holds the same ones —
when the next step's attack reads them (BN in testing mode), at evaluation,
at export — and, for equal local batches, the running mean is the one a
single process would keep for the global batch. (DDP alone broadcasts rank
0's buffers at the start of each forward, after which each rank's forward
updates its own copy from its local batch: the copies would differ by one
update between steps.) Batch statistics are per process unless ``sync_bn``
turns every route's BN into a ``SyncBatchNorm`` (GPUs only), which makes
each route's batch statistics global.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from robustlab._io import pick_device

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    launched: bool = False  # started by torchrun: a process group exists (even with one process)

    @property
    def enabled(self) -> bool:
        return self.launched


#: True once this process has joined a torchrun process group: the command
#: line then says an error on every rank (it may be this rank's alone), while
#: an error before it (the config's checks, the same on every rank) is said
#: by rank 0 only.
joined = False


def setup(device: str = "auto") -> Dist:
    """Join the process group ``torchrun`` describes (if any) and pick this
    process's device: ``cuda:LOCAL_RANK`` on GPUs. Under torchrun the model is
    wrapped in DDP even with one process, so the code path is the same at
    every scale."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(device=pick_device(device))
    world = int(os.environ["WORLD_SIZE"])
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    global joined
    joined = True
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        _logger.info("process group: backend %s, rank %d of %d on %s", dist.get_backend(), rank, world, dev)
    return Dist(rank=rank, world_size=world, local_rank=local, device=dev, launched=True)


def teardown(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: Dist) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flag(info: Dist, flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. 'a checkpoint exists')."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=info.device if info.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def mean_over_ranks(info: Dist, values: torch.Tensor) -> torch.Tensor:
    """Average a tensor of metrics over all ranks."""
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / info.world_size


def average_running_stats(info: Dist, model: torch.nn.Module) -> None:
    """Replace every BN's running mean and variance (each route's) by their mean over the ranks,
    in one collective."""
    if not info.enabled or info.world_size == 1:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    buffers = [b for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               for b in (m.running_mean, m.running_var) if b is not None]
    if not buffers:
        return
    flat = _flatten_dense_tensors(buffers)
    dist.all_reduce(flat)
    flat /= info.world_size
    for b, mean in zip(buffers, _unflatten_dense_tensors(flat, buffers)):
        b.copy_(mean)
