"""Input-transformation defenses (robustlab.eval.defenses): what the wrapped
model receives, checked against independent computations."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from robustlab.eval.defenses import JPEG, Randomization, defended
from robustlab.eval.evaluate import output_warnings


class Recorder(nn.Module):
    """Returns fake logits and keeps the last input it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.flatten(1)[:, :10]


def test_randomization_pastes_a_nearest_resize_of_each_image_on_a_zero_canvas():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28) * 0.9 + 0.1  # no zero pixel: the pasted box is exactly the non-zero region
    rec = Recorder()
    Randomization(rec, seed=3)(x)
    out = rec.seen[0]
    assert out.shape == (64, 1, 31, 31)  # 28 · 331/299 = 31
    sizes = set()
    for i in range(64):
        rows = out[i, 0].abs().sum(1).nonzero().flatten()
        cols = out[i, 0].abs().sum(0).nonzero().flatten()
        top, h = int(rows[0]), len(rows)
        left, w = int(cols[0]), len(cols)
        assert h == w and 28 <= h < 31 and top + h <= 31 and left + w <= 31
        ref = F.interpolate(x[i: i + 1], size=(h, w), mode="nearest")[0]
        assert torch.equal(out[i, :, top: top + h, left: left + w], ref)
        sizes.add(h)
    assert sizes == {28, 29, 30}  # every size in [S, S') is drawn, per image


def test_randomization_draws_anew_each_pass_and_is_reproducible_under_its_seed():
    x = torch.rand(16, 1, 28, 28) * 0.9 + 0.1
    rec_a, rec_b = Recorder(), Recorder()
    a, b = Randomization(rec_a, seed=5), Randomization(rec_b, seed=5)
    z1, z2 = a(x), a(x)
    b(x), b(x)
    assert not torch.equal(rec_a.seen[0], rec_a.seen[1])  # a fresh draw per forward pass
    assert all(torch.equal(p, q) for p, q in zip(rec_a.seen, rec_b.seen))  # same seed, same sequence
    assert any("[randomness]" in w for w in output_warnings(z1, z2))  # evaluate() flags it


def _pil_jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """The reference: PIL's JPEG save and load of one (1, H, W) image in [0, 1]."""
    arr = (image[0] * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return torch.from_numpy(__import__("numpy").array(Image.open(buf))).float()[None] / 255


@pytest.mark.parametrize("quality", [75, 20])
def test_jpeg_feeds_the_model_a_jpeg_round_trip_like_pils(quality):
    g = torch.Generator().manual_seed(1)
    x = F.avg_pool2d(torch.rand(8, 1, 32, 32, generator=g), 3, 1, 1)  # smooth enough to compress
    rec = Recorder()
    JPEG(rec, quality=quality)(x)
    out = rec.seen[0]
    ref = torch.stack([_pil_jpeg(x[i], quality) for i in range(8)])
    assert out.shape == x.shape
    # libjpeg(-turbo) in torchvision and in PIL: the same codec, up to rounding in the IDCT
    assert (out - ref).abs().max() <= 2 / 255 and (out - ref).abs().mean() < 0.2 / 255
    assert (out - x).abs().mean() > 1 / 255  # it did change the image


def test_lower_jpeg_quality_distorts_more():
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    err = {}
    for q in (95, 50, 10):
        rec = Recorder()
        JPEG(rec, quality=q)(x)
        err[q] = float((rec.seen[0] - x).abs().mean())
    assert err[95] < err[50] < err[10]


def test_defended_refuses_bad_names_and_options():
    with pytest.raises(ValueError, match=r"defense must be one of \['jpeg', 'randomization'\]; got 'blur'"):
        defended(nn.Identity(), "blur")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['qualty'\]; it takes \['quality'\]"):
        defended(nn.Identity(), "jpeg", qualty=3)
    with pytest.raises(ValueError, match="quality must be <= 100"):
        defended(nn.Identity(), "jpeg", quality=101)
    with pytest.raises(ValueError, match="scale must be > 1"):
        defended(nn.Identity(), "randomization", scale=1.0)
    assert isinstance(defended(nn.Identity(), "randomization", seed=2), Randomization)


def test_randomization_resizes_back_for_a_fixed_size_model_and_says_so_when_it_must():
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))  # takes 28×28 only
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(RuntimeError, match=r"feeds the model \(31, 31\) images.*needs resize_back=True"):
        Randomization(fixed)(x)
    assert Randomization(fixed, resize_back=True)(x).shape == (4, 10)
    rec = Recorder()
    Randomization(rec, resize_back=True)(x)
    assert rec.seen[0].shape == x.shape and not torch.equal(rec.seen[0], x)
    with pytest.raises(TypeError, match="resize_back must be true or false"):
        Randomization(fixed, resize_back="yes")
