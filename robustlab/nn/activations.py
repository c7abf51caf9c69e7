"""Activation functions of chapter 5 (smooth adversarial training).

This module starts with the piece the attack core needs (§5.3.2): ReLU in the
forward pass with the parametric-softplus derivative (eq. 5.3) in the backward
pass, usable for the attacker alone without touching the model.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from robustlab._checks import check_number

#: §5.3.2: "To better approximate the curve of ReLU, we empirically set α = 10."
PSOFTPLUS_ALPHA = 10.0


class _ReLUSoftplusBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # Eq. (5.3): d/dx (1/α)·log(1 + exp(αx)) = 1 / (1 + exp(−αx)).
        return grad * torch.sigmoid(ctx.alpha * x), None


class _ReLUSoftplusBackwardInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x.clone())
        ctx.alpha = alpha
        ctx.mark_dirty(x)
        return x.clamp_min_(0)

    backward = _ReLUSoftplusBackward.backward


def relu_softplus_backward(x: Tensor, alpha: float = PSOFTPLUS_ALPHA, inplace: bool = False) -> Tensor:
    """ReLU forward, parametric-softplus derivative σ(αx) backward (eq. 5.3, Table 5.1)."""
    if inplace:
        return _ReLUSoftplusBackwardInplace.apply(x, alpha)
    return _ReLUSoftplusBackward.apply(x, alpha)


class ReLUSoftplusBackward(nn.Module):
    """Module form of :func:`relu_softplus_backward`."""

    def __init__(self, alpha: float = PSOFTPLUS_ALPHA) -> None:
        super().__init__()
        self.alpha = check_number(alpha, "alpha", low=0.0, low_open=True)

    def forward(self, x: Tensor) -> Tensor:
        return relu_softplus_backward(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


_RELU_FUNCS = {F.relu, torch.relu, Tensor.relu}
_RELU_INPLACE_FUNCS = {F.relu_, torch.relu_, Tensor.relu_}


class _SmoothReLUBackwardMode(TorchFunctionMode):
    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if args and isinstance(args[0], Tensor) and args[0].requires_grad:
            if func in _RELU_FUNCS:
                return relu_softplus_backward(args[0], self.alpha, inplace=bool(kwargs.get("inplace", False)))
            if func in _RELU_INPLACE_FUNCS:
                return relu_softplus_backward(args[0], self.alpha, inplace=True)
        return func(*args, **kwargs)


@contextlib.contextmanager
def smooth_relu_backward(alpha: float = PSOFTPLUS_ALPHA) -> Iterator[None]:
    """Within the block, every ReLU of any model (``nn.ReLU`` modules and
    ``F.relu``/``torch.relu`` calls alike) keeps its forward output but
    back-propagates σ(αx) (§5.3.2). The model itself is not modified, so the
    attacker can use the smooth gradient while the optimizer does not."""
    alpha = check_number(alpha, "alpha", low=0.0, low_open=True)
    with _SmoothReLUBackwardMode(alpha):
        yield
