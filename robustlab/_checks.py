"""Input validation shared by every public entry point.

Bad input is rejected before any work starts, with a message that names the
argument and the form it should have (pixel space [0, 1], NCHW).
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

# Dtypes a model may be fed: float64 is refused rather than cast, so a silent
# 2× memory and precision change never happens behind the caller's back (and a
# float64 batch against float32 weights fails deep inside a convolution).
IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _image_form(x: object, name: str, dtypes: tuple[torch.dtype, ...] = IMAGE_DTYPES) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W) in [0, 1]; got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{name} must have shape (N, C, H, W) (rank 4); got rank {x.dim()} with shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        hint = " (8-bit images: x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must be a floating-point tensor with pixels in [0, 1]; got dtype {x.dtype}{hint}")
    if x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {x.dtype} (convert them with .float())")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image; got shape {tuple(x.shape)}")
    return x


def error_line(err: BaseException, width: int = 200, default: str | None = None) -> str:
    """The first line of ``err``'s message, cut to ``width`` characters, as a
    one-line error quotes another; ``default`` (else the error's class name)
    for an empty message."""
    lines = str(err).strip().splitlines()
    return lines[0][:width] if lines else (type(err).__name__ if default is None else default)


def model_channels(model: nn.Module) -> int | None:
    """The channels the model's first convolution takes (None without nn.Conv2d)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def channel_mismatch(model: nn.Module, x: Tensor, name: str = "x") -> str | None:
    """Why a model that failed on ``x`` may have: ``x``'s channels differ from
    what its first registered convolution takes (None when they agree, or it
    has none). Only a hint once the forward has failed: a model may well map
    1 channel to 3 itself, or register its stem after its head."""
    channels = model_channels(model)
    if channels is None or x.dim() != 4 or x.shape[1] == channels:
        return None
    return (f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}) but the model's first convolution takes "
            f"{channels}; pass (N, {channels}, H, W) images")


def _label_form(y: object, n: int, name: str) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices with shape ({n},); got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the images; got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices; got dtype {y.dtype}")
    return y


def check_label_range(name: str, low: int, high: int, num_classes: int | None = None) -> None:
    """Raise if class indices in [low, high] do not fit ``num_classes``."""
    if low < 0:
        raise ValueError(f"{name} must hold class indices >= 0; got {low}")
    if num_classes is not None and high >= num_classes:
        raise ValueError(f"{name} holds class index {high}, out of range for a model with {num_classes} classes")


def check_batch(x: object, labels: dict[str, Tensor | None] | None = None, name: str = "x",
                dtypes: tuple[torch.dtype, ...] = IMAGE_DTYPES) -> dict[str, int]:
    """Check images and label tensors with a single device synchronization.

    ``x`` must be a finite float tensor (N, C, H, W) in [0, 1]; each label tensor
    (on ``x``'s device) must hold N non-negative integers. Returns the largest
    index of each label tensor, for the class-count check once the model's
    output size is known."""
    x = _image_form(x, name, dtypes)
    labels = {k: _label_form(v, x.shape[0], k) for k, v in (labels or {}).items() if v is not None}
    # min and max propagate NaN and show ±inf, so they alone reveal bad values.
    parts = list(torch.aminmax(x))
    for v in labels.values():
        parts += [v.min(), v.max()]
    values = torch.stack([p.double() for p in parts]).tolist()
    lo, hi = values[:2]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains {int((~torch.isfinite(x)).sum())} NaN or infinite values")
    if lo < 0.0 or hi > 1.0:
        # a value outside [0, 1] with as many digits as show it (1.0000001 read as "max 1" before)
        shown = [f"{v:.9g}" if not 0 <= v <= 1 and 0 <= float(f"{v:.4g}") <= 1 else f"{v:.4g}" for v in (lo, hi)]
        tiny = lo > -1e-3 and hi < 1 + 1e-3  # a resize's or a float round-off's overshoot
        raise ValueError(
            f"{name} must lie in [0, 1] (pixel space; mean/std normalization belongs inside the model); "
            f"got min {shown[0]}, max {shown[1]}" + ("; clamp such round-off with x.clamp(0, 1)" if tiny else "")
        )
    maxima = {}
    for i, k in enumerate(labels):
        low, high = int(values[2 + 2 * i]), int(values[3 + 2 * i])
        check_label_range(k, low, high)
        maxima[k] = high
    return maxima


def check_images(x: object, name: str = "x", dtypes: tuple[torch.dtype, ...] = IMAGE_DTYPES) -> Tensor:
    """Check ``x`` is a finite float tensor of shape (N, C, H, W) in [0, 1], of
    one of ``dtypes`` (model inputs: float32/16, bfloat16)."""
    check_batch(x, name=name, dtypes=dtypes)
    return x


def check_labels(y: object, n: int, name: str = "y", num_classes: int | None = None) -> Tensor:
    """Check ``y`` is an integer tensor of shape (n,) with values in [0, num_classes)."""
    y = _label_form(y, n, name)
    check_label_range(name, int(y.min()), int(y.max()), num_classes)
    return y


def check_number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float:
    """Check a scalar hyper-parameter is a finite number inside the given range."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a {'whole ' if integer else ''}number; got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"{name} must be a whole number; got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}; got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high:g}; got {value!r}")
    return v
