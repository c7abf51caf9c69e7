"""A plain supervised training loop.

Enough to give the demo, the tests and the benchmarks a trained, non-robust
model in seconds; the thesis's training recipes come with the training engine.
"""
from __future__ import annotations

import logging
from collections.abc import Sized

import torch
import torch.nn.functional as F
from torch import nn

_logger = logging.getLogger(__name__)

MIN_CYCLE_STEPS = 8  # the fewest steps a one-cycle schedule is run over: two of warm-up, six of annealing


def fit_classifier(
    model: nn.Module,
    loader: Sized,
    *,
    epochs: int = 1,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    seed: int | None = 0,
) -> list[float]:
    """Train with Adam and a one-cycle learning rate (peak ``lr``) on
    cross-entropy; returns the mean loss of each epoch. ``loader`` yields
    (x, y) batches and has a length. Under :data:`MIN_CYCLE_STEPS` steps in
    all, no cycle fits (a quarter of the steps to warm up, the rest to
    anneal): the rate stays at ``lr``."""
    if seed is not None:
        torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = epochs * len(loader)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.25)
             if total_steps >= MIN_CYCLE_STEPS else None)  # OneCycleLR divides by zero at 4 steps
    history = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        history.append(total / max(count, 1))
        _logger.info("epoch %d: loss %.4f", epoch + 1, history[-1])
    opt.zero_grad(set_to_none=True)
    model.eval()
    return history
