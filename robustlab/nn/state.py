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
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
