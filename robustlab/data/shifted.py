"""Shifted test sets of Table 7.1, read from folders: Stylized-ImageNet
(Geirhos et al., ICLR 2019: ImageNet images re-painted in the style of
paintings) and ImageNet-A (Hendrycks et al., CVPR 2021: natural adversarial
examples of 200 ImageNet classes).

Both are class folders, ``ROOT/CLASS/IMAGE`` (Stylized-ImageNet's ``val``
folder; ImageNet-A's release, one folder per wnid). A folder names a class
of the *training* set — its name there (an ImageNet wnid such as
``n01440764``; ``/`` written as ``_``) or its index ``0..K-1`` — and its
images get that class's index, so the labels are the model's own. ImageNet-A
holds only some of the classes, and is scored on those alone: the model's
logits are restricted to the classes present (``ShiftedFolder.present``),
as ImageNet-A's 1000-class models are scored on its 200 classes
(:func:`robustlab.eval.corruption.imagenet_a_logits`).

Images are pre-processed like ImageFolder evaluation images
(:func:`robustlab.data.folder.eval_transform`: resize the shorter side to
size·256/224, centre crop to size), as gray when the model takes one channel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from robustlab.data.info import IMAGENET_MEAN, IMAGENET_STD, INFO, DatasetInfo
from robustlab.data.sources import DataNotFoundError

#: Image file suffixes read (those of torchvision's ImageFolder), in any case (ImageNet's ``.JPEG``).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
KINDS = ("stylized", "imagenet_a")
_LAYOUT = "ROOT/CLASS/IMAGE: one folder per class of the training set, named as the training set names it " \
          "or by its index, holding the images"


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES


def class_names(dataset: str, data_dir: str | Path | None = None) -> tuple[str, ...]:
    """The training classes of ``dataset`` (a ``load_dataset`` name), index
    order: ImageFolder's sorted class folders of ``ROOT/train``, the named
    classes of the built-in sets, else ``"0".."K-1"``."""
    if dataset.startswith("imagefolder:"):
        from robustlab.data.folder import _find_split, split_root

        folder = _find_split(split_root(dataset.split(":", 1)[1]), "train")
        return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if dataset not in INFO:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(INFO)} or imagefolder:ROOT")
    info = INFO[dataset]
    return tuple(info.classes) or tuple(str(i) for i in range(info.num_classes))


def _label_of(folder: str, classes: tuple[str, ...]) -> int | None:
    names = {c: i for i, c in enumerate(classes)}
    names.update({c.replace("/", "_"): i for i, c in enumerate(classes) if c.replace("/", "_") not in names})
    if folder in names:
        return names[folder]
    if folder.isdigit() and int(folder) < len(classes) and str(int(folder)) == folder:
        return int(folder)
    return None


class ShiftedFolder(Dataset):
    """([0, 1] image (C, size, size), training-class index) pairs of a class-folder tree.

    Attributes:
        samples: (path, label) of every image kept.
        classes: the training classes (index order).
        present: sorted indices of the training classes the tree holds.
        restrict: whether accuracy is taken over ``present``'s logits only (ImageNet-A).
        info: the :class:`DatasetInfo` (the training set's classes).
    """

    def __init__(self, samples: list[tuple[Path, int]], classes: tuple[str, ...], present: tuple[int, ...], *,
                 size: int, channels: int, restrict: bool, name: str) -> None:
        from robustlab.data.folder import eval_transform

        self.samples, self.classes, self.present, self.restrict = samples, classes, present, restrict
        self.channels, self.transform = channels, eval_transform(size)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels, (0.5,) * channels)
        self.info = DatasetInfo(name, len(classes), channels, size, mean, std, classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as img:
            img = img.convert("L" if self.channels == 1 else "RGB")
            return self.transform(img), label


def read_class_folder(root: str | Path, classes: tuple[str, ...] | list[str], *, kind: str = "stylized",
                      size: int = 224, channels: int = 3, limit: int | None = None) -> ShiftedFolder:
    """The images of the class-folder tree ``root`` (``ROOT/CLASS/IMAGE``),
    labelled by ``classes`` (the training set's, :func:`class_names`).

    ``kind``: ``stylized`` (every class may appear; accuracy over all logits)
    or ``imagenet_a`` (accuracy over the present classes' logits only).
    ``limit`` keeps a class-mixed subset (every k-th image).

    Raises:
        DataNotFoundError: ``root`` is not a folder, or holds no class folders.
        ValueError: a bad layout — images directly under ``root``, a folder
            that names no training class, a class folder without images (or
            with sub-folders instead); the message names the path and the
            layout expected.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB); got {channels!r}")
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes must name the training set's classes (at least one)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"{kind}: {root} is not a folder; expected {_LAYOUT}")
    entries = sorted(root.iterdir())
    loose = [p.name for p in entries if _is_image(p)]
    if loose:
        raise ValueError(f"{kind}: {root} holds images directly ({', '.join(loose[:3])}, ...); expected {_LAYOUT}")
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        raise DataNotFoundError(f"{kind}: no class folders in {root}; expected {_LAYOUT}")
    labels = {p: _label_of(p.name, classes) for p in folders}
    unknown = [p.name for p, k in labels.items() if k is None]
    if unknown:
        raise ValueError(f"{kind}: folder(s) {unknown[:5]} of {root} name no class of the training set "
                         f"(its {len(classes)} classes: {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}"
                         f"); expected {_LAYOUT}")
    samples: list[tuple[Path, int]] = []
    for folder, label in labels.items():
        images = sorted(p for p in folder.iterdir() if _is_image(p))
        if not images:
            inside = "sub-folders, not images" if any(p.is_dir() for p in folder.iterdir()) else "no images"
            raise ValueError(f"{kind}: class folder {folder} holds {inside} (suffixes {', '.join(IMAGE_SUFFIXES)}); "
                             f"expected {_LAYOUT}")
        samples += [(p, int(label)) for p in images]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer or None; got {limit!r}")
        if limit < len(samples):
            samples = [samples[int(i * len(samples) / limit)] for i in range(limit)]
    present = tuple(sorted({int(k) for k in labels.values()}))
    return ShiftedFolder(samples, classes, present, size=size, channels=channels, restrict=kind == "imagenet_a",
                         name=f"{kind}:{root}")


def describe(ds: ShiftedFolder) -> dict[str, Any]:
    """What an evaluation records about the tree it read."""
    return {"images": len(ds), "classes_present": len(ds.present), "classes": len(ds.classes),
            "restricted_to_present": ds.restrict}
