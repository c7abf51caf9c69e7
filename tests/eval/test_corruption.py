"""ImageNet-C corruptions, mCE / relative mCE, corrupted-set readers and
ImageNet-A's class subset (thesis §7.5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robustlab.data.corruptions as C
from robustlab.data.corruptions import CORRUPTIONS, corrupt, corruption_names
from robustlab.eval.corruption import (
    ALEXNET_ERRORS,
    IMAGENET_A_INDICES,
    corruption_error,
    corruption_errors,
    imagenet_a_logits,
    load_corrupted_folder,
    mce,
    relative_mce,
)
from robustlab.eval.metrics import predict

DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
# Corruptions whose strength only grows with severity in the original tables
# (others mix parameters: e.g. elastic severities 1–2 are a large affine jitter,
# 3–5 a local wiggle; frost, snow and fog dip between some severities).
MONOTONE = {"gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur",
            "brightness", "contrast", "jpeg_compression"}


@pytest.fixture(scope="module")
def rgb32() -> torch.Tensor:
    """Four image-like 3×32×32 images: smooth random colour fields in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    return F.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def images(rgb32, digits) -> dict[str, torch.Tensor]:
    return {"rgb32": rgb32, "noise32": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
            "digits8": digits[0][:16]}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry():
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15
    assert corruption_names() == list(CORRUPTIONS)
    assert list(ALEXNET_ERRORS) == list(CORRUPTIONS)
    assert all(0.5 < e < 1 for e in ALEXNET_ERRORS.values())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_range(name, images):
    for x in images.values():
        for severity in range(1, 6):
            out = corrupt(x, name, severity, seeded())
            assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
            assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    x64 = images["rgb32"][:1].double()
    assert corrupt(x64, name, 3, seeded()).dtype == torch.float64


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_identity(name, images):
    for x in images.values():
        out = corrupt(x, name, 0)
        assert torch.equal(out, x) and out is not x


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_under_seed(name, rgb32):
    a = corrupt(rgb32, name, 3, seeded(7))
    assert torch.equal(a, corrupt(rgb32, name, 3, seeded(7)))
    assert torch.equal(corrupt(rgb32, name, 3), corrupt(rgb32, name, 3, seeded(0)))  # default: seed 0
    assert torch.equal(getattr(C, name)(rgb32, 3, seeded(7)), a)  # per-corruption function ≡ corrupt
    b = corrupt(rgb32, name, 3, seeded(8))
    assert torch.equal(a, b) == (name in DETERMINISTIC)
    assert not torch.equal(a, rgb32)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_change_grows_with_severity(name, images):
    for key in ("rgb32", "digits8"):
        x = images[key]
        dist = [float((corrupt(x, name, s, seeded()) - x).abs().mean()) for s in range(6)]
        assert dist[0] == 0, (key, dist)
        if name in MONOTONE:
            assert all(b >= a - 1e-6 for a, b in zip(dist, dist[1:])), (key, dist)
        if name == "elastic_transform":
            assert dist[5] > dist[4] > dist[3] > 0, (key, dist)
        elif name == "frost":  # a·x + b·frost: how far that lands from x depends on x's brightness; a falls
            corr = [float(torch.corrcoef(torch.stack((corrupt(x, name, s, seeded()).flatten(), x.flatten())))[0, 1])
                    for s in (1, 5)]
            assert corr[1] < corr[0] < 1, (key, corr)
        elif key == "rgb32":
            assert dist[5] > dist[1] and dist[5] > 0.01, (key, dist)
        else:  # a 10-px disk at 224 px is a 0.36-px disk at 8 px: defocus leaves digits unchanged
            assert dist[5] > dist[1] or (name == "defocus_blur" and dist[5] == 0), (key, dist)


def test_scale_parameters_follow_image_size():
    """Pixel-sized parameters scale with min(H, W) / 224, so corrupting a
    downscaled image is close to downscaling the corrupted image (for the
    corruptions whose random draws do not depend on the resolution)."""
    assert C._scale(torch.zeros(1, 1, 112, 448)) == 0.5
    g = seeded()
    x = F.interpolate(torch.rand(2, 3, 16, 16, generator=g), size=128, mode="bicubic", align_corners=False)
    x = x.clamp(0, 1)
    small = F.avg_pool2d(x, 4)
    for name in ("defocus_blur", "motion_blur", "zoom_blur", "fog"):
        expected = F.avg_pool2d(corrupt(x, name, 5), 4)
        mismatch = (corrupt(small, name, 5) - expected).abs().mean()
        assert mismatch < 0.3 * (expected - small).abs().mean(), name
    # A 3-px disk is a 0.1-px disk on digits: the identity, not an error.
    k = C._disk_kernel(3 * 8 / 224, 0.1 * 8 / 224, torch.zeros(1))
    assert float(k.max()) == pytest.approx(1) and float(k.sum()) == pytest.approx(1)


def test_brightness_matches_hsv_round_trip(rgb32):
    """V += c in HSV with H and S kept, checked against colorsys pixel by pixel."""
    import colorsys

    x = torch.cat((rgb32[:1, :, :4, :4], torch.zeros(1, 3, 1, 4)), 2).double()  # includes black pixels
    out = corrupt(x, "brightness", 3)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            h, s, v = colorsys.rgb_to_hsv(*x[0, :, i, j].tolist())
            expected = colorsys.hsv_to_rgb(h, s, min(v + 0.3, 1.0))
            assert out[0, :, i, j].tolist() == pytest.approx(expected, abs=1e-9)


def test_corruption_errors_grow_with_severity(trained_model, digits):
    x, y = digits[0][::2], digits[1][::2]  # 180 test digits
    clean = int((predict(trained_model, x) != y).sum()) / len(y)
    trained_model.train()
    try:
        errors = corruption_errors(trained_model, x, y, severities=(0, 1, 5), batch_size=128)
        assert trained_model.training  # mode restored
    finally:
        trained_model.eval()
    assert list(errors) == list(CORRUPTIONS)
    assert all(errors[n][0] == clean for n in CORRUPTIONS)
    mean = {s: np.mean([errors[n][s] for n in CORRUPTIONS]) for s in (0, 1, 5)}
    assert mean[5] > mean[1] > mean[0] + 0.05, mean
    assert errors["gaussian_noise"][5] > errors["gaussian_noise"][1]
    # Reproducible: the same seed gives the same table.
    again = corruption_errors(trained_model, x[:90], y[:90], names=["snow"], severities=[3], seed=3)
    assert again == corruption_errors(trained_model, x[:90], y[:90], names=["snow"], severities=[3], seed=3)


def test_mce_arithmetic():
    errors = {
        "gaussian_noise": {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8, 5: 1.0},
        "fog": {1: 0.1, 2: 0.1, 3: 0.2, 4: 0.3, 5: 0.3},
    }
    ce_noise = 100 * 0.6 / 0.886428
    ce_fog = 100 * 0.2 / 0.819324
    assert corruption_error(errors["fog"], ALEXNET_ERRORS["fog"]) == pytest.approx(ce_fog)
    assert mce(errors) == pytest.approx((ce_noise + ce_fog) / 2)
    # Per-severity baseline: CE = 100 · Σ_s E / Σ_s E_base.
    base = {"gaussian_noise": {s: 0.5 for s in range(1, 6)}, "fog": {1: 0.2, 2: 0.2, 3: 0.4, 4: 0.6, 5: 0.6}}
    assert mce(errors, base) == pytest.approx((100 * 3.0 / 2.5 + 100 * 1.0 / 2.0) / 2)
    # Clean error (severity 0) is not part of CE; AlexNet itself scores 100.
    assert corruption_error({0: 0.9, 1: 0.3}, 0.6) == pytest.approx(50)
    alexnet = {n: {s: e for s in range(1, 6)} for n, e in ALEXNET_ERRORS.items()}
    assert mce(alexnet) == pytest.approx(100)


def test_relative_mce_arithmetic():
    errors = {"snow": {1: 0.3, 2: 0.5}, "frost": {1: 0.2, 2: 0.2}}
    baseline = {"snow": {1: 0.5, 2: 0.7}, "frost": 0.6}  # a table and a severity-averaged number
    # snow: (0.2 + 0.4) / (0.2 + 0.4) = 100 %; frost: (0.1 + 0.1) / (2 · (0.6 − 0.3)) = 33.3 %.
    assert relative_mce(errors, 0.1, baseline, 0.3) == pytest.approx((100 + 100 / 3) / 2)
    # A model that loses exactly AlexNet's errors (whatever its clean error) scores 100.
    shifted = {n: {s: e - 0.2 for s in range(1, 6)} for n, e in ALEXNET_ERRORS.items()}
    assert relative_mce(shifted, 0.435 - 0.2, ALEXNET_ERRORS, 0.435) == pytest.approx(100)


def test_cifar10_c_reader(tmp_path):
    per, n = 4, 20
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # image i carries its index
    np.save(tmp_path / "fog.npy", images)
    np.save(tmp_path / "labels.npy", np.arange(n) % 10)
    ds = load_corrupted_folder(tmp_path, "fog", 3)
    assert len(ds) == per and ds.info.channels == 3 and ds.info.num_classes == 10
    x, y = ds.batch(slice(None))
    assert x.shape == (per, 3, 32, 32) and x.dtype == torch.float32 and x.max() <= 1
    assert (x[:, 0, 0, 0] * 255).round().long().tolist() == [8, 9, 10, 11]
    assert y.tolist() == [8, 9, 0, 1]
    assert len(load_corrupted_folder(tmp_path, "fog", 5, limit=2)) == 2
    with pytest.raises(FileNotFoundError, match="snow.npy"):
        load_corrupted_folder(tmp_path, "snow", 1)


def test_imagenet_c_reader(tmp_path):
    from torchvision.io import write_jpeg

    for wnid in ("n01440764", "n01443537"):
        folder = tmp_path / "contrast" / "2" / wnid
        folder.mkdir(parents=True)
        for i in range(2):
            write_jpeg(torch.full((3, 40, 40), 100 * i, dtype=torch.uint8), str(folder / f"img{i}.JPEG"))
    ds = load_corrupted_folder(tmp_path, "contrast", 2, size=32)
    assert len(ds) == 4 and ds.info.classes == ("n01440764", "n01443537")
    x, label = ds[3]
    assert x.shape == (3, 32, 32) and label == 1
    with pytest.raises(FileNotFoundError, match=r"contrast/1/<class>"):
        load_corrupted_folder(tmp_path, "contrast", 1)


def test_imagenet_a_indices_and_logits():
    idx = list(IMAGENET_A_INDICES)
    assert len(idx) == 200 and idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] <= 999
    assert idx[:5] == [6, 11, 13, 15, 17] and idx[-3:] == [986, 987, 988]
    logits = torch.randn(3, 1000, generator=seeded())
    sub = imagenet_a_logits(logits)
    assert sub.shape == (3, 200) and torch.equal(sub, logits[:, idx])
    logits[1, 988] = 100.0
    assert int(imagenet_a_logits(logits).argmax(1)[1]) == 199
    with pytest.raises(ValueError, match="logits_1000"):
        imagenet_a_logits(torch.zeros(3, 200))


def test_bad_input(rgb32, trained_model, digits):
    with pytest.raises(ValueError, match="name must be one of gaussian_noise, .*jpeg_compression"):
        corrupt(rgb32, "speckle_noise", 1)
    for severity in (-1, 6, 1.5, True):
        with pytest.raises(ValueError, match="severity"):
            corrupt(rgb32, "fog", severity)
    with pytest.raises(ValueError, match="x must have shape"):
        corrupt(rgb32[0], "fog", 1)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        corrupt(rgb32 * 2, "fog", 1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        corrupt(rgb32[:, :2], "fog", 1)
    with pytest.raises(TypeError, match="generator"):
        corrupt(rgb32, "fog", 1, generator=0)
    with pytest.raises(ValueError, match="names"):
        corruption_errors(trained_model, *digits, names=["blur"])
    with pytest.raises(ValueError, match="severities"):
        corruption_errors(trained_model, *digits, severities=[6])
    with pytest.raises(ValueError, match="baseline has no error for corruptions"):
        mce({"fog": {1: 0.5}}, {"snow": 0.5})
    with pytest.raises(ValueError, match="severity in 1..5"):
        corruption_error({0: 0.5}, 0.5)
    with pytest.raises(ValueError, match="severity"):
        load_corrupted_folder(".", "fog", 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_runs_on_gpu(name, rgb32):
    x = rgb32.cuda()
    out = corrupt(x, name, 5, torch.Generator(device="cuda").manual_seed(0))
    assert out.is_cuda and out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    # A CPU generator gives the CPU result up to floating-point differences.
    cpu = corrupt(rgb32, name, 5, seeded())
    assert (corrupt(x, name, 5, seeded()).cpu() - cpu).abs().mean() < 1e-3
