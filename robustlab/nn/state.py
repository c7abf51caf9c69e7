"""Temporary changes of a module tree's state that are always undone."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


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
