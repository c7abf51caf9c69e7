"""Adversarial example grids: the amplified perturbation fills [0, 1] around
grey and keeps δ's sign; images decode back from their PNGs."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from robustlab.report.examples import amplified, png, rows


def test_amplified_perturbation_fills_the_range_around_grey():
    g = torch.Generator().manual_seed(0)
    delta = (torch.rand(3, 8, 8, generator=g) - 0.5) * 0.06
    out, gain = amplified(delta)
    assert out.min() >= 0 and out.max() <= 1
    assert float((out - 0.5).abs().max()) == pytest.approx(0.5)  # the largest |δ| reaches black or white
    assert torch.equal(torch.sign(out - 0.5), torch.sign(delta))
    assert gain == 0.5 / float(delta.abs().max())
    zero, g0 = amplified(torch.zeros(1, 4, 4))
    assert g0 == 0 and torch.all(zero == 0.5)


def test_png_round_trip_grey_and_colour():
    for img in (torch.rand(1, 5, 7), torch.rand(3, 5, 7)):
        arr = np.asarray(Image.open(io.BytesIO(base64.b64decode(png(img)))))
        assert arr.shape[:2] == (5, 7)
        back = torch.from_numpy(arr.astype(np.float32) / 255)
        back = back[None] if back.ndim == 2 else back.permute(2, 0, 1)
        assert torch.allclose(back, img, atol=1 / 255)


def test_rows_one_example_per_sample():
    clean = torch.rand(2, 1, 8, 8)
    adv = (clean + 0.03).clamp(0, 1)
    out = rows(clean, adv, ["#0", "#1"])
    assert [e.caption for e in out] == ["#0", "#1"] and all(e.gain.startswith("×") for e in out)
    same = rows(clean[:1], clean[:1], ["#0"])
    assert same[0].gain == "= 0"


def test_kept_examples_caption_label_and_prediction_by_class_name(tmp_path):
    from safetensors.torch import save_file

    from robustlab.report.examples import kept_examples

    clean = torch.rand(2, 1, 4, 4)
    save_file({"index": torch.tensor([3, 5]), "clean": clean, "adversarial": (clean + 0.01).clamp(0, 1),
               "y": torch.tensor([1, 0]), "adv_pred": torch.tensor([8, 0])}, str(tmp_path / "ex.safetensors"))
    per_sample = {"broken_by": [None] * 3 + ["pgd"] + [None] * 2, "broken_at": [-1] * 3 + [4] + [-1] * 2}
    grid = kept_examples(tmp_path / "ex.safetensors", "t", per_sample, ("T-shirt/top", "Trouser") + ("x",) * 6
                         + ("Bag", "Ankle boot"))
    assert [e.caption for e in grid.items] == ["#3 · broken by pgd at step 4 · Trouser → Bag",
                                               "#5 · robust · T-shirt/top → T-shirt/top"]
    bare = kept_examples(tmp_path / "ex.safetensors", "t", per_sample)
    assert bare.items[0].caption == "#3 · broken by pgd at step 4 · 1 → 8"
