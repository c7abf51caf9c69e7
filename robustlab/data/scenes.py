"""Scenes for the dense attacks of thesis ch. 2: a few objects on a textured
canvas, with a per-pixel label map (semantic segmentation: every pixel is a
target, §2.3.1) and boxes (object detection: the proposals around the
objects are the targets, §2.3.2).

Two sources:

- ``fashion_mnist``: real Fashion-MNIST items (default: T-shirt/top, Trouser,
  Sneaker, Bag, Ankle boot: five classes of distinct silhouettes; Dress,
  Pullover, Coat and Shirt are too alike at 20–32 px) rescaled to
  ``object_size`` pixels, horizontally flipped at random and composited on
  the canvas. The item's gray level g modulates a random tint (colour carries
  no class information, so a model has to learn shapes); the object's pixels
  are those with g > ``MASK_THRESHOLD`` (0.1).
- ``shapes``: procedural circle, square, triangle, cross and ring with random
  colours, rotation and size; needs no files.

Objects are placed by rejection so that they overlap little (at most
``max_overlap`` of either object's pixels); a later object occludes an
earlier one and every box is recomputed from the pixels that stay visible.
Labels follow torchvision's detection convention: 0 is the background,
k = index + 1 the k-th entry of ``classes``; masks use the same numbers, so a
segmenter and a detector of one :class:`Scenes` share ``num_classes``
(background included). Masks have no ignore pixels (255, ``IGNORE_INDEX``,
never occurs): the faint item edges under the threshold are background.

Everything is drawn from one ``torch.Generator`` seeded by ``seed`` and the
split, so a call is deterministic; ``split`` also picks the Fashion-MNIST
split the items come from, and the same seed gives different train and test
layouts.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from robustlab.data.datasets import load_dataset
from robustlab.data.info import FASHION_CLASSES

SOURCES = ("fashion_mnist", "shapes")
SHAPES = ("circle", "square", "triangle", "cross", "ring")
FASHION_SCENE_CLASSES = (0, 1, 7, 8, 9)  # T-shirt/top, Trouser, Sneaker, Bag, Ankle boot
MASK_THRESHOLD = 0.1
IGNORE_INDEX = 255
_SPLIT_STREAM = {"train": 0, "test": 1}
_PLACEMENT_TRIES = 30


@dataclass(eq=False)
class Scenes(Dataset):
    """N scenes. As a Dataset, item i is ``(image, mask)`` for segmentation;
    :meth:`detection` is the (image, target) view for torchvision detectors.

    images: (N, 3, H, W) float in [0, 1]; masks: (N, H, W) int64, 0 background,
    k = class k (1-based); instances: (N, H, W) int64, 0 background, j + 1 the
    j-th object of the scene; boxes[i]: (K_i, 4) float xyxy, the bounding box
    of the object's visible pixels (x2, y2 one past the last pixel, as
    torchvision draws boxes); labels[i]: (K_i,) int64, 1-based.
    """

    images: Tensor
    masks: Tensor
    instances: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    classes: tuple[str, ...]
    source: str

    @property
    def num_classes(self) -> int:
        """Classes including the background."""
        return len(self.classes) + 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.masks[i]

    def target(self, i: int) -> dict[str, Tensor]:
        """Scene i as a torchvision detection target ``{"boxes", "labels"}``."""
        return {"boxes": self.boxes[i], "labels": self.labels[i]}

    def detection(self) -> SceneDetection:
        return SceneDetection(self)

    def subset(self, index: Sequence[int] | slice) -> Scenes:
        """The scenes at ``index`` (a slice or a sequence of positions)."""
        idx = list(range(len(self)))[index] if isinstance(index, slice) else [int(i) for i in index]
        pos = torch.as_tensor(idx, dtype=torch.long)
        return Scenes(self.images[pos], self.masks[pos], self.instances[pos], [self.boxes[i] for i in idx],
                      [self.labels[i] for i in idx], self.classes, self.source)


class SceneDetection(Dataset):
    """Detection view of :class:`Scenes`: item i is ``(image, {"boxes", "labels"})``;
    batch it with :func:`detection_collate`."""

    def __init__(self, scenes: Scenes) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.scenes.images[i], self.scenes.target(i)


def detection_collate(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict]]:
    """(list of images, list of target dicts), the input form of torchvision detectors."""
    return [b[0] for b in batch], [b[1] for b in batch]


def make_scenes(
    n: int,
    *,
    source: str = "fashion_mnist",
    size: int = 64,
    max_objects: int = 3,
    object_size: tuple[int, int] = (20, 32),
    max_overlap: float = 0.15,
    split: str = "train",
    seed: int = 0,
    classes: Sequence[int | str] | None = None,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> Scenes:
    """``n`` scenes of ``size``×``size`` pixels with 1 to ``max_objects`` objects each.

    Args:
        source: ``fashion_mnist`` (real items; files found as by
            :func:`~robustlab.data.load_dataset`) or ``shapes`` (no files).
        object_size: (low, high) side in pixels of an object's square, drawn
            uniformly; Fashion-MNIST items are 28×28 images rescaled to it.
        max_overlap: the largest share of an object's pixels that another
            object may cover.
        split: ``train`` or ``test``: the Fashion-MNIST split, and a separate
            random stream, so train and test scenes differ under one seed.
        classes: Fashion-MNIST class indices or names (default
            ``FASHION_SCENE_CLASSES``), or shape names (default ``SHAPES``).
    """
    _check_args(n, source, size, max_objects, object_size, max_overlap, split)
    names = _resolve_classes(source, classes)
    gen = torch.Generator().manual_seed(int(seed) * len(_SPLIT_STREAM) + _SPLIT_STREAM[split])
    if source == "fashion_mnist":
        draw = _fashion_drawer(names, split, data_dir, download)
    else:
        draw = _shape_drawer(names)
    images = torch.empty(n, 3, size, size)
    instances = torch.zeros(n, size, size, dtype=torch.long)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    boxes, labels = [], []
    for i in range(n):
        images[i], instances[i], masks[i], b, lab = _compose(draw, len(names), size, max_objects, object_size,
                                                             max_overlap, gen)
        boxes.append(b)
        labels.append(lab)
    return Scenes(images, masks, instances, boxes, labels, names, source)


def _check_args(n: object, source: object, size: object, max_objects: object, object_size: object,
                max_overlap: object, split: object) -> None:
    def positive_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if not positive_int(n):
        raise ValueError(f"n must be a positive integer; got {n!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}; got {source!r}")
    if not positive_int(size) or size < 16:
        raise ValueError(f"size must be an integer >= 16; got {size!r}")
    if not positive_int(max_objects):
        raise ValueError(f"max_objects must be a positive integer; got {max_objects!r}")
    if (not isinstance(object_size, Sequence) or len(object_size) != 2 or not all(map(positive_int, object_size))
            or not 4 <= object_size[0] <= object_size[1] <= size):
        raise ValueError(f"object_size must be (low, high) integers with 4 <= low <= high <= size={size}; "
                         f"got {object_size!r}")
    if not isinstance(max_overlap, (int, float)) or not 0.0 <= max_overlap <= 1.0:
        raise ValueError(f"max_overlap must be in [0, 1]; got {max_overlap!r}")
    if split not in _SPLIT_STREAM:
        raise ValueError(f"split must be one of {tuple(_SPLIT_STREAM)}; got {split!r}")


def _resolve_classes(source: str, classes: Sequence[int | str] | None) -> tuple[str, ...]:
    known = FASHION_CLASSES if source == "fashion_mnist" else SHAPES
    if classes is None:
        classes = FASHION_SCENE_CLASSES if source == "fashion_mnist" else SHAPES
    if isinstance(classes, (str, int)) or len(classes) == 0:
        raise ValueError(f"classes must be a non-empty sequence of {source} class indices or names; got {classes!r}")
    names = []
    for c in classes:
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(known):
            names.append(known[c])
        elif isinstance(c, str) and c in known:
            names.append(c)
        else:
            raise ValueError(f"classes: {c!r} is not a {source} class; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes must not repeat; got {classes!r}")
    return tuple(names)


# A drawer turns (class position, side, generator) into the object's (s, s)
# intensity in [0, 1]: the item's gray levels, or a shape's coverage.
def _fashion_drawer(names: tuple[str, ...], split: str, data_dir: str | Path | None, download: bool):
    ds = load_dataset("fashion_mnist", split, data_dir=data_dir, download=download)
    pools = [ds.images[ds.labels == FASHION_CLASSES.index(name)] for name in names]

    def draw(k: int, side: int, gen: torch.Generator) -> Tensor:
        pool = pools[k]
        item = pool[int(torch.randint(len(pool), (1,), generator=gen))].float().div(255)[None]
        item = F.interpolate(item, size=(side, side), mode="bilinear", align_corners=False,
                             antialias=side < item.shape[-1])[0, 0].clamp(0, 1)
        return item.flip(-1) if bool(torch.rand((), generator=gen) < 0.5) else item

    return draw


def _shape_drawer(names: tuple[str, ...]):
    def draw(k: int, side: int, gen: torch.Generator) -> Tensor:
        return shape_coverage(names[k], side, float(torch.rand((), generator=gen)) * 2 * math.pi)

    return draw


def shape_coverage(name: str, side: int, angle: float = 0.0) -> Tensor:
    """(side, side) share of each pixel inside the shape (4× supersampled),
    the shape rotated by ``angle`` radians about the square's centre."""
    s = 4 * side
    t = (torch.arange(s) + 0.5) / s * 2 - 1
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    c, si = math.cos(angle), math.sin(angle)
    u, v = c * xx + si * yy, -si * xx + c * yy
    r = torch.sqrt(xx ** 2 + yy ** 2)
    if name == "circle":
        inside = r < 0.9
    elif name == "ring":
        inside = (r < 0.9) & (r > 0.5)
    elif name == "square":
        inside = (u.abs() < 0.63) & (v.abs() < 0.63)
    elif name == "cross":
        inside = ((u.abs() < 0.28) & (v.abs() < 0.9)) | ((v.abs() < 0.28) & (u.abs() < 0.9))
    elif name == "triangle":  # equilateral, circumradius 0.9: inside all three edge half-planes
        inside = torch.ones_like(r, dtype=torch.bool)
        for j in range(3):
            a = angle + math.pi / 2 + 2 * math.pi * j / 3 + math.pi / 3
            inside &= xx * math.cos(a) + yy * math.sin(a) < 0.45
    else:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    return F.avg_pool2d(inside.float()[None, None], 4)[0, 0]


def _background(size: int, gen: torch.Generator) -> Tensor:
    """A dark textured canvas: a random base colour, low-frequency colour
    blotches and pixel noise, in about [0, 0.45]."""
    base = 0.05 + 0.2 * torch.rand(3, 1, 1, generator=gen)
    blotches = F.interpolate(torch.randn(1, 3, size // 8, size // 8, generator=gen), size=(size, size),
                             mode="bicubic", align_corners=False)[0]
    noise = torch.randn(3, size, size, generator=gen)
    return (base + 0.08 * blotches + 0.03 * noise).clamp(0, 1)


def _tint(gen: torch.Generator) -> Tensor:
    """A random colour whose brightest channel is in [0.7, 1]: items stay brighter than the background."""
    c = torch.rand(3, generator=gen)
    return (c / c.max().clamp_min(1e-6) * (0.7 + 0.3 * torch.rand((), generator=gen))).view(3, 1, 1)


def _compose(draw, num_kinds: int, size: int, max_objects: int, object_size: tuple[int, int], max_overlap: float,
             gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One scene: image, instance map, label map, boxes, labels."""
    image = _background(size, gen)
    instances = torch.zeros(size, size, dtype=torch.long)
    placed: list[tuple[int, Tensor]] = []  # (class position, full-canvas mask as drawn)
    count = int(torch.randint(1, max_objects + 1, (1,), generator=gen))
    for _ in range(count):
        k = int(torch.randint(num_kinds, (1,), generator=gen))
        side = int(torch.randint(object_size[0], object_size[1] + 1, (1,), generator=gen))
        g = draw(k, side, gen)
        for _ in range(_PLACEMENT_TRIES):
            y, x = (int(v) for v in torch.randint(size - side + 1, (2,), generator=gen))
            canvas = torch.zeros(size, size)
            canvas[y:y + side, x:x + side] = g
            m = canvas > MASK_THRESHOLD
            if _fits(m, [p for _, p in placed], max_overlap):
                break
        else:
            continue  # no room for this object: the scene keeps fewer objects
        # Opaque where the item is bright, soft at its faint edges; the gray level shades the tint.
        alpha = (2 * canvas).clamp(max=1)
        image = image * (1 - alpha) + alpha * canvas * _tint(gen)
        placed.append((k, m))
        instances[m] = len(placed)
    return (image.clamp(0, 1), *_visible_objects(instances, [k for k, _ in placed]))


def _visible_objects(drawn: Tensor, kinds: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Instance map renumbered over the objects left visible, label map, boxes of the visible pixels, labels."""
    instances, masks = torch.zeros_like(drawn), torch.zeros_like(drawn)
    boxes, labels = [], []
    for j, k in enumerate(kinds):
        visible = drawn == j + 1
        if not bool(visible.any()):  # fully covered by later objects (only with a large max_overlap)
            continue
        rows, cols = visible.any(1).nonzero().flatten(), visible.any(0).nonzero().flatten()
        boxes.append(torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32))
        labels.append(k + 1)
        instances[visible] = len(labels)
        masks[visible] = k + 1
    return (instances, masks, torch.stack(boxes) if boxes else torch.zeros(0, 4),
            torch.tensor(labels, dtype=torch.long))


def _fits(m: Tensor, others: list[Tensor], max_overlap: float) -> bool:
    area = int(m.sum())
    if area == 0:
        return False
    for o in others:
        inter = int((m & o).sum())
        if inter > max_overlap * area or inter > max_overlap * int(o.sum()):
            return False
    return True
