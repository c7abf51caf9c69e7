"""Per-sample and aggregate classification metrics."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from robustlab.attacks.base import check_logits
from robustlab.nn.state import inference_state


def batch_device(models: Iterable[nn.Module], device: str | torch.device | None) -> torch.device:
    """Where the batches go: ``device``, else the models' own (CPU for models
    without parameters). A model on another device is refused, not moved: the
    caller's models stay as they were found (device and mode)."""
    found = {p.device for m in models for p in m.parameters()}
    if device is None:
        if len(found) > 1:
            raise ValueError(f"device: the models are on {sorted(map(str, found))}; move them to one device or "
                             "pass device=")
        return found.pop() if found else torch.device("cpu")
    target = torch.device(device)
    elsewhere = sorted(str(d) for d in found if d.type != target.type
                       or (target.index is not None and d.index not in (None, target.index)))
    if elsewhere:
        raise ValueError(f"device={str(device)!r} but a model is on {', '.join(elsewhere)}; move it first "
                         f"(model.to({str(device)!r})): robustlab does not move a caller's model")
    return target


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
