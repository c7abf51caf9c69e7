"""Temporary changes of a module tree's state that are always undone."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def inference_state(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (BN uses running statistics and updates none),
    then put every module back in the mode it was found in — module by module,
    since ``model.train(flag)`` would overwrite a mixed train/eval state."""
    # Only modules in train mode are switched and switched back: setting an
    # attribute on an nn.Module is slow enough to show in a GPU attack's latency.
    switched = [m for m in model.modules() if m.training]
    for m in switched:
        m.training = False
    try:
        yield
    finally:
        for m in switched:
            m.training = True


@contextlib.contextmanager
def batch_stats_state(model: nn.Module) -> Iterator[None]:
    """Keep every module's mode, but let batch norms in train mode normalize with
    the batch's own statistics *without* updating their running statistics.

    The attacker then sees the network exactly as the optimizer step will,
    and the running statistics only absorb the images the network is trained
    on. It is the ``bn_stats="batch"`` option of the training recipes; their
    default, like FAIR's and SAT's releases, attacks in testing mode instead
    (:func:`inference_state`)."""
    switched = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m in switched:
        m.track_running_stats = False  # F.batch_norm then gets no running buffers: batch stats, no update
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True


class Float32IO(nn.Module):
    """A model whose weights are all float64, float16 or bfloat16, fed float32
    images cast to that precision and giving float32 logits: the attacks'
    arithmetic (the ε-ball, steps, losses) stays in float32 whatever precision
    the network computes in."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor) -> Any:
        z = self.model(x.to(self.dtype))
        return z.float() if isinstance(z, Tensor) and z.is_floating_point() else z


def float32_io(model: nn.Module) -> nn.Module:
    """``model``, wrapped in :class:`Float32IO` when its floating-point weights
    and buffers share one precision other than float32 (a mixed model is left
    as it is: its own forward decides)."""
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    if len(dtypes) != 1 or dtypes == {torch.float32}:
        return model
    return Float32IO(model, dtypes.pop())
