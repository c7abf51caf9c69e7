"""Top-1 accuracy on a shifted test set (Table 7.1: Stylized-ImageNet,
ImageNet-A), streamed from its folder, optionally over a subset of the
classes' logits (ImageNet-A's 200 of ImageNet's 1000)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from robustlab.nn.state import inference_state


def restrict_logits(logits: Tensor, classes: Sequence[int]) -> Tensor:
    """``logits: (N, K)`` with every class outside ``classes`` set to −∞, so
    the argmax is taken over ``classes`` alone (the indices stay the model's)."""
    keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    index = torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= logits.shape[1]:
        raise ValueError(f"classes must be a non-empty list of indices in 0..{logits.shape[1] - 1}; got "
                         f"{list(classes)[:5]}")
    keep[index] = True
    return logits.masked_fill(~keep, float("-inf"))


@torch.no_grad()
def folder_accuracy(model: nn.Module, dataset: Dataset, *, classes: Sequence[int] | None = None,
                    batch_size: int = 250, device: torch.device | str | None = None, workers: int = 0) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (([0, 1] image, label) pairs,
    streamed ``batch_size`` at a time, never held whole); with ``classes``
    the prediction is the argmax over those classes' logits only
    (:func:`restrict_logits`). The model runs in eval mode and gets its modes back."""
    if len(dataset) == 0:
        raise ValueError("dataset is empty: an accuracy of nothing is undefined")
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else
                                                              torch.device("cpu"))
    right = seen = 0
    with inference_state(model):
        for x, y in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
            logits = model(x.to(device))
            if classes is not None:
                logits = restrict_logits(logits, classes)
            right += int((logits.argmax(1) == y.to(device)).sum())
            seen += len(y)
    return right / seen
