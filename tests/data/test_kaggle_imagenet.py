"""Kaggle's ImageNet release: class folders for training, but one flat folder
of validation images labelled by ``LOC_val_solution.csv``. Read as the same
images in class folders would be, through the API and the CLI; bad labels
are refused naming the file and the line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import robustlab as rl
from robustlab.app.cli import main
from robustlab.data.sources import DataNotFoundError

WNIDS = ("n01440764", "n01443537", "n01484850")  # ImageNet's first three classes, sorted


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """(Kaggle root, the same validation images in class folders)."""
    root = tmp_path_factory.mktemp("kaggle")
    images = root / "ILSVRC" / "Data" / "CLS-LOC"
    folders = tmp_path_factory.mktemp("folders")
    rng = np.random.default_rng(0)
    lines = ["ImageId,PredictionString"]
    for c, wnid in enumerate(WNIDS):
        (images / "train" / wnid).mkdir(parents=True)
        (folders / "val" / wnid).mkdir(parents=True)
        for i in range(2):
            a = rng.integers(0, 120, (20, 24, 3), dtype=np.uint8)
            a[..., c] = 230
            Image.fromarray(a).save(images / "train" / wnid / f"{wnid}_{i}.JPEG", quality=95)
    (images / "val").mkdir()
    for k in range(9):  # the classes interleaved, as Kaggle's val images are
        c = (k * 2) % 3
        a = rng.integers(0, 120, (20, 24, 3), dtype=np.uint8)
        a[..., c] = 230
        name = f"ILSVRC2012_val_{k + 1:08d}"
        Image.fromarray(a).save(images / "val" / f"{name}.JPEG", quality=95)
        shutil.copy(images / "val" / f"{name}.JPEG", folders / "val" / WNIDS[c] / f"{name}.JPEG")
        lines.append(f"{name},{WNIDS[c]} 1 2 18 20 {WNIDS[c]} 0 0 9 9 ")  # boxes after the wnid, as Kaggle's
    (root / "LOC_val_solution.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    (root / "FACTORY.py").write_text("import torch\nfrom torch import nn\n\n\ndef linear():\n"
                                     "    torch.manual_seed(0)\n    return nn.Sequential(nn.Flatten(), "
                                     "nn.Linear(3 * 16 * 16, 3))\n")
    return root, folders


def test_the_flat_validation_folder_reads_as_its_class_folders_would(trees, caplog):
    root, folders = trees
    with caplog.at_level("INFO", logger="robustlab"):
        rl.data.load_dataset(f"imagefolder:{root}", "val", size=16)
    assert f"holds its 9 images itself: labelled by {root / 'LOC_val_solution.csv'} (3 classes)" in caplog.text
    for spec in (root, root / "ILSVRC" / "Data" / "CLS-LOC"):  # Kaggle's root, or the images' own
        flat = rl.data.load_dataset(f"imagefolder:{spec}", "test", size=16)
        same = rl.data.load_dataset(f"imagefolder:{folders}", "test", size=16)
        assert flat.info.classes == same.info.classes == WNIDS and len(flat) == len(same) == 9
        x, y = rl.data.load_tensors(flat, workers=0)
        x_ref, y_ref = rl.data.load_tensors(same, workers=0)
        assert torch.equal(y, y_ref) and torch.equal(x, x_ref) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        # the colour of each image is its class
        assert (x.mean((2, 3)).argmax(1) == y).all()
    assert rl.data.load_dataset(f"imagefolder:{root}", "train", size=16).info.classes == WNIDS
    limited = rl.data.load_dataset(f"imagefolder:{root}", "test", size=16, limit=3)
    assert sorted(int(limited[i][1]) for i in range(3)) == [0, 1, 2]  # every k-th image: every class


def test_eval_of_the_flat_folder_equals_eval_of_its_class_folders(trees, tmp_path):
    root, folders = trees
    figures = []
    for name, data in (("flat", root), ("folders", folders)):
        assert main(["-q", "eval", "--model", f"{root / 'FACTORY.py'}:linear", "--data", f"imagefolder:{data}",
                     "--image-size", "16", "--protocol", "quick", "--eps", "4/255", "--option", "steps=2",
                     "--device", "cpu", "--out", str(tmp_path / name)]) == 0
        res = json.loads((tmp_path / name / "results.json").read_text())
        figures.append((res["n"], res["clean_accuracy"], res["robust_accuracy"]))
    assert figures[0] == figures[1] and figures[0][0] == 9


def test_bad_labels_are_refused_naming_the_file_and_line(trees, tmp_path, capsys):
    root, _ = trees
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    csv = bad / "LOC_val_solution.csv"
    text = csv.read_text().splitlines()
    csv.write_text("\n".join(text[:-1]) + "\n")  # the last line's image is unlabelled
    with pytest.raises(ValueError, match=r"1 image\(s\) of .*val have no line in .*LOC_val_solution.csv "
                                         r"\(ILSVRC2012_val_00000001.JPEG\)"):
        rl.data.load_dataset(f"imagefolder:{bad}", "test", size=16)
    csv.write_text("\n".join([*text[:3], "ILSVRC2012_val_00000001", *text[3:]]) + "\n")
    with pytest.raises(ValueError, match=r"LOC_val_solution.csv line 4: expected ImageId,PredictionString"):
        rl.data.load_dataset(f"imagefolder:{bad}", "test", size=16)
    out = tmp_path / "run"
    assert main(["attack", "--model", f"{root / 'FACTORY.py'}:linear", "--data", f"imagefolder:{bad}",
                 "--image-size", "16", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "line 4: expected ImageId,PredictionString" in err and "Traceback" not in err and not out.exists()
    csv.unlink()  # no labels at all: the hint names the file it looks for
    with pytest.raises(DataNotFoundError, match="LOC_val_solution.csv"):
        rl.data.load_dataset(f"imagefolder:{bad}", "test", size=16)


def test_a_run_trains_on_kaggles_root_and_is_evaluated_on_its_flat_validation_folder(trees, tmp_path):
    import yaml

    root, _ = trees
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 0, "device": "cpu", "model": {"name": "smallcnn", "width": 4},
                                   "recipe": {"name": "vanilla"}, "train": {"epochs": 1, "batch_size": 2},
                                   "eval": {"attack": None}, "data": {"name": f"imagefolder:{root}", "size": 16}}))
    assert main(["-q", "train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert main(["-q", "eval", "--checkpoint", str(tmp_path / "run"), "--data", f"imagefolder:{root}",
                 "--image-size", "16", "--protocol", "quick", "--eps", "4/255", "--option", "steps=2",
                 "--device", "cpu", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["n"] == 9


# ------------------------------------------------------------------ image-net.org's devkit

DEVKIT_IDS = {1: "n15075141", 2: "n01440764", 3: "n01443537"}  # the devkit's own order, not the wnids' sorted one


def _devkit(root, ids: list[int], *, archive: bool = False) -> None:
    """An ILSVRC2012 devkit of three leaf classes and one parent synset: meta.mat written by scipy as MATLAB
    writes a struct array, and the ground truth (line N: image N's ILSVRC2012_ID)."""
    import tarfile

    from scipy.io import savemat

    rows = [(i, w, 0) for i, w in DEVKIT_IDS.items()] + [(1001, "n00001740", 3)]
    synsets = np.array(rows, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    if archive:
        with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
            tar.add(root / "ILSVRC2012_devkit_t12", "ILSVRC2012_devkit_t12")
        shutil.rmtree(root / "ILSVRC2012_devkit_t12")


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_a_flat_val_folder_reads_its_labels_from_the_devkit(tmp_path, archive):
    """The ground truth's IDs name classes by meta.mat's synsets, whose order is not the sorted wnids': read
    as indices of the sorted wnids, every label below would be wrong."""
    pytest.importorskip("scipy")
    root, folders = tmp_path / "imagenet", tmp_path / "folders"
    ids = [1, 3, 2, 2, 1, 3, 3]
    (root / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n, i in enumerate(ids, 1):
        c = sorted(DEVKIT_IDS.values()).index(DEVKIT_IDS[i])
        a = rng.integers(0, 120, (20, 20, 3), dtype=np.uint8)
        a[..., c] = 230
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        Image.fromarray(a).save(root / "val" / name, quality=95)
        (folders / "val" / DEVKIT_IDS[i]).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "val" / name, folders / "val" / DEVKIT_IDS[i] / name)
    _devkit(root, [*ids, 2], archive=archive)  # a label past the images held: a copy of some of them
    flat = rl.data.load_dataset(f"imagefolder:{root}", "val", size=16)
    same = rl.data.load_dataset(f"imagefolder:{folders}", "val", size=16)
    assert flat.info.classes == same.info.classes == ("n01440764", "n01443537", "n15075141")
    x, y = rl.data.load_tensors(flat, workers=0)
    x_ref, y_ref = rl.data.load_tensors(same, workers=0)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref) and (x.mean((2, 3)).argmax(1) == y).all()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "ILSVRC2012_val_00000009.JPEG")
    with pytest.raises(ValueError, match=r"ILSVRC2012_val_00000009.JPEG is no ILSVRC2012_val_NNNNNNNN image of "
                                         r"the devkit's 8 labels"):
        rl.data.load_dataset(f"imagefolder:{root}", "val", size=16)


def test_a_devkit_without_scipy_names_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    (tmp_path / "val").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "ILSVRC2012_devkit_t12" / "data").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match=r"pip install 'robustlab\[imagenet\]'"):
        rl.data.load_dataset(f"imagefolder:{tmp_path}", "val", size=16)
    out = tmp_path / "run"
    assert main(["attack", "--model", "smallcnn", "--data", f"imagefolder:{tmp_path}", "--split", "test",
                 "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs scipy" in err and "Traceback" not in err and not out.exists()


def test_a_devkit_that_is_not_one_is_named(tmp_path):
    pytest.importorskip("scipy")
    (tmp_path / "val").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    _devkit(tmp_path, [2, 1001])  # 1001 is the parent synset's ID: no class
    with pytest.raises(ValueError, match=r"ILSVRC2012_validation_ground_truth.txt holds '1001', no ILSVRC2012_ID of "
                                         r"meta.mat's 3 classes"):
        rl.data.load_dataset(f"imagefolder:{tmp_path}", "val", size=16)
    shutil.rmtree(tmp_path / "ILSVRC2012_devkit_t12")
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(ValueError, match=r"is not ImageNet's devkit archive with ILSVRC2012_devkit_t12/data/meta.mat"):
        rl.data.load_dataset(f"imagefolder:{tmp_path}", "val", size=16)
