"""Learning-rate schedules as pure functions of the step.

A schedule holds no state: the learning rate of step ``s`` is computed from
``s`` alone, so a resumed run follows the uninterrupted one exactly.

* ``step``: divide by 10 (``gamma``) at given epochs — §4.5: 110 epochs,
  ÷10 at 35, 70, 95; §5.3.1: 100 epochs, ÷10 at 30, 60, 90.
* ``cosine``: half a cosine from the base rate to 0.
* ``exponential``: ×``gamma`` every ``decay_every`` epochs — §7.5.1's
  EfficientNet recipe, 0.97 every 2.4 epochs.
* ``constant``.

Warm-up (Goyal et al., which §4.5 follows for its 4096-image batches): the
rate rises linearly from 0 over ``warmup_epochs``. The linear scaling rule
sets the base rate to ``lr × batch / base_batch`` (§4.5's release: 0.1 per
256 images).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from robustlab._checks import check_number

SCHEDULES = ("step", "cosine", "exponential", "constant")


def scaled_lr(lr: float, batch_size: int, base_batch: int | None) -> float:
    """The linear scaling rule: ``lr × batch_size / base_batch`` (``lr`` if no base)."""
    return lr if base_batch is None else lr * batch_size / base_batch


@dataclass(frozen=True)
class LRSchedule:
    """``lr_at(step)`` for a run of ``epochs × steps_per_epoch`` steps."""

    base_lr: float
    steps_per_epoch: int
    epochs: int
    kind: str = "step"
    milestones: Sequence[float] = ()
    gamma: float = 0.1
    decay_every: float = 2.4
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}; got {self.kind!r}")
        check_number(self.base_lr, "lr", low=0.0, low_open=True)
        check_number(self.gamma, "gamma", low=0.0, low_open=True)
        check_number(self.warmup_epochs, "warmup_epochs", low=0.0)
        check_number(self.decay_every, "decay_every", low=0.0, low_open=True)
        for m in self.milestones:
            check_number(m, "milestones", low=0.0)
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing epochs; got {list(self.milestones)}")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        epoch = step / max(self.steps_per_epoch, 1)  # fractional epoch at the start of the step
        if self.kind == "step":
            lr = self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        elif self.kind == "cosine":
            total = max(self.epochs - self.warmup_epochs, 1e-12)
            t = min(max(epoch - self.warmup_epochs, 0.0) / total, 1.0)
            lr = self.base_lr * 0.5 * (1 + math.cos(math.pi * t))
        elif self.kind == "exponential":
            lr = self.base_lr * self.gamma ** math.floor(epoch / self.decay_every)
        else:
            lr = self.base_lr
        if self.warmup_epochs and epoch < self.warmup_epochs:
            lr *= (step + 1) / (self.warmup_epochs * self.steps_per_epoch)
        return lr
