"""Attack objectives: ``loss_fn(logits, y) -> per-sample tensor`` to maximize.

Picked by name (``ce``, ``cw``); targeted mode is an adapter that negates the
loss towards the target class, so every objective works both ways.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Eq. (3.1): −1_y · log softmax(l(X)), per sample (N,)."""
    return F.cross_entropy(logits, y, reduction="none")


def other_max(logits: Tensor, y: Tensor) -> Tensor:
    """max_{i≠y} z_i per sample, the class y masked with −inf: ties and negative
    logits are handled (the torchattacks CW bug, its issue #184), and unlike
    z − 1e4·onehot it cannot pick y back when the logits are large (×1e4)."""
    return logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def cw_margin(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini–Wagner margin max_{i≠y} z_i − z_y (positive once misclassified)."""
    return other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


_LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "cw": cw_margin}


def loss_names() -> list[str]:
    return sorted(_LOSSES)


def get_loss(name: str | LossFn) -> LossFn:
    """A loss by name (``ce``, ``cw``) or a callable passed through."""
    if callable(name):
        return name
    key = str(name).lower()
    if key not in _LOSSES:
        raise ValueError(f"loss must be one of {loss_names()} or a callable; got {name!r}")
    return _LOSSES[key]


def targeted(loss: LossFn) -> LossFn:
    """Turn 'move away from y' into 'move towards target t': maximize −L(z, t)."""

    def towards(logits: Tensor, target: Tensor) -> Tensor:
        return -loss(logits, target)

    towards.__name__ = f"targeted_{getattr(loss, '__name__', 'loss')}"
    return towards


def goal_met(logits: Tensor, labels: Tensor, is_targeted: bool) -> Tensor:
    """Per-sample success: prediction equals the target, or differs from the label."""
    pred = logits.argmax(dim=1)
    return pred == labels if is_targeted else pred != labels


def random_other_class(y: Tensor, num_classes: int, generator: torch.Generator | None) -> Tensor:
    """A wrong class drawn uniformly per sample: (y + U{1..K−1}) mod K (§4.6, §6.3)."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
    return (y + shift) % num_classes
