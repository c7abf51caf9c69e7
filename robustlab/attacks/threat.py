"""Threat models: the set of allowed perturbations around a clean image.

Each ball knows how to draw a random start inside itself, turn a gradient into
a steepest-ascent direction, project back onto itself and measure a
perturbation, so the attack loop never branches on the norm (STYLE.md 1b).
Pixels always stay in [0, 1].
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from robustlab._checks import check_number


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector (N,) to broadcast against (N, C, H, W)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


class ThreatModel(ABC):
    """An ℓp ball of radius ``eps`` (pixel units) intersected with the [0, 1] box."""

    name: str = ""

    def __init__(self, eps: float) -> None:
        self.eps = check_number(eps, "eps", low=0.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:.6g})"

    def box(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel lower/upper bounds valid for every point of the set (default: [0, 1])."""
        return torch.zeros_like(x), torch.ones_like(x)

    @abstractmethod
    def random_delta(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """A perturbation drawn uniformly from the ball, shape of ``x``."""

    @abstractmethod
    def direction(self, g: Tensor) -> Tensor:
        """The unit-norm steepest-ascent direction for gradient ``g`` (N, C, H, W)."""

    @abstractmethod
    def project(self, x_adv: Tensor, x: Tensor, box: tuple[Tensor, Tensor]) -> Tensor:
        """The point of the set nearest to ``x_adv`` (``box`` from :meth:`box`);
        may work in place on ``x_adv``."""

    @abstractmethod
    def norm(self, delta: Tensor) -> Tensor:
        """Per-sample norm of ``delta`` (N, ...) → (N,)."""


def check_pixel_budget(value: float, name: str = "eps") -> float:
    """An L∞ budget or step lives in [0, 1] pixel units; a value above 1 is a
    0-255 figure passed by mistake (``eps=16`` for 16/255), never a real ball."""
    if value > 1:
        raise ValueError(f"{name} must be in [0, 1] pixel units for an L∞ ball; got {value:g}: for {value:g} in "
                         f"the thesis's 0-255 units pass {name}={value:g}/255")
    return value


class LinfBall(ThreatModel):
    """‖r‖∞ ≤ ε, the thesis's threat model (eq. 3.3: Clip_X^ε)."""

    name = "linf"

    def __init__(self, eps: float) -> None:
        super().__init__(eps)
        check_pixel_budget(self.eps)

    def box(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # The ε-ball and the pixel box intersect into one per-pixel interval, so
        # projection is a single clamp that never moves a point already inside
        # (no x + (x_adv - x) round-off).
        return (x - self.eps).clamp_(min=0), (x + self.eps).clamp_(max=1)

    def random_delta(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * self.eps

    def direction(self, g: Tensor) -> Tensor:
        return g.sign()

    def project(self, x_adv: Tensor, x: Tensor, box: tuple[Tensor, Tensor]) -> Tensor:
        """In place: the attack loop owns ``x_adv``."""
        return x_adv.clamp_(box[0], box[1])

    def norm(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().amax(dim=1)


class L2Ball(ThreatModel):
    """‖r‖₂ ≤ ε over the whole image (C·H·W values)."""

    name = "l2"

    def random_delta(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        n, d = x.shape[0], x[0].numel()
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        unit = g / _per_sample(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
        # Radius r = ε·u^(1/d) makes the draw uniform in volume.
        u = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)
        return unit * _per_sample(self.eps * u.pow(1.0 / d), g)

    def direction(self, g: Tensor) -> Tensor:
        # Dividing by the max |g| first keeps tiny gradients (a confident model's
        # ~1e-20) from underflowing in the squares of the norm.
        tiny = torch.finfo(g.dtype).tiny
        u = g / _per_sample(g.flatten(1).abs().amax(dim=1).clamp_min(tiny), g)
        return u / _per_sample(u.flatten(1).norm(dim=1).clamp_min(tiny), u)

    def project(self, x_adv: Tensor, x: Tensor, box: tuple[Tensor, Tensor]) -> Tensor:
        delta = x_adv - x
        norms = delta.flatten(1).norm(dim=1)
        factor = (self.eps / norms.clamp_min(1e-12)).clamp(max=1.0)
        # Clipping to [0, 1] after the radial projection can only shrink ‖δ‖₂.
        return torch.clamp(x + delta * _per_sample(factor, delta), box[0], box[1])

    def norm(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(dim=1)


_THREATS = {"linf": LinfBall, "l2": L2Ball}


def create_threat(norm: str, eps: float) -> ThreatModel:
    """``create_threat("linf", 16/255)``; names: ``linf``, ``l2``."""
    key = str(norm).lower().replace("_", "").replace("-", "")
    key = {"inf": "linf", "linfinity": "linf", "2": "l2"}.get(key, key)
    if key not in _THREATS:
        raise ValueError(f"norm must be one of {sorted(_THREATS)}; got {norm!r}")
    return _THREATS[key](eps)
