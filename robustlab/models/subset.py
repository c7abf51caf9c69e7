"""A classifier scored over some of its classes (model surgery: the wrapped
model is left as it is).

An ImageNet-1k model on a folder of fewer ImageNet classes (Imagenette,
ImageNet-100, ImageNet-A's 200) is scored over the logits of those classes
only: the argmax is taken among them, and an attack moves the image towards
another of them. This is how the thesis scores its 1000-class models on
ImageNet-A (Table 7.1; :func:`robustlab.eval.corruption.imagenet_a_logits`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ClassSubset(nn.Module):
    """``model(x)[:, indices]``: output ``j`` is the model's output ``indices[j]``."""

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        index = torch.as_tensor(list(indices), dtype=torch.long)
        if index.dim() != 1 or index.numel() == 0 or bool((index < 0).any()):
            raise ValueError(f"indices must be a non-empty list of output indices >= 0; got {list(indices)}")
        if index.unique().numel() != index.numel():
            raise ValueError(f"indices must not repeat an output (two classes would tie); got {list(indices)}")
        self.model = model
        self.register_buffer("indices", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        if logits.shape[-1] <= int(self.indices.max()):
            raise ValueError(f"ClassSubset keeps output {int(self.indices.max())} but the model gives "
                             f"{logits.shape[-1]} outputs")
        return logits.index_select(-1, self.indices)

    def extra_repr(self) -> str:
        return f"{self.indices.numel()} of the model's outputs"


def class_subset(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """``model`` scored over the outputs ``indices`` only, in that order (the
    classes of the data, as indices into the model's classes)."""
    return ClassSubset(model, indices)
