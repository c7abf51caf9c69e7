"""The input-diversity transform T(X; p) of §3.3.3 / §3.4.1."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustlab as rl
from robustlab.attacks import InputDiversity, padded_size, resize_pad


def test_padded_size_scales_with_the_input():
    assert padded_size(299) == 330  # the thesis's ImageNet setting
    assert padded_size(224) == 247
    assert padded_size(32) == 35
    assert padded_size(28) == 31
    assert padded_size(4) == 5  # never an empty range


@pytest.mark.parametrize("size", [8, 28, 32, 299])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_pad_matches_interpolate_and_pad(size, mode):
    """Each row of the batched product equals F.interpolate followed by F.pad."""
    g = torch.Generator().manual_seed(0)
    out = padded_size(size)
    x = torch.rand(3, 2, size, size, generator=g)
    for rnd in sorted({size, (size + out) // 2, out - 1}):
        top, left = (out - rnd) // 2, max(out - rnd - 1, 0)
        kw = {} if mode == "nearest" else {"align_corners": False}
        ref = F.pad(F.interpolate(x, size=(rnd, rnd), mode=mode, **kw),
                    [left, out - rnd - left, top, out - rnd - top], value=0.5)
        n = torch.full((3,), rnd)
        got = resize_pad(x, n, n, torch.full((3,), top), torch.full((3,), left), (out, out), mode, 0.5)
        if mode == "nearest":
            assert torch.equal(got, ref)  # one-hot rows: exact
        else:
            assert (got - ref).abs().max() < 1e-4


def test_draws_follow_the_thesis_ranges():
    div = InputDiversity(p=0.5)
    d = div.draw(20000, 299, 299, torch.Generator().manual_seed(0))
    assert d.height.min() == 299 and d.height.max() == 329  # rnd ∈ [299, 330)
    assert torch.equal(d.height, d.width)
    assert (d.top >= 0).all() and (d.top + d.height <= 330).all()
    assert (d.left >= 0).all() and (d.left + d.width <= 330).all()
    assert abs(float(d.apply.float().mean()) - 0.5) < 0.02
    # Sizes are uniform over the 31 values.
    counts = torch.bincount(d.height - 299, minlength=31).float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_per_sample_independence_and_per_batch_option():
    g = torch.Generator().manual_seed(0)
    per_sample = InputDiversity(p=0.5).draw(256, 32, 32, g)
    assert len(set(zip(per_sample.height.tolist(), per_sample.top.tolist(), per_sample.left.tolist()))) > 10
    assert 0 < int(per_sample.apply.sum()) < 256
    per_batch = InputDiversity(p=0.5, per_sample=False).draw(256, 32, 32, g)
    for t in (per_batch.apply, per_batch.height, per_batch.top, per_batch.left):
        assert (t == t[0]).all()


@pytest.mark.parametrize("pad_value", [0.0, 0.5])
def test_transform_shape_range_and_content(pad_value):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 32, 32, generator=g)
    div = InputDiversity(p=1.0, pad_value=pad_value)
    d = div.draw(16, 32, 32, g)
    t = div.transform(x, d)
    assert t.shape == (16, 3, 35, 35)
    assert t.min() >= 0 and t.max() <= 1
    for i in range(16):
        h, top, left = int(d.height[i]), int(d.top[i]), int(d.left[i])
        inner = F.interpolate(x[i: i + 1], size=(h, h), mode="nearest")[0]
        assert torch.equal(t[i, :, top: top + h, left: left + h], inner)
        mask = torch.ones(35, 35, dtype=torch.bool)
        mask[top: top + h, left: left + h] = False
        assert (t[i][:, mask] == pad_value).all()


def test_resize_back_keeps_the_input_size_and_mixes_per_sample():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(64, 1, 28, 28, generator=g)
    div = InputDiversity(p=0.5, resize_back=True)
    out = div(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    same = (out == x).flatten(1).all(1)
    assert 10 < int(same.sum()) < 54  # about half untouched


def test_mixed_sizes_need_resize_back_or_per_batch():
    with pytest.raises(ValueError, match="resize_back=True or per_sample=False"):
        InputDiversity(p=0.5)(torch.rand(4, 1, 8, 8))
    assert InputDiversity(p=0.5, per_sample=False)(torch.rand(4, 1, 8, 8)).shape[0] == 4


def test_transform_is_differentiable():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=g, requires_grad=True)
    for mode in ("nearest", "bilinear"):
        div = InputDiversity(p=1.0, interpolation=mode, pad_value=0.5)
        d = div.draw(2, 6, 6, g)
        assert torch.autograd.gradcheck(lambda v, div=div, d=d: div.transform(v, d), (x,))


def test_diverse_attack_groups_are_exact(trained_model, batch):
    """Per-sample coins run the batch as two groups; each sample's gradient must
    equal the one computed for it alone."""
    from robustlab.attacks.iterative import diverse_logits

    x, y = batch
    div = InputDiversity(p=0.5)
    d = div.draw(len(x), 8, 8, torch.Generator().manual_seed(0))
    logits = diverse_logits(trained_model, x, d, div)
    for i in (0, 1, 2, 3):
        xi = div.transform(x[i: i + 1], d.subset(torch.tensor([i]))) if d.apply[i] else x[i: i + 1]
        assert torch.allclose(logits[i], trained_model(xi)[0], atol=1e-5)


def test_model_without_global_pooling_gets_a_hint(batch):
    x, y = batch
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"fails on the 9×9 images input diversity makes of 8×8 ones.*"
                                         r"resize_back=True.*--resize-back"):
        rl.attacks.create("di2fgsm", p=1.0)(model, x, y)
    ok = rl.attacks.create("di2fgsm", diversity=InputDiversity(p=1.0, resize_back=True))(model, x, y)
    assert ok.shape == x.shape and float((ok - x).abs().max()) <= 15 / 255 + 1e-6


def test_bad_options():
    with pytest.raises(ValueError, match="p must be"):
        InputDiversity(p=1.5)
    with pytest.raises(ValueError, match="interpolation"):
        InputDiversity(interpolation="cubic")
    with pytest.raises(ValueError, match="either as p or inside diversity"):
        rl.attacks.create("di2fgsm", diversity=InputDiversity(0.3), p=0.5)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_per_batch_fast_path_equals_the_batched_product(mode):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 3, 32, 32, generator=g)
    div = InputDiversity(p=1.0, per_sample=False, interpolation=mode, pad_value=0.5)
    d = div.draw(6, 32, 32, g)
    fast = div.transform(x, d)
    slow = resize_pad(x, d.height, d.width, d.top, d.left, (35, 35), mode, 0.5)
    assert fast.shape == slow.shape == (6, 3, 35, 35)
    assert (fast - slow).abs().max() <= (0 if mode == "nearest" else 1e-4)



class _AssertsItsSize(torch.nn.Module):
    """As timm's ViTs: an assert on the input size, not a RuntimeError."""

    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def forward(self, x):
        assert x.shape[-1] == 8, f"Input width ({x.shape[-1]}) doesn't match model (8)"
        return self.f(x)


def test_a_model_that_asserts_its_input_size_gets_the_same_value_error(batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"fails on the 9×9 images input diversity makes.*doesn't match model"):
        rl.attacks.create("di2fgsm", p=1.0)(_AssertsItsSize(), x, y)
