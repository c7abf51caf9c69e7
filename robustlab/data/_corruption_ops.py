"""Tensor filtering, resampling and randomness helpers behind the corruptions of
:mod:`robustlab.data.corruptions` (Gaussian and arbitrary 2-D filters, grids
and resampling, motion blur, zoom, grayscale), batched and device-agnostic."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

REFERENCE_SIZE = 224  # the image size the ImageNet-C parameter tables are stated for
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as cv2's RGB2GRAY


def _scale(x: Tensor) -> float:
    return min(x.shape[-2:]) / REFERENCE_SIZE


def _draw(kind: str, shape: tuple[int, ...], g: torch.Generator, like: Tensor) -> Tensor:
    """Standard ``normal`` or ``uniform`` [0, 1) samples drawn on the generator's
    device, then moved to ``like``'s device and dtype (a CPU generator gives the
    same numbers for CPU and GPU input)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(shape, generator=g, device=g.device, dtype=dtype).to(like.device, like.dtype)


def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator, like: Tensor) -> Tensor:
    return low + (high - low) * _draw("uniform", shape, g, like)


# ---------------------------------------------------------------- filtering and resampling helpers


def _gaussian_kernel(sigma: float, truncate: float, like: Tensor) -> Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's rule
    t = torch.arange(-radius, radius + 1, device=like.device, dtype=like.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with edge replication (skimage ``gaussian``'s
    'nearest' mode, truncated at 4σ)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma, 4.0, x)
    r = k.numel() // 2
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _filter2d(x: Tensor, kernel: Tensor) -> Tensor:
    """Same-size correlation of every channel with ``kernel`` (odd square), edges
    mirrored as cv2's default BORDER_REFLECT_101 (replicated where the image is
    smaller than the kernel)."""
    n, c, h, w = x.shape
    r = kernel.shape[-1] // 2
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode=mode)
    return F.conv2d(y, kernel[None, None]).reshape(n, c, h, w)


def _base_grid(n: int, h: int, w: int, like: Tensor) -> Tensor:
    """(N, H, W, 2) pixel-centre coordinates (x, y) in pixels."""
    ys = torch.arange(h, device=like.device, dtype=like.dtype)
    xs = torch.arange(w, device=like.device, dtype=like.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), -1).expand(n, h, w, 2)


def _normalized(coords: Tensor, h: int, w: int) -> Tensor:
    """Pixel coordinates (x, y) → grid_sample's [−1, 1] (align_corners=False:
    pixel i's centre is at (2i + 1) / size − 1)."""
    size = torch.tensor([w, h], device=coords.device, dtype=coords.dtype)
    return (2 * coords + 1) / size - 1


def _sample(x: Tensor, coords: Tensor, padding: str) -> Tensor:
    """Bilinear samples of ``x`` at pixel coordinates ``coords: (N, H, W, 2)``."""
    grid = _normalized(coords, *x.shape[-2:])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _motion_blur(x: Tensor, radius: float, sigma: float, angle: Tensor) -> Tensor:
    """ImageMagick's ``-motion-blur radius x sigma + angle``: a one-sided line of
    2·radius + 1 taps with Gaussian weights exp(−i²/2σ²), i = 0, 1, …, along
    ``angle`` (degrees, one per image). Tap i reads the pixel at offset
    (⌈i·cos θ − ½⌉, ⌈i·sin θ − ½⌉), ImageMagick's rounding to whole pixels, with
    edge replication; ``radius`` and ``sigma`` are for 224 px and the offsets
    are × s, sampled bilinearly (whole pixels, hence ImageMagick's output, at
    224 px)."""
    n, _, h, w = x.shape
    taps = torch.arange(2 * int(radius) + 1, dtype=torch.float64)
    weights = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    weights = (weights / weights.sum()).tolist()
    rad = torch.deg2rad(angle.to(torch.float64))
    direction = torch.stack((torch.cos(rad), torch.sin(rad)), -1)  # (N, 2): (x, y) per tap
    to_grid = torch.tensor([2 / w, 2 / h], dtype=torch.float64) * _scale(x)  # pixels at 224 px → grid units
    grid = _normalized(_base_grid(n, h, w, x), h, w)
    out = weights[0] * x
    for i, wt in enumerate(weights[1:], 1):
        if wt < 1e-6:  # beyond ~5σ: no visible contribution
            break
        # Rounded in float64 on the 224-px grid, so that the whole-pixel offsets are ImageMagick's exactly.
        step = (torch.ceil(i * direction - 0.5) * to_grid).to(x.device, x.dtype)
        shifted = grid + step[:, None, None, :]
        out += wt * F.grid_sample(x, shifted, mode="bilinear", padding_mode="border", align_corners=False)
    return out


def _clipped_zoom_map(factor: float) -> tuple[float, float]:
    """(scale, shift) of the original's ``clipped_zoom`` at 224 px as a map of
    grid_sample's [−1, 1] coordinates, output g → input scale·g + shift.

    The original crops c = ⌈224 / factor⌉ pixels from offset (224 − c) // 2,
    zooms them with scipy's order-1 ``zoom`` to o = round(c · factor) pixels
    (corner-aligned: output j reads crop pixel j·(c − 1)/(o − 1)) and keeps 224
    from (o − 224) // 2: output pixel j reads input pixel top + (j + trim)·step.
    The whole-pixel crop and trim move the centre by up to half a pixel and
    round the factor; stated in image-relative coordinates, the same map applies
    at every size (the original's exactly at 224 px)."""
    size = REFERENCE_SIZE
    crop = math.ceil(size / factor)
    out = round(crop * factor)
    top, trim = (size - crop) // 2, (out - size) // 2
    step = (crop - 1) / (out - 1)
    # Pixel j ↔ relative position u = (j + ½) / size ↔ grid coordinate g = 2u − 1.
    offset = (top + (trim - 0.5) * step + 0.5) / size
    return step, step + 2 * offset - 1


def _zoom(x: Tensor, factor: float) -> Tensor:
    """Zoom into the image centre by ``factor`` as the original's
    ``clipped_zoom`` (bilinear; see :func:`_clipped_zoom_map`)."""
    scale, shift = _clipped_zoom_map(factor)
    theta = torch.tensor([[scale, 0, shift], [0, scale, shift]], device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * luma).sum(1, keepdim=True)
