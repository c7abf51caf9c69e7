"""Corruption robustness (thesis §7.5): ImageNet-C errors, mCE and relative mCE
(Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019), readers for ImageNet-C and
CIFAR-10-C trees on disk, and ImageNet-A's 200-class subset (Hendrycks et al.,
"Natural Adversarial Examples", CVPR 2021).

The thesis reports AdvProp's gains as mCE on ImageNet-C (lower is better; an
AlexNet scores 100) and top-1 accuracy on ImageNet-A.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from robustlab._checks import check_batch
from robustlab._progress import progress
from robustlab.data.corruptions import CORRUPTIONS, corrupt
from robustlab.data.datasets import TensorImageDataset
from robustlab.data.info import IMAGENET_MEAN, IMAGENET_STD, INFO, DatasetInfo
from robustlab.eval.metrics import predict

_logger = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)

# AlexNet's top-1 error on each ImageNet-C corruption, averaged over severities
# 1–5: the normalizer of CE (the ImageNet-C authors' figures, Hendrycks &
# Dietterich 2019). Keyed by name since peers order the corruptions differently.
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204,
    "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}

# The 200 ImageNet-1k classes of ImageNet-A, as indices into the 1000 classes
# (``indices_in_1k`` of the ImageNet-A release, hendrycks/natural-adv-examples).
IMAGENET_A_INDICES: tuple[int, ...] = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96, 97, 99, 105, 107,
    108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254, 277, 283, 287, 291, 295, 298, 301,
    306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319, 323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363,
    372, 378, 386, 397, 400, 401, 402, 404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438, 445, 456, 457, 461,
    462, 470, 472, 483, 486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543, 549, 552, 557, 561, 562, 569, 572,
    573, 575, 579, 589, 606, 607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704,
    719, 736, 746, 749, 752, 758, 763, 765, 768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804, 813, 815,
    820, 823, 831, 833, 835, 839, 845, 847, 850, 859, 862, 870, 879, 880, 888, 890, 897, 900, 907, 913, 924, 932,
    933, 934, 937, 943, 945, 947, 951, 954, 956, 957, 959, 971, 972, 980, 981, 984, 986, 987, 988,
)

ErrorTable = Mapping[str, Mapping[int, float]]  # corruption → severity → top-1 error in [0, 1]
Baseline = Mapping[str, float | Mapping[int, float]]  # corruption → severity-averaged error or table


# ---------------------------------------------------------------- errors under on-the-fly corruptions


def _check_names(names: Sequence[str]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(f"names must be a non-empty list of {', '.join(CORRUPTIONS)}; got {names!r}")
    return names


def _check_severities(severities: Sequence[int], low: int = 0) -> list[int]:
    severities = list(severities)
    if not severities or any(isinstance(s, bool) or not isinstance(s, int) or not low <= s <= 5 for s in severities):
        raise ValueError(f"severities must be a non-empty list of integers in {low}..5; got {severities!r}")
    return severities


def corruption_errors(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    names: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, dict[int, float]]:
    """Top-1 error E(c, s) of ``model`` on ``x: (N, C, H, W)`` in [0, 1] corrupted
    on the fly by every corruption c of ``names`` at every severity s of
    ``severities`` (0 = clean), as {name: {severity: error}}.

    The model runs in eval mode and gets its modes back (``predict``); images
    are corrupted on the model's device, ``batch_size`` at a time. Each (c, s)
    draws from its own generator seeded ``seed``, so a cell does not depend on
    which other cells are computed, and the severities of a corruption share
    their random draws (common random numbers: error curves are smoother)."""
    check_batch(x, {"y": y})
    names, severities = _check_names(names), _check_severities(severities)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    y = y.to(device)
    table: dict[str, dict[int, float]] = {}
    with progress(len(names) * len(severities), "corruption", "cell") as bar:
        for name in names:
            table[name] = {}
            for severity in severities:
                generator = torch.Generator(device=device).manual_seed(seed)
                wrong = 0
                for i in range(0, len(x), batch_size):
                    xb = corrupt(x[i: i + batch_size].to(device), name, severity, generator)
                    wrong += int((predict(model, xb, batch_size) != y[i: i + batch_size]).sum())
                table[name][severity] = wrong / len(x)
                bar.update(1)
            _logger.debug("corruption %s: errors %s", name, table[name])
            bar.set_postfix(last=name)
    return table


# ---------------------------------------------------------------- CE, mCE, relative mCE


def _corrupted_severities(errors_c: Mapping[int, float]) -> list[int]:
    severities = sorted(s for s in errors_c if s != 0)
    if not severities:
        raise ValueError(f"errors need at least one severity in 1..5; got severities {sorted(errors_c)}")
    return severities


def _baseline_total(baseline_c: float | Mapping[int, float], severities: list[int], clean: float = 0.0) -> float:
    """Σ_s (baseline(c, s) − clean) over ``severities``; a scalar baseline is the
    baseline's error averaged over severities, so the sum is len · (scalar − clean)."""
    if isinstance(baseline_c, Mapping):
        missing = [s for s in severities if s not in baseline_c]
        if missing:
            raise ValueError(f"baseline has no error for severities {missing}")
        total = sum(float(baseline_c[s]) - clean for s in severities)
    else:
        total = len(severities) * (float(baseline_c) - clean)
    if total <= 0:
        raise ValueError(f"the baseline's (excess) error must be positive to normalize by; got a total of {total:g}")
    return total


def corruption_error(errors_c: Mapping[int, float], baseline_c: float | Mapping[int, float]) -> float:
    """Corruption Error of one corruption c, in percent:

        CE_c = 100 · Σ_s E(c, s) / Σ_s E_base(c, s)

    over the severities s in ``errors_c`` (severity 0, the clean error, is not
    part of CE). Hendrycks & Dietterich normalize by AlexNet, s = 1..5.
    ``baseline_c`` is either the baseline's per-severity errors {s: E_base(c, s)}
    or one number, its error averaged over severities 1–5 (as ``ALEXNET_ERRORS``),
    which makes CE_c = 100 · mean_s E(c, s) / baseline_c."""
    severities = _corrupted_severities(errors_c)
    return 100 * sum(float(errors_c[s]) for s in severities) / _baseline_total(baseline_c, severities)


def _baseline_for(names: list[str], baseline: Baseline) -> None:
    missing = [n for n in names if n not in baseline]
    if missing:
        raise ValueError(f"baseline has no error for corruptions {missing}")


def mce(errors: ErrorTable, baseline: Baseline = ALEXNET_ERRORS) -> float:
    """Mean Corruption Error, in percent: mCE = mean over the corruptions c of
    ``errors`` of CE_c (``corruption_error``). With the default baseline
    (AlexNet's published per-corruption errors) an AlexNet scores 100; the
    benchmark's number uses all 15 corruptions at severities 1–5. ``baseline``
    may also be another model's {name: {severity: error}} table."""
    names = list(errors)
    if not names:
        raise ValueError("errors must hold at least one corruption")
    _baseline_for(names, baseline)
    return sum(corruption_error(errors[n], baseline[n]) for n in names) / len(names)


def relative_mce(errors: ErrorTable, clean_error: float, baseline_errors: Baseline, baseline_clean_error: float
                 ) -> float:
    """Relative mCE, in percent: how much accuracy a model loses under
    corruption compared with the baseline's loss,

        relative CE_c = 100 · Σ_s (E(c, s) − E_clean) / Σ_s (E_base(c, s) − E_base,clean)

    and relative mCE = mean over c of relative CE_c (Hendrycks & Dietterich;
    the paper gives AlexNet's clean error as 43.5 %). A model whose errors all
    rise by as much as AlexNet's scores 100, whatever its clean error. Errors
    are fractions in [0, 1]; ``baseline_errors`` values are per-severity tables
    or severity-averaged numbers, as in ``corruption_error``."""
    names = list(errors)
    if not names:
        raise ValueError("errors must hold at least one corruption")
    _baseline_for(names, baseline_errors)
    total = 0.0
    for n in names:
        severities = _corrupted_severities(errors[n])
        excess = sum(float(errors[n][s]) - clean_error for s in severities)
        total += 100 * excess / _baseline_total(baseline_errors[n], severities, float(baseline_clean_error))
    return total / len(names)


# ---------------------------------------------------------------- corrupted datasets on disk


def _imagenet_c(folder: Path, name: str, severity: int, size: int) -> Dataset:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    # ImageNet-C images are stored already resized and centre-cropped to 224 px:
    # only a centre crop, not folder.image_folder's resize-then-crop (which would
    # zoom in by 256/224).
    ds = ImageFolder(str(folder), transform=T.Compose([T.CenterCrop(size), T.ToTensor()]))
    ds.info = DatasetInfo(f"imagenet-c:{name}/{severity}", len(ds.classes), 3, size, IMAGENET_MEAN, IMAGENET_STD,
                          tuple(ds.classes))
    return ds


def _cifar_c(images_path: Path, labels_path: Path, name: str, severity: int) -> TensorImageDataset:
    images = np.load(images_path, mmap_mode="r")
    labels = np.load(labels_path, mmap_mode="r")
    if images.ndim != 4 or len(images) % 5 or len(labels) != len(images):
        raise ValueError(
            f"{images_path} must hold 5 severities × n images (N, H, W, C) with one label each in {labels_path}; "
            f"got images {images.shape}, labels {labels.shape}"
        )
    per = len(images) // 5
    part = slice((severity - 1) * per, severity * per)
    x = torch.from_numpy(np.array(images[part])).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.asarray(labels[part]).astype(np.int64))
    base = INFO["cifar10"]
    info = DatasetInfo(f"cifar10-c:{name}/{severity}", base.num_classes, x.shape[1], x.shape[2], base.mean,
                       base.std, base.classes)
    return TensorImageDataset(x, y, info)


def load_corrupted_folder(root: str | Path, name: str, severity: int, *, limit: int | None = None,
                          size: int = 224) -> Dataset:
    """The images of corruption ``name`` at ``severity`` (1–5) from a tree on disk,
    as a Dataset of ([0, 1] image, label) with an ``info`` attribute:

    - ImageNet-C: ``root/<name>/<severity>/<wnid>/*.JPEG`` (ImageFolder; the
      stored 224-px images are centre-cropped to ``size``);
    - CIFAR-10-C: ``root/<name>.npy`` of 5 × 10000 uint8 (N, 32, 32, 3) images,
      severity 1 first, and ``root/labels.npy``.

    ``limit`` keeps a class-mixed subset (every k-th image). Raises
    FileNotFoundError naming the paths expected when neither layout is found."""
    if name not in CORRUPTIONS:
        raise ValueError(f"name must be one of {', '.join(CORRUPTIONS)}; got {name!r}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5 (corrupted sets hold no clean images); got {severity!r}")
    root = Path(root).expanduser()
    folder, array, labels = root / name / str(severity), root / f"{name}.npy", root / "labels.npy"
    if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
        ds = _imagenet_c(folder, name, severity, size)
    elif array.is_file() and labels.is_file():
        ds = _cifar_c(array, labels, name, severity)
    else:
        raise FileNotFoundError(
            f"no {name} severity {severity} images under {root}. Expected either\n"
            f"  {folder}/<class>/*.JPEG (ImageNet-C layout), or\n"
            f"  {array} and {labels} (CIFAR-10-C layout)"
        )
    if limit is not None and limit < len(ds):
        keep = [int(i * len(ds) / limit) for i in range(limit)]
        if isinstance(ds, TensorImageDataset):
            return TensorImageDataset(ds.images[keep], ds.labels[keep], ds.info)
        info, ds = ds.info, Subset(ds, keep)
        ds.info = info
    return ds


# ---------------------------------------------------------------- ImageNet-A


def imagenet_a_logits(logits_1000: Tensor) -> Tensor:
    """(N, 200) logits of the ImageNet-A classes from a 1000-class ImageNet
    model's (N, 1000) logits; ImageNet-A accuracy is the argmax over these
    against the dataset's 0..199 labels."""
    if not isinstance(logits_1000, Tensor) or logits_1000.dim() != 2 or logits_1000.shape[1] != 1000:
        shape = tuple(logits_1000.shape) if isinstance(logits_1000, Tensor) else type(logits_1000).__name__
        raise ValueError(f"logits_1000 must be ImageNet logits of shape (N, 1000); got {shape}")
    index = torch.tensor(IMAGENET_A_INDICES, device=logits_1000.device)
    return logits_1000.index_select(1, index)
