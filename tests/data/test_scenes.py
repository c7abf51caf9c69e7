"""Scenes for the dense attacks: images, masks, boxes and labels that agree."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from robustlab.data import scenes as scenes_module
from robustlab.data.scenes import (
    FASHION_SCENE_CLASSES,
    SHAPES,
    Scenes,
    detection_collate,
    make_scenes,
    shape_coverage,
)
from robustlab.data.sources import DataNotFoundError


@pytest.fixture(scope="module")
def shapes() -> Scenes:
    return make_scenes(24, source="shapes", size=48, max_objects=4, object_size=(12, 24), seed=3)


@pytest.fixture(scope="module")
def fashion() -> Scenes:
    try:
        return make_scenes(24, source="fashion_mnist", split="test", seed=1, download=False)
    except DataNotFoundError as err:
        pytest.skip(f"Fashion-MNIST files not installed: {err}")


def check_consistent(s: Scenes, size: int, max_objects: int) -> None:
    """Forms and ranges, and masks ≡ instances ≡ boxes ≡ labels, scene by scene."""
    n = len(s)
    assert s.images.shape == (n, 3, size, size) and s.images.dtype == torch.float32
    assert 0.0 <= float(s.images.min()) and float(s.images.max()) <= 1.0
    assert s.masks.shape == s.instances.shape == (n, size, size)
    assert s.masks.dtype == s.instances.dtype == torch.int64
    assert int(s.masks.min()) >= 0 and int(s.masks.max()) < s.num_classes
    assert len(s.boxes) == len(s.labels) == n
    for i in range(n):
        boxes, labels = s.boxes[i], s.labels[i]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert boxes.shape == (len(labels), 4) and 1 <= len(labels) <= max_objects
        assert bool(((labels >= 1) & (labels < s.num_classes)).all())
        assert int(s.instances[i].max()) == len(labels)
        assert torch.equal(s.masks[i] > 0, s.instances[i] > 0)
        for j, (box, label) in enumerate(zip(boxes, labels)):
            pixels = s.instances[i] == j + 1
            rows, cols = pixels.nonzero(as_tuple=True)
            # The box is the tight box of the object's visible pixels (x2, y2 one past the last pixel).
            expected = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
            assert torch.equal(box, expected)
            assert bool((s.masks[i][pixels] == label).all())


def test_shapes_scenes_are_consistent(shapes):
    check_consistent(shapes, 48, 4)
    assert shapes.num_classes == len(SHAPES) + 1 and shapes.classes == SHAPES
    # Objects are brighter than the dark background on average: the task is learnable.
    x = shapes.images.mean(1)
    assert float(x[shapes.masks > 0].mean()) > float(x[shapes.masks == 0].mean()) + 0.1


def test_fashion_scenes_are_consistent(fashion):
    check_consistent(fashion, 64, 3)
    assert fashion.num_classes == len(FASHION_SCENE_CLASSES) + 1
    assert fashion.classes == ("T-shirt/top", "Trouser", "Sneaker", "Bag", "Ankle boot")
    sides = torch.cat([b[:, 2:] - b[:, :2] for b in fashion.boxes]).amax(1)
    assert float(sides.max()) <= 32 and float(sides.min()) >= 5  # items rescaled into 20-32 px squares


def test_heavy_occlusion_keeps_boxes_on_visible_pixels():
    s = make_scenes(16, source="shapes", size=32, max_objects=6, object_size=(12, 20), max_overlap=1.0, seed=0)
    check_consistent(s, 32, 6)


def test_deterministic_under_seed(shapes):
    again = make_scenes(24, source="shapes", size=48, max_objects=4, object_size=(12, 24), seed=3)
    assert torch.equal(again.images, shapes.images) and torch.equal(again.masks, shapes.masks)
    assert all(torch.equal(a, b) for a, b in zip(again.boxes, shapes.boxes))
    other = make_scenes(24, source="shapes", size=48, max_objects=4, object_size=(12, 24), seed=4)
    test = make_scenes(24, source="shapes", size=48, max_objects=4, object_size=(12, 24), seed=3, split="test")
    assert not torch.equal(other.images, shapes.images) and not torch.equal(test.images, shapes.images)


def test_shapes_need_no_files(monkeypatch):
    def no_files(*args, **kwargs):
        raise AssertionError("the shapes source must not read a dataset")

    monkeypatch.setattr(scenes_module, "load_dataset", no_files)
    assert len(make_scenes(2, source="shapes", classes=["circle", "ring"])) == 2
    with pytest.raises(AssertionError, match="must not read"):
        make_scenes(2, source="fashion_mnist")


def test_class_subset_by_name_or_index():
    s = make_scenes(8, source="shapes", classes=["triangle", 0], seed=0)
    assert s.classes == ("triangle", "circle") and s.num_classes == 3
    assert set(torch.cat(s.labels).tolist()) <= {1, 2}


def test_dataset_views(shapes):
    image, mask = shapes[5]
    assert torch.equal(image, shapes.images[5]) and torch.equal(mask, shapes.masks[5])
    images, targets = next(iter(DataLoader(shapes.detection(), batch_size=4, collate_fn=detection_collate)))
    assert len(images) == len(targets) == 4
    assert torch.equal(targets[2]["boxes"], shapes.boxes[2]) and torch.equal(targets[2]["labels"], shapes.labels[2])
    sub = shapes.subset([3, 1])
    assert len(sub) == 2 and torch.equal(sub.masks[0], shapes.masks[3]) and sub.boxes[1] is shapes.boxes[1]
    assert len(shapes.subset(slice(0, 5))) == 5


def test_shape_coverage():
    assert float(shape_coverage("circle", 64).mean()) == pytest.approx(math.pi * 0.9 ** 2 / 4, rel=0.02)
    ring = shape_coverage("ring", 32)
    assert float(ring[16, 16]) == 0.0 and float(ring[16, 2]) == 1.0
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        shape_coverage("star", 16)


@pytest.mark.parametrize("kwargs,name", [
    ({"n": 0}, "n"), ({"n": 2.0}, "n"), ({"source": "coco"}, "source"), ({"size": 8}, "size"),
    ({"max_objects": 0}, "max_objects"), ({"object_size": (30, 20)}, "object_size"),
    ({"object_size": (10, 100)}, "object_size"), ({"object_size": 20}, "object_size"),
    ({"max_overlap": 1.5}, "max_overlap"), ({"split": "val"}, "split"), ({"classes": ["star"]}, "classes"),
    ({"classes": []}, "classes"), ({"classes": ["circle", 0]}, "classes"), ({"classes": [7]}, "classes"),
])
def test_bad_arguments(kwargs, name):
    args = {"n": 2, "source": "shapes", **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}"):
        make_scenes(args.pop("n"), **args)
