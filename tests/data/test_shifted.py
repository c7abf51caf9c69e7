"""Readers of Table 7.1's shifted test sets (Stylized-ImageNet, ImageNet-A) on
generated class-folder trees, and accuracy over a class subset's logits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from robustlab.data import DataNotFoundError
from robustlab.data.shifted import class_names, read_class_folder
from robustlab.eval.shifted import folder_accuracy, restrict_logits

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")


def _png(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size[::-1], 3), value, dtype=np.uint8)).save(path)


def _tree(root: Path, layout: dict[str, int], suffix: str = ".png") -> Path:
    """``layout``: class folder → number of images; image k of class c has gray level 40·c + k."""
    for c, (folder, n) in enumerate(layout.items()):
        for k in range(n):
            _png(root / folder / f"img{k}{suffix}", 40 * c + k)
    return root


def test_stylized_tree_labels_by_the_training_classes_and_crops_to_the_model_size(tmp_path):
    root = _tree(tmp_path / "sin", {CLASSES[2]: 2, CLASSES[0]: 3})
    ds = read_class_folder(root, CLASSES, kind="stylized", size=8, channels=3)
    assert len(ds) == 5 and ds.present == (0, 2) and not ds.restrict
    labels = sorted(ds[i][1] for i in range(len(ds)))
    assert labels == [0, 0, 0, 2, 2]  # the training set's indices, not the folder's order
    x, _ = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    gray = read_class_folder(root, CLASSES, size=6, channels=1)
    assert gray[0][0].shape == (1, 6, 6)
    assert len(read_class_folder(root, CLASSES, size=8, limit=2)) == 2


def test_folders_may_be_named_by_index_or_with_slashes_replaced(tmp_path):
    root = _tree(tmp_path / "t", {"1": 1, "T-shirt_top": 1, ".hidden": 0})
    ds = read_class_folder(root, ("T-shirt/top", "Trouser"), size=8, channels=1)
    assert sorted(label for _, label in ds.samples) == [0, 1]


def test_imagenet_a_restricts_accuracy_to_the_classes_present(tmp_path):
    root = _tree(tmp_path / "ina", {CLASSES[1]: 2, CLASSES[3]: 2}, suffix=".JPEG")
    ds = read_class_folder(root, CLASSES, kind="imagenet_a", size=8, channels=3)
    assert ds.restrict and ds.present == (1, 3)

    class Fixed(nn.Module):  # always prefers class 0, then the true class
        def forward(self, x):
            logits = torch.zeros(len(x), 4)
            logits[:, 0] = 10.0
            logits[:, 1] = 5.0 * (x.mean((1, 2, 3)) < 0.1)  # class 1's images are the darker ones
            logits[:, 3] = 5.0 * (x.mean((1, 2, 3)) >= 0.1)
            return logits

    model = Fixed()
    assert folder_accuracy(model, ds, batch_size=3) == 0.0  # over all logits: always class 0
    assert folder_accuracy(model, ds, classes=ds.present, batch_size=3) == 1.0
    z = restrict_logits(torch.arange(8.0).view(2, 4), [0, 2])
    assert z.argmax(1).tolist() == [2, 2] and torch.isinf(z[:, [1, 3]]).all()
    with pytest.raises(ValueError, match="classes must be"):
        restrict_logits(torch.zeros(2, 4), [4])


@pytest.mark.parametrize("make, error, fragment", [
    (lambda root: None, DataNotFoundError, "is not a folder"),
    (lambda root: root.mkdir(), DataNotFoundError, "no class folders"),
    (lambda root: _png(root / "a.png", 3), ValueError, "holds images directly"),
    (lambda root: _tree(root, {"n99999999": 1}), ValueError, "name no class of the training set"),
    (lambda root: (root / CLASSES[0]).mkdir(parents=True), ValueError, "holds no images"),
    (lambda root: _tree(root / CLASSES[0], {"3": 1}), ValueError, "holds sub-folders, not images"),
])
def test_bad_layouts_are_refused_naming_the_path_and_the_layout(tmp_path, make, error, fragment):
    root = tmp_path / "tree"
    make(root)
    with pytest.raises(error) as err:
        read_class_folder(root, CLASSES, size=8)
    assert fragment in str(err.value) and str(root) in str(err.value)
    assert "ROOT/CLASS/IMAGE" in str(err.value)


def test_bad_arguments_and_class_names():
    with pytest.raises(ValueError, match="kind must be one of"):
        read_class_folder(".", CLASSES, kind="imagenet_c")
    with pytest.raises(ValueError, match="channels must be 1"):
        read_class_folder(".", CLASSES, channels=2)
    assert class_names("digits") == tuple(str(i) for i in range(10))
    assert class_names("cifar10") == tuple(str(i) for i in range(10))
    assert class_names("fashion_mnist")[0] == "T-shirt/top"
    with pytest.raises(ValueError, match="unknown dataset"):
        class_names("imagenet")


def test_class_names_of_an_image_folder(tmp_path):
    _tree(tmp_path / "data" / "train", {"b": 1, "a": 1})
    assert class_names(f"imagefolder:{tmp_path / 'data'}") == ("a", "b")
