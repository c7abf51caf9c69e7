"""Temporary changes of a module tree's state that are always undone."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
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
