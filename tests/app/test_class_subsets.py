"""A model scored over some of its classes: an ImageNet-1k model on a folder
of fewer ImageNet classes named by wnid (Imagenette, ImageNet-100), and a
run on a folder of some of the classes it was trained on. Before, the
folder's labels 0..K-1 were read as the model's outputs 0..K-1 (tench,
goldfish, …) whatever the folder's classes were."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from robustlab.app.cli import main
from robustlab.data.info import imagenet_wnids, subset_indices
from robustlab.models import ClassSubset

WNIDS = ("n01440764", "n02102040", "n15075141")  # tench, English springer, toilet tissue: ImageNet 0, 217, 999
BRIGHTNESS = (0.2, 0.5, 0.8)

# 1000 logits: output 500 is always the highest, and of 0, 217 and 999 the one nearest the image's mean
# brightness is: an image's class is right only when the logits are read at its wnid's index.
FACTORY = """
import torch
from torch import nn


class Decoy(nn.Module):
    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        near = torch.stack([-(m - v).abs() * 10 for v in (0.2, 0.5, 0.8)], 1)
        base = torch.zeros(x.shape[0], 1000, device=x.device)
        base[:, 500] = 10.0
        return base.index_copy(1, torch.tensor([0, 217, 999], device=x.device), near)


def decoy():
    return Decoy()
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same 12 images under wnid class folders and under class0..class2."""
    root = tmp_path_factory.mktemp("subsets")
    rng = np.random.default_rng(0)
    for c, v in enumerate(BRIGHTNESS):
        for i in range(4):
            a = np.clip(v * 255 + rng.integers(-10, 11, (16, 16, 3)), 0, 255).astype(np.uint8)
            for tree, name in (("wnid", WNIDS[c]), ("plain", f"class{c}")):
                d = root / tree / "val" / name
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(d / f"{i}.png")
    (root / "mine.py").write_text(FACTORY)
    return root


def test_the_imagenet_wnids_are_the_thousand_in_class_index_order():
    wnids = imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert [wnids.index(w) for w in WNIDS] == [0, 217, 999]
    assert subset_indices(WNIDS, wnids) == (0, 217, 999)
    assert subset_indices(wnids, wnids) is None and subset_indices(["n00000000"], wnids) is None
    assert subset_indices(["b", "a"], ["a", "b"]) == (1, 0)  # the same classes in another order are mapped


def test_class_subset_reads_the_outputs_it_keeps():
    net = torch.nn.Linear(4, 6)
    x = torch.randn(3, 4, requires_grad=True)
    out = ClassSubset(net, [5, 0, 2])(x)
    assert torch.equal(out, net(x)[:, [5, 0, 2]])
    out.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    for bad in ([], [1, 1], [-1]):
        with pytest.raises(ValueError, match="indices must"):
            ClassSubset(net, bad)
    with pytest.raises(ValueError, match="keeps output 9 but the model gives 6 outputs"):
        ClassSubset(net, [9])(x)


def test_narrow_classifier_keeps_the_rows_of_the_classes_it_keeps():
    from robustlab.models import narrow_classifier

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6))
    x = torch.randn(3, 4)
    before = net(x).detach()
    assert narrow_classifier(net, [5, 0, 2], 6) == "2"
    assert net[2].out_features == 3 and torch.allclose(net(x), before[:, [5, 0, 2]])
    with pytest.raises(ValueError, match="does not output its 6 classes"):
        narrow_classifier(net, [0], 6)  # already narrowed: its last Linear has 3 outputs
    for bad, said in (([], "a non-empty list"), ([1, 1], "not repeat an output"), ([-1], "indices >= 0"),
                      ([3], "outputs below 3")):
        with pytest.raises(ValueError, match=f"indices must (.* )?{said}"):
            narrow_classifier(net, bad, 3)
    assert net[2].out_features == 3  # refused before any change


def test_an_imagenet_model_on_a_folder_of_wnids_is_scored_over_their_outputs(folders, tmp_path):
    factory = f"{folders / 'mine.py'}:decoy"
    runs = {}
    for tree in ("wnid", "plain"):
        out = runs[tree] = tmp_path / tree
        assert main(["-q", "eval", "--model", factory, "--data", f"imagefolder:{folders / tree}", "--image-size",
                     "16", "--protocol", "quick", "--option", "steps=2", "--eps", "8", "--device", "cpu",
                     "--out", str(out)]) == 0
    wnid = json.loads((runs["wnid"] / "results.json").read_text())
    plain = json.loads((runs["plain"] / "results.json").read_text())
    assert wnid["clean_accuracy"] == 1.0 and plain["clean_accuracy"] == 0.0  # output 500 wins over all 1000
    assert wnid["models"]["decoy"]["outputs"] == {"of": "ImageNet-1k", "outputs": 1000, "indices": [0, 217, 999]}
    assert "outputs" not in plain["models"]["decoy"]
    assert not [w for w in wnid["warnings"] if "outputs and the data" in w]
    assert [w for w in plain["warnings"] if "the model has 1000 outputs and the data 3 classes" in w]
    assert "scored over the 3 outputs of the data&#39;s classes of its 1000 (ImageNet-1k)" in \
        (runs["wnid"] / "report.html").read_text()

    out = tmp_path / "attack"  # attack scores it the same way, and moves images to another of the three
    assert main(["-q", "attack", "--model", factory, "--data", f"imagefolder:{folders / 'wnid'}", "--split", "test",
                 "--image-size", "16", "--attack", "pgd", "--eps", "96", "--steps", "10", "--device", "cpu",
                 "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["outputs"]["indices"] == [0, 217, 999] and record["clean_accuracy"] == 1.0
    assert record["success_rate_on_correct"] > 0.5
