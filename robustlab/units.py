"""The one place where the thesis's 0–255 notation meets pixel space [0, 1].

The thesis states every budget in 0–255 units (``ε = 16``, ``α = 1``); the
library works on [0, 1] pixels (``eps=16/255``). Configs and the CLI accept
the thesis notation and convert here, nowhere else.
"""
from __future__ import annotations

import math
from fractions import Fraction

PIXEL_LEVELS = 255.0


def from_255(value: float) -> float:
    """A budget in 0–255 units as a [0, 1] pixel value: ``from_255(16) == 16/255``."""
    return float(value) / PIXEL_LEVELS


def to_255(value: float) -> float:
    """A [0, 1] pixel value in the thesis's 0–255 units."""
    return float(value) * PIXEL_LEVELS


def budget_text(eps: float, norm: str = "linf") -> str:
    """A budget as a summary line says it: ``ε = 8/255 (linf)`` in 0–255
    units, or ``ε₂ = 0.5 (l2)`` in pixels (an L2 budget is no fraction of 255)."""
    return f"ε₂ = {eps:.4g} (l2)" if norm == "l2" else f"ε = {to_255(eps):.4g}/255 ({norm})"


def parse_eps(text: str | float | int, name: str = "eps", *, small_is_pixels: bool = False,
              pixels: bool = False) -> float:
    """Parse a budget written by a user into pixel units.

    Plain numbers are in the thesis's 0–255 notation (``"16"`` → 16/255); a
    fraction names pixel units explicitly (``"16/255"`` → 16/255, ``"1/2"`` →
    0.5, ``"0.5/255"``: DAG's γ); a ``px`` suffix marks a pixel-space value (``"0.5px"`` → 0.5, the
    usual way to state an L2 budget). ``pixels``: plain numbers are pixel
    units too (an L2 budget, ``"3"`` → 3, as ImageNet's ε₂ = 3 is written).
    """
    raw = str(text).strip()
    try:
        if raw.endswith("px"):
            value = float(raw[:-2])
        elif "/" in raw:
            num, den = raw.split("/")  # one slash; each side a decimal (exact: "16/255" as Fraction("16/255"))
            value = float(Fraction(num.strip()) / Fraction(den.strip()))
        elif pixels or (small_is_pixels and 0 < float(raw) < 1):
            value = float(raw)
        else:
            value = from_255(float(raw))
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"{name} must be a number in 0-255 units (e.g. 16), a fraction (16/255) or pixels (0.5px); got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0; got {text!r}")
    if not pixels and not raw.endswith("px") and "/" not in raw and float(raw) > PIXEL_LEVELS:
        raise ValueError(f"{name} {text!r} is above 255, the whole pixel range in 0-255 units (1.0 in pixels); "
                         f"write 0-255 units (16), a fraction (16/255) or pixels (0.5px)")
    return value


def parse_budget(text: str | float | int, name: str, *, pixels: bool = False) -> float:
    """A budget (ε or a step α) of a config or a flag, in pixels.

    As :func:`parse_eps`, except that a plain number below 1 is pixels
    (``eps: 0.03``, ``--eps 0.03`` and ``--step-size 0.005`` are pixel values,
    not 0.03/255): no budget is that small in 0–255 units, and a user writing
    one means pixels; 0.5/255 is written as such. ``pixels``: every plain
    number is pixels (an L2 budget).
    """
    return parse_eps(text, name, small_is_pixels=True, pixels=pixels)
