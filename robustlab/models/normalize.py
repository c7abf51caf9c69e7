"""Input normalization as the model's first layer.

Attacks work in pixel space [0, 1]; mean/std standardization is part of the
model, so ε is always stated in pixels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """(x − mean) / std per channel; x: (N, C, H, W) in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.shape != std_t.shape:
            raise ValueError(f"mean and std must have the same length; got {mean_t.numel()} and {std_t.numel()}")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be > 0; got {std_t.tolist()}")
        if bool((mean_t.abs() > 1).any() | (std_t > 1).any()):  # 0-255 statistics: every input far off its scale
            raise ValueError(f"mean and std are statistics of [0, 1] pixels (e.g. 0.485 and 0.229); got "
                             f"{mean_t.tolist()} and {std_t.tolist()}: divide 0-255 values by 255")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        c = self.mean.shape[1]
        if c != 1 and x.dim() == 4 and x.shape[1] != c:  # broadcasting would fail deep inside, or pass silently
            raise ValueError(f"Normalize has a mean and std of {c} channels but the images have {x.shape[1]} "
                             f"(shape {tuple(x.shape)}); give one value per channel")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}"


class NormalizedModel(nn.Module):
    """``net(Normalize(x))``: a classifier that takes [0, 1] pixels."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))
