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


def output_index(indices: Sequence[int], outputs: int | None = None) -> Tensor:
    """``indices`` as a long tensor of distinct outputs (below ``outputs``
    when given), or a ValueError saying what they must be."""
    index = torch.as_tensor(list(indices), dtype=torch.long)
    if index.dim() != 1 or index.numel() == 0 or bool((index < 0).any()):
        raise ValueError(f"indices must be a non-empty list of output indices >= 0; got {list(indices)}")
    if index.unique().numel() != index.numel():
        raise ValueError(f"indices must not repeat an output (two classes would tie); got {list(indices)}")
    if outputs is not None and int(index.max()) >= outputs:
        raise ValueError(f"indices must be outputs below {outputs}; got {list(indices)}")
    return index


def last_linear(net: nn.Module, outputs: int | None) -> tuple[str, nn.Linear] | None:
    """(name, module) of ``net``'s last ``nn.Linear`` (its classifier: ``fc``
    of a ResNet, ``classifier[-1]`` of VGG/EfficientNet, ``heads.head`` of
    ViT), or None when it has none or it does not give ``outputs`` outputs."""
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears and linears[-1][1].out_features == outputs else None


def swap_module(net: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where ``net``'s submodule ``name`` is."""
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent), attr, new)


class ClassSubset(nn.Module):
    """``model(x)[:, indices]``: output ``j`` is the model's output ``indices[j]``."""

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        index = output_index(indices)
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


def narrow_classifier(model: nn.Module, indices: Sequence[int], outputs: int) -> str:
    """Replace ``model``'s classifier, its last ``nn.Linear`` (of ``outputs``
    outputs), by one that keeps only the rows ``indices`` of its weight and
    bias, in that order: ``model(x)`` then equals the old ``model(x)[:,
    indices]``, now as a classifier of ``len(indices)`` classes to fine-tune
    (an ImageNet-1k network on Imagenette starts from its own tench and
    English-springer rows, not from a freshly initialized head). Returns the
    classifier's name.

    Raises:
        ValueError: no last ``nn.Linear`` of ``outputs`` outputs (a
            convolutional classifier), or ``indices`` out of its range.
    """
    found = last_linear(model, outputs)
    if found is None:
        raise ValueError(f"cannot find the classifier to narrow: the model's last nn.Linear does not output its "
                         f"{outputs} classes")
    index = output_index(indices, outputs)
    name, old = found
    new = nn.Linear(old.in_features, index.numel(), bias=old.bias is not None, device=old.weight.device,
                    dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight.index_select(0, index.to(old.weight.device)))
        if old.bias is not None:
            new.bias.copy_(old.bias.index_select(0, index.to(old.bias.device)))
    swap_module(model, name, new)
    return name
