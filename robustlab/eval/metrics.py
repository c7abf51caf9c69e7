"""Per-sample and aggregate classification metrics."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from robustlab.attacks.base import check_logits
from robustlab.nn.state import inference_state


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Top-1 predictions (N,) of ``model`` in eval mode; restores every module's mode."""
    with inference_state(model):
        return torch.cat([check_logits(model(x[i: i + batch_size])).argmax(1) for i in range(0, len(x), batch_size)])


def misclassified(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(N,) bool: the model's prediction differs from ``y``."""
    return predict(model, x) != y


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on (x, y); empty inputs are refused (an
    accuracy of nothing is undefined, not 0)."""
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"accuracy needs at least one sample: x must be (N, C, H, W) and y (N,) with N >= 1; "
                         f"got x {tuple(x.shape)}, y {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"accuracy: x and y must hold the same number of samples; got x {tuple(x.shape)}, "
                         f"y {tuple(y.shape)}")
    return float((predict(model, x, batch_size) == y).float().mean())


def pooled_batches(loader: Iterable[tuple[Tensor, Tensor]], size: float | None
                   ) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) batches of ``loader`` concatenated into pools of at least ``size``
    images (the last may be smaller); ``None`` keeps the loader's batches,
    ``math.inf`` makes one pool of everything."""
    if size is None:
        yield from loader
        return
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    held = 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        held += len(y)
        if held >= size:
            yield torch.cat(xs), torch.cat(ys)
            xs, ys, held = [], [], 0
    if xs:
        yield torch.cat(xs), torch.cat(ys)
