"""Training loops for the dense models of thesis ch. 2 on
:func:`robustlab.data.make_scenes` scenes: a segmenter on per-pixel
cross-entropy, a torchvision detector on its own loss dict. Both are plain,
seeded loops (Adam, one-cycle learning rate) that give the DAG experiments
(§2.3.3) a trained FCN and Faster R-CNN in a few CPU minutes.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._progress import progress
from robustlab.data.scenes import IGNORE_INDEX, Scenes

_logger = logging.getLogger(__name__)


class DenseFit(NamedTuple):
    """The trained model (in eval mode) and the mean training loss of each epoch."""

    model: nn.Module
    history: list[float]


def train_segmenter(model: nn.Module, scenes: Scenes, *, epochs: int = 10, batch_size: int = 32, lr: float = 1e-2,
                    weight_decay: float = 1e-4, seed: int = 0, device: str | torch.device = "cpu") -> DenseFit:
    """Per-pixel cross-entropy (``IGNORE_INDEX`` pixels left out) on
    ``(scenes.images, scenes.masks)``; the model returns logits (N, K, H, W)
    or ``{"out": logits}``."""

    def loss_fn(index: Tensor) -> Tensor:
        out = model(scenes.images[index].to(device))
        out = out["out"] if isinstance(out, dict) else out
        return F.cross_entropy(out, scenes.masks[index].to(device), ignore_index=IGNORE_INDEX)

    return _fit(model, len(scenes), loss_fn, epochs, batch_size, lr, weight_decay, seed, device, max_norm=None)


def train_detector(model: nn.Module, scenes: Scenes, *, epochs: int = 10, batch_size: int = 16, lr: float = 2e-3,
                   weight_decay: float = 1e-4, seed: int = 0, device: str | torch.device = "cpu",
                   max_norm: float | None = 10.0) -> DenseFit:
    """The sum of a torchvision detector's losses (RPN objectness and box
    regression, RoI classification and box regression) on the scenes' boxes
    and labels; gradients clipped to ``max_norm`` (the early RPN losses spike)."""

    def loss_fn(index: Tensor) -> Tensor:
        images = list(scenes.images[index].to(device))
        targets = [{k: v.to(device) for k, v in scenes.target(int(i)).items()} for i in index]
        return sum(model(images, targets).values())

    return _fit(model, len(scenes), loss_fn, epochs, batch_size, lr, weight_decay, seed, device, max_norm)


def _fit(model: nn.Module, n: int, loss_fn: Callable[[Tensor], Tensor], epochs: int, batch_size: int, lr: float,
         weight_decay: float, seed: int, device: str | torch.device, max_norm: float | None) -> DenseFit:
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr!r}")
    torch.manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    steps = -(-n // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.2)
    history = []
    bar = progress(epochs * steps, f"train {type(model).__name__}", "step")
    for epoch in range(epochs):
        order = torch.randperm(n, generator=order_gen)
        total = 0.0
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            loss = loss_fn(index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(index)
            bar.update(1)
        history.append(total / n)
        bar.set_postfix(loss=history[-1])
        _logger.info("epoch %d: loss %.4f", epoch + 1, history[-1])
    bar.close()
    opt.zero_grad(set_to_none=True)
    return DenseFit(model.eval(), history)
