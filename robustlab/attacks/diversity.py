"""Input diversity T(X; p), §3.3.3 eq. (3.6) with the §3.4.1 transform.

With probability p an image is resized to rnd×rnd, rnd uniform in
[S, S·330/299), then zero-padded at a random position to S·330/299 (299 → 330
on ImageNet; S scales with the input). Draws are per sample by default, as
eq. (3.6) reads; the original release's behaviour (one draw per batch, pad
value 0.5, i.e. 0 in its [-1, 1] input space) is available through options.
The result is not resized back unless asked: as in the release, the network's
global pooling absorbs the larger input.

Resizing and padding are written as one batched product out = A·X·Bᵀ with a
per-sample row matrix A (S'×S) and column matrix B, so every sample gets its
own size and position without a Python loop, the op is differentiable, and
nearest-neighbour rows (one-hot) reproduce ``F.interpolate`` exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab._checks import check_number

#: §3.4.1: 299×299 inputs are resized to rnd ∈ [299, 330) and padded to 330.
DIVERSITY_SCALE = 330 / 299
_INTERPOLATIONS = ("nearest", "bilinear")


@dataclass
class DiversityDraw:
    """Random choices of one application of T for a batch; all fields (N,)."""

    apply: Tensor  # bool: the p-coin
    height: Tensor  # long: resized height rnd
    width: Tensor  # long: resized width
    top: Tensor  # long: row offset of the resized image in the padded canvas
    left: Tensor  # long: column offset

    def subset(self, index: Tensor) -> DiversityDraw:
        return DiversityDraw(*(getattr(self, f)[index] for f in ("apply", "height", "width", "top", "left")))


def padded_size(size: int, scale: float = DIVERSITY_SCALE) -> int:
    """S' = round(S·330/299), at least S+1 so the resize range is never empty."""
    return max(int(round(size * scale)), size + 1)


def _resize_rows(
    in_size: int, out_size: int, length: Tensor, offset: Tensor, interpolation: str, dtype: torch.dtype
) -> Tensor:
    """Per-sample matrices (N, out_size, in_size) that resize a length-``in_size``
    axis to ``length`` and place it at ``offset`` in a zero axis of ``out_size``.
    Index arithmetic follows ``F.interpolate`` (align_corners=False) in float32."""
    n, device = length.shape[0], length.device
    dst = torch.arange(out_size, device=device)[None, :] - offset[:, None]  # (N, out)
    valid = (dst >= 0) & (dst < length[:, None])
    scale = in_size / length.float()[:, None]
    rows = torch.zeros(n, out_size, in_size, device=device, dtype=dtype)
    if interpolation == "nearest":
        src = (dst.float() * scale).floor().long().clamp(0, in_size - 1)
        rows.scatter_(2, src[..., None], valid[..., None].to(dtype))
        return rows
    src = ((dst.float() + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    lam = (src - i0.float()).to(dtype) * valid
    rows.scatter_add_(2, i0[..., None], ((1 - lam) * valid)[..., None])
    rows.scatter_add_(2, i1[..., None], lam[..., None])
    return rows


def resize_pad(
    x: Tensor,
    height: Tensor,
    width: Tensor,
    top: Tensor,
    left: Tensor,
    out_size: tuple[int, int],
    interpolation: str = "nearest",
    pad_value: float = 0.0,
) -> Tensor:
    """Resize each image of ``x`` (N, C, H, W) to (height[i], width[i]) and paste it
    at (top[i], left[i]) on a canvas of ``out_size`` filled with ``pad_value``."""
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}; got {interpolation!r}")
    h, w = x.shape[-2:]
    a = _resize_rows(h, out_size[0], height, top, interpolation, x.dtype)  # (N, H', H)
    b = _resize_rows(w, out_size[1], width, left, interpolation, x.dtype)  # (N, W', W)
    out = a[:, None] @ x @ b[:, None].transpose(-1, -2)
    if pad_value:
        inside = a.sum(-1)[:, :, None] * b.sum(-1)[:, None, :]  # 1 on the pasted image, 0 on padding
        out = out + pad_value * (1 - inside[:, None])
    return out


class InputDiversity:
    """The stochastic transform T(X; p) of eq. (3.6).

    Args:
        p: probability of transforming an image (§3.4.1: 0.5; §3.4.5: 0.4).
        scale: padded size over input size (§3.4.1: 330/299).
        interpolation: ``nearest`` (the release) or ``bilinear``.
        pad_value: pixel value of the padding; 0 as the thesis text reads, 0.5
            for the release (0 in its [-1, 1] input space).
        per_sample: independent draws per image (eq. 3.6); False draws once
            per batch as the release does.
        resize_back: resize the padded image back to the input size, for models
            that need a fixed input size (no global pooling).
    """

    def __init__(
        self,
        p: float = 0.5,
        *,
        scale: float = DIVERSITY_SCALE,
        interpolation: str = "nearest",
        pad_value: float = 0.0,
        per_sample: bool = True,
        resize_back: bool = False,
    ) -> None:
        self.p = check_number(p, "p", low=0.0, high=1.0)
        self.scale = check_number(scale, "scale", low=1.0, low_open=True)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}; got {interpolation!r}")
        self.interpolation = interpolation
        self.pad_value = check_number(pad_value, "pad_value", low=0.0, high=1.0)
        self.per_sample = bool(per_sample)
        self.resize_back = bool(resize_back)

    def __repr__(self) -> str:
        return (
            f"InputDiversity(p={self.p}, scale={self.scale:.4f}, interpolation={self.interpolation!r}, "
            f"pad_value={self.pad_value}, per_sample={self.per_sample}, resize_back={self.resize_back})"
        )

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        if self.resize_back:
            return h, w
        return padded_size(h, self.scale), padded_size(w, self.scale)

    def draw(
        self, n: int, h: int, w: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> DiversityDraw:
        """Draw the coin, size and position for ``n`` images of size h×w."""
        hp, wp = padded_size(h, self.scale), padded_size(w, self.scale)
        k = n if self.per_sample else 1
        u = torch.rand(k, 4, generator=generator, device=device, dtype=torch.float64)
        apply = u[:, 0] < self.p
        height = h + (u[:, 1] * (hp - h)).long()  # uniform integer in [h, h')
        # One aspect-preserving draw; for square inputs width == height.
        width = height if h == w else (height * w / h).round().long().clamp(w, wp - 1)
        # Offsets uniform in [0, S' − rnd), the release's range.
        top = (u[:, 2] * (hp - height)).long()
        left = (u[:, 3] * (wp - width)).long()
        draw = DiversityDraw(apply, height, width, top, left)
        if not self.per_sample:
            draw = DiversityDraw(*(t.expand(n) for t in (apply, height, width, top, left)))
        return draw

    def transform(self, x: Tensor, draw: DiversityDraw) -> Tensor:
        """Apply the resize-and-pad of ``draw`` to every image of ``x`` (the coin is
        the caller's): (N, C, H, W) → (N, C, H', W'), or (N, C, H, W) with resize_back."""
        h, w = x.shape[-2:]
        hp, wp = padded_size(h, self.scale), padded_size(w, self.scale)
        if self.per_sample:
            out = resize_pad(x, draw.height, draw.width, draw.top, draw.left, (hp, wp), self.interpolation,
                             self.pad_value)
        else:  # one draw for the batch: a plain resize and pad are cheaper than the batched product
            rh, rw, top, left = (int(v) for v in torch.stack([draw.height[0], draw.width[0], draw.top[0],
                                                               draw.left[0]]).tolist())
            kw = {} if self.interpolation == "nearest" else {"align_corners": False}
            out = F.pad(F.interpolate(x, size=(rh, rw), mode=self.interpolation, **kw),
                        [left, wp - rw - left, top, hp - rh - top], value=self.pad_value)
        if self.resize_back:
            n = x.shape[0]
            full_h = torch.full((n,), h, device=x.device, dtype=torch.long)
            full_w = torch.full((n,), w, device=x.device, dtype=torch.long)
            zero = torch.zeros(n, device=x.device, dtype=torch.long)
            out = resize_pad(out, full_h, full_w, zero, zero, (h, w), self.interpolation)
        return out

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """T(X; p) for a batch whose outputs share one size: with ``resize_back``
        or a per-batch draw. Per-sample draws at the padded size give images of
        two sizes; the attack loop handles those as two groups."""
        d = self.draw(x.shape[0], x.shape[-2], x.shape[-1], generator, x.device)
        if not self.resize_back and self.per_sample and 0.0 < self.p < 1.0:
            raise ValueError(
                "per-sample T(X; p) with 0 < p < 1 mixes two image sizes; "
                "use resize_back=True or per_sample=False to get one tensor"
            )
        if not bool(d.apply.any()):
            return x
        t = self.transform(x, d)
        if self.resize_back:
            return torch.where(d.apply.view(-1, 1, 1, 1), t, x)
        return t
