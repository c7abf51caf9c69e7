"""Activation functions of chapter 5 (smooth adversarial training, SAT).

ReLU and its smooth replacements of §5.4.1 (softplus, parametric softplus,
SiLU, GELU, ELU, CELU) and §5.4.2 (SmoothReLU, eq. 5.4), plus the control of
§5.3.2: ReLU in the forward pass with the parametric-softplus derivative
(eq. 5.3) in the backward pass. The latter comes in two forms:

* the module :class:`ReLUSoftplusBackward` (``swap_activation(model,
  "relu_softplus_backward")``): smooth gradients for everyone, always;
* the context :func:`smooth_relu_backward`: smooth gradients for whatever runs
  inside the block, leaving the model untouched. Table 5.1's rows are the
  attacker alone (``attacks.create(..., smooth_grad=10)``, which uses this
  context), the optimizer alone (the training step's forward and backward in
  the context), or both.

A registry by name serves the CLI, configs and :func:`swap_activation`.
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


#: §5.4.2: "the learnable parameter α needs to be initialized at a large enough
#: value (e.g., 400 in our experiments)".
SMOOTHRELU_INIT = 400.0


class ParametricSoftplus(nn.Module):
    """Eq. (5.2): f(α, x) = (1/α)·log(1 + exp(αx)); α = 10 (§5.3.2)."""

    def __init__(self, alpha: float = PSOFTPLUS_ALPHA) -> None:
        super().__init__()
        self.alpha = check_number(alpha, "alpha", low=0.0, low_open=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x, beta=self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def smooth_relu(x: Tensor, alpha: Tensor) -> Tensor:
    """Eq. (5.4): x − log(αx + 1)/α for x ≥ 0, 0 otherwise; C¹ for every α > 0
    (derivative αx/(1 + αx), eq. 5.5) and ReLU in the limit α → ∞."""
    pos = x.clamp_min(0)
    return pos - torch.log1p(alpha * pos) / alpha


class SmoothReLU(nn.Module):
    """SmoothReLU (§5.4.2) with one learnable α shared by all channels.

    α is kept positive by parametrizing α = a² (the SAT release's choice) and
    starts at 400 (§5.4.2); a floor of 1e-6 keeps 1/α finite."""

    def __init__(self, alpha: float = SMOOTHRELU_INIT) -> None:
        super().__init__()
        alpha = check_number(alpha, "alpha", low=0.0, low_open=True)
        self.alpha_sqrt = nn.Parameter(torch.tensor(float(alpha) ** 0.5))

    @property
    def alpha(self) -> Tensor:
        return self.alpha_sqrt.square().clamp_min(1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return smooth_relu(x, self.alpha.to(x.dtype))

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha.detach()):.4g}"


_ACTIVATIONS = {
    "relu": (lambda: nn.ReLU(), "ReLU"),
    "softplus": (lambda: nn.Softplus(), "Softplus(x) = log(1 + exp(x)) (§5.4.1)"),
    "psoftplus": (lambda alpha=PSOFTPLUS_ALPHA: ParametricSoftplus(alpha), "parametric softplus, α = 10 (eq. 5.2)"),
    "silu": (lambda: nn.SiLU(), "SiLU(x) = x·sigmoid(x) (§5.4.1)"),
    "gelu": (lambda: nn.GELU(), "GELU(x) = x·Φ(x) (§5.4.1)"),
    "elu": (lambda alpha=1.0: nn.ELU(alpha=alpha), "ELU, α = 1; C¹ only for α = 1 (eq. 5.6)"),
    "celu": (lambda alpha=1.0: nn.CELU(alpha=alpha), "CELU, C¹ for every α (eq. 5.7)"),
    "smoothrelu": (lambda alpha=SMOOTHRELU_INIT: SmoothReLU(alpha), "SmoothReLU, learnable α from 400 (eq. 5.4)"),
    "relu_softplus_backward": (lambda alpha=PSOFTPLUS_ALPHA: ReLUSoftplusBackward(alpha),
                               "ReLU forward, σ(αx) backward (eq. 5.3, Table 5.1)"),
}


def activation_names() -> list[str]:
    """Names accepted by :func:`create_activation` and ``swap_activation``."""
    return list(_ACTIVATIONS)


def describe_activations() -> dict[str, str]:
    """Name → one-line description with the thesis reference."""
    return {k: v[1] for k, v in _ACTIVATIONS.items()}


def create_activation(name: str, **kwargs: float) -> nn.Module:
    """An activation module by name: ``create_activation("celu", alpha=1.5)``."""
    key = str(name).lower().replace("-", "_")
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(activation_names())}")
    factory = _ACTIVATIONS[key][0]
    try:
        return factory(**kwargs)
    except TypeError:
        raise TypeError(f"activation {key!r} takes no options {sorted(kwargs)}") from None
