"""The evaluations that hold their images (eval's curve protocols, a study's
evaluations) on an ImageFolder, which is streamed, not in memory: the same
images and labels as load_dataset yields, in batches, through the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import robustlab as rl
from robustlab.app.cli import main

FACTORY = """
import torch
from torch import nn


def linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))


def other():
    return linear(1)


def ten():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c in range(3):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 120, (20, 24, 3), dtype=np.uint8)
                a[..., c] = 230
                Image.fromarray(a).save(d / f"{i}.png")
    (root / "mine.py").write_text(FACTORY)
    return root


def test_load_tensors_of_a_folder_are_its_items_in_order(folder):
    ds = rl.data.load_dataset(f"imagefolder:{folder}", "test", size=16)
    x, y = rl.data.load_tensors(ds, workers=0)
    assert x.shape == (12, 3, 16, 16) and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert all(torch.equal(x[i], ds[i][0]) for i in range(12))
    mem = rl.data.load_dataset("digits", "test", limit=10)
    assert all(torch.equal(a, b) for a, b in zip(rl.data.load_tensors(mem), mem.batch(slice(0, 10))))


def test_eval_curve_protocols_run_on_a_folder(folder, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["-q", "eval", "--model", f"{folder / 'mine.py'}:linear", "--model", f"{folder / 'mine.py'}:other",
                 "--data", f"imagefolder:{folder}", "--image-size", "16", "--protocol", "all", "--eps", "8/255",
                 "--steps", "1,3", "--batch-size", "5", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    x, y = rl.data.load_tensors(rl.data.load_dataset(f"imagefolder:{folder}", "test", size=16))
    mod = {}
    exec(FACTORY, mod)
    for name, factory in (("linear", mod["linear"]), ("other", mod["other"])):
        expected = rl.eval.metrics.accuracy(factory(), x, y)
        assert res["models"][name]["clean_accuracy"] == pytest.approx(expected)
        assert len(res["models"][name]["corruption"]["errors"]) == 15
    assert set(res["transfer"]["success"]) == {"ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm"}
    # flatten heads take one input size: the input-diversity attacks resize their padded images back
    assert res["transfer"]["resize_back"] == ["linear", "other"]
    assert set(res["transfer"]["success"]["di2fgsm"]) == {"linear", "other"}


def test_a_study_on_a_folder_evaluates_its_models(folder, tmp_path):
    study = {"name": "folder", "seed": 0, "device": "cpu", "dataset": f"imagefolder:{folder}",
             "defaults": {"model": {"name": "smallcnn", "width": 4}, "data": {"size": 16},
                          "train": {"epochs": 1, "batch_size": 8}, "eval": {"attack": None}},
             "models": {"a": {"recipe": {"name": "vanilla"}}},
             "evaluations": {"clean": {"kind": "accuracy"},
                             "robust": {"kind": "robust", "protocol": "quick", "eps": 8, "limit": 6}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "run"
    assert main(["-q", "study", str(path), "--out", str(out)]) == 0
    ev = json.loads((out / "evaluations" / "robust.json").read_text())
    text = json.dumps(ev)
    assert '"n": 6' in text or "6" in text
    model = rl.models.load_model(out / "models" / "a")
    x, y = rl.data.load_tensors(rl.data.load_dataset(f"imagefolder:{folder}", "test", size=16))
    clean = json.loads((out / "evaluations" / "clean.json").read_text())
    assert f"{rl.eval.metrics.accuracy(model, x, y):.6f}"[:6] in json.dumps(clean)


def test_attack_with_resize_back_runs_input_diversity_on_a_model_of_one_input_size(folder, tmp_path):
    out = tmp_path / "atk"
    assert main(["-q", "attack", "--model", f"{folder / 'mine.py'}:linear", "--data", f"imagefolder:{folder}",
                 "--image-size", "16", "--attack", "di2fgsm", "--resize-back", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert "resize_back=True" in res["attack"]["diversity"] and res["attack"]["p"] == 0.5
    assert res["summary"]["eps_violations"] == 0 and res["summary"]["linf_max_255"] <= 15 + 1e-3


@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_unreadable_image_is_named_without_a_traceback(folder, tmp_path, capsys, workers):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    png = bad / "val" / "class1" / "2.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated
    assert main(["-q", "eval", "--model", f"{folder / 'mine.py'}:linear", "--data", f"imagefolder:{bad}",
                 "--image-size", "16", "--protocol", "quick", "--eps", "8/255", "--workers", workers,
                 "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert f"imagefolder: {png} is not a readable image" in err and "remove or replace it" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


TRAIN = {"seed": 0, "device": "cpu", "model": {"name": "smallcnn", "width": 4}, "recipe": {"name": "vanilla"},
         "train": {"epochs": 1, "batch_size": 8}, "eval": {"attack": None}}


def _train_config(tmp_path, data, **sections):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**TRAIN, "data": data, **sections}))
    return str(path)


def test_an_unreadable_test_image_keeps_the_epoch_trained_before_it(folder, tmp_path, capsys):
    """A truncated validation image failed the end-of-epoch evaluation after the epoch's training, which was
    thrown away (no checkpoint): on ImageNet, an epoch. The checkpoint is now written first."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    png = bad / "val" / "class2" / "1.png"
    png.write_bytes(png.read_bytes()[:60])
    out = tmp_path / "run"
    cfg = _train_config(tmp_path, {"name": f"imagefolder:{bad}", "size": 16})
    assert main(["-q", "train", cfg, "--out", str(out)]) == 2
    assert f"{png} is not a readable image" in capsys.readouterr().err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000003"]


def test_a_tree_without_an_evaluation_split_is_refused_not_read_as_classes(folder, tmp_path, capsys):
    import shutil

    only_train = tmp_path / "only_train"
    shutil.copytree(folder / "train", only_train / "train")
    with pytest.raises(rl.data.DataNotFoundError, match=r"has no test/ or val/ split \(it has train/\)"):
        rl.data.load_dataset(f"imagefolder:{only_train}", "test", size=16)
    out = tmp_path / "run"
    assert main(["train", _train_config(tmp_path, {"name": f"imagefolder:{only_train}", "size": 16}),
                 "--out", str(out)]) == 2
    assert "has no test/ or val/ split" in capsys.readouterr().err and not out.exists()
    flat = rl.data.load_dataset(f"imagefolder:{folder / 'val'}", "test", size=16)  # ROOT/CLASS/IMAGE: itself
    assert len(flat) == 12 and flat.info.classes == ("class0", "class1", "class2")
    # Training on such a folder evaluated on the training images themselves, without a word: refused.
    assert main(["train", _train_config(tmp_path, {"name": f"imagefolder:{folder / 'val'}", "size": 16}),
                 "--out", str(out)]) == 2
    assert "would also be the ones evaluated" in capsys.readouterr().err and not out.exists()
    # A batch larger than the training set was refused after the run directory was made, which then blocked
    # the corrected command.
    assert main(["train", _train_config(tmp_path, {"name": f"imagefolder:{folder}", "size": 16}),
                 "train.batch_size=64", "--out", str(out)]) == 2
    assert "train.batch_size (64) is larger than the training set (24 images)" in capsys.readouterr().err
    assert not out.exists()


def test_splits_with_other_classes_are_refused_before_training(folder, tmp_path, capsys):
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    (mixed / "val" / "class2").rename(mixed / "val" / "class9")
    out = tmp_path / "run"
    assert main(["train", _train_config(tmp_path, {"name": f"imagefolder:{mixed}", "size": 16}),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the test split's classes differ from the train split's" in err and "'class9'" in err
    assert not out.exists()


def test_a_sixteen_bit_png_keeps_its_values(tmp_path):
    root = tmp_path / "deep" / "val" / "c"
    root.mkdir(parents=True)
    a = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 … 65280
    Image.fromarray(a).save(root / "x.png")
    assert Image.open(root / "x.png").mode.startswith("I;16")
    x = rl.data.load_dataset(f"imagefolder:{tmp_path / 'deep'}", "test", size=14)[0][0]  # resize 16: a crop
    expected = torch.from_numpy((a[1:15, 1:15] / 65535 * 255).round() / 255).float()
    assert torch.allclose(x[0], expected, atol=1.5 / 255) and float(x.max()) < 0.95  # not clipped to white


def test_a_grayscale_run_is_evaluated_and_attacked_on_the_folder_read_as_grayscale(folder, tmp_path):
    """A network trained with data.channels: 1 (refused before) is fed the folder in grayscale by eval and attack,
    which read it as RGB for any other model."""
    out = tmp_path / "gray"
    cfg = _train_config(tmp_path, {"name": f"imagefolder:{folder}", "size": 16, "channels": 1})
    assert main(["-q", "train", cfg, "--out", str(out)]) == 0
    trained = json.loads((out / "results.json").read_text())["final"]["clean_acc"]
    assert main(["-q", "eval", "--model", str(out), "--data", f"imagefolder:{folder}", "--image-size", "16",
                 "--protocol", "quick", "--eps", "8", "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert ev["n"] == 12 and ev["models"]["gray"]["clean_accuracy"] == pytest.approx(trained)
    assert main(["-q", "attack", "--model", str(out), "--data", f"imagefolder:{folder}", "--image-size", "16",
                 "--split", "test", "--steps", "2", "--no-save", "--out", str(tmp_path / "atk")]) == 0
    with pytest.raises(ValueError, match=r"RGB \(3\) or grayscale \(1\)"):
        rl.data.load_dataset(f"imagefolder:{folder}", "test", channels=4)


def test_robustlab_train_trains_a_users_factory_model(folder, tmp_path, capsys):
    (tmp_path / "net.py").write_text("import torch\nfrom torch import nn\n\n\ndef make():\n"
                                     "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))\n")
    out = tmp_path / "run"
    cfg = _train_config(tmp_path, {"name": f"imagefolder:{folder}", "size": 16},
                        model={"name": f"{tmp_path / 'net.py'}:make"})
    assert main(["-q", "train", cfg, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 3 and 0 <= res["final"]["clean_acc"] <= 1
    assert json.loads((out / "model.json").read_text())["kind"] is None  # weights only: the factory rebuilds it
    data = ["--data", f"imagefolder:{folder}", "--image-size", "16", "--protocol", "quick", "--eps", "8"]
    assert main(["-q", "eval", "--model", str(out), *data, "--out", str(tmp_path / "ev")]) == 2
    said = f"pass --model {tmp_path / 'net.py'}:make --weights {out / 'model.safetensors'}"
    assert said in capsys.readouterr().err  # the command that works, not load_model's internals
    assert main(["-q", "eval", *said.split()[1:], *data, "--out", str(tmp_path / "ev")]) == 0
    with pytest.raises(ValueError, match=r"is your own network; the options \['width'\] apply to"):
        rl.app.train.build_model(rl.app.config.resolve({**TRAIN, "model": {"name": f"{tmp_path / 'net.py'}:make",
                                                                           "width": 4}}), None,
                                 rl.train.recipes.create("vanilla"))


def test_a_model_option_of_the_wrong_type_is_named():
    with pytest.raises(ValueError, match=r"model options width='abc': smallcnn's constructor refused them"):
        rl.models.create_model("smallcnn", 10, width="abc")


def test_model_refusals_leave_no_run_directory(folder, tmp_path, capsys):
    (tmp_path / "m.py").write_text("import torch\nfrom torch import nn\n\n\nclass Tup(nn.Module):\n"
                                   "    def __init__(self):\n        super().__init__()\n"
                                   "        self.f = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))\n\n"
                                   "    def forward(self, x):\n        return self.f(x), x\n\n\n"
                                   "def tup():\n    return Tup()\n\n\n"
                                   "def flat():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))\n")
    cases = [(["eval", "--model", f"{tmp_path / 'm.py'}:tup"], "must return a logits tensor"),
             (["eval", "--model", f"{tmp_path / 'm.py'}:flat", "--image-size", "20"], "it fails on the data's"),
             (["attack", "--model", f"{tmp_path / 'm.py'}:tup"], "must return a logits tensor"),
             (["eval", "--model", f"{tmp_path / 'm.py'}:flat", "--mean", "123.7,116.3,103.5", "--std",
               "58.4,57.1,57.4"], "divide 0-255 values by 255")]
    for i, (args, fragment) in enumerate(cases):
        out = tmp_path / f"new{i}" / "deeper" / "run"  # the parents made for it go too
        extra = [] if "--image-size" in args else ["--image-size", "16"]
        assert main([*args, "--data", f"imagefolder:{folder}", *extra, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err and not (tmp_path / f"new{i}").exists(), (args, err)


def test_other_class_names_are_refused_and_some_of_the_classes_are_scored_over_them(folder, tmp_path, capsys):
    """A class folder renamed in the evaluation copy shifted every label (clean 33% against 67%), without a word:
    a trained run records its classes in model.json, and eval and attack refuse data named otherwise."""
    import shutil

    out = tmp_path / "run"
    assert main(["-q", "train", _train_config(tmp_path, {"name": f"imagefolder:{folder}", "size": 16}),
                 "--out", str(out)]) == 0
    assert json.loads((out / "model.json").read_text())["meta"]["classes"] == ["class0", "class1", "class2"]
    renamed = tmp_path / "renamed"
    shutil.copytree(folder / "val", renamed / "val")
    (renamed / "val" / "class2").rename(renamed / "val" / "aclass")
    for command in (["eval", "--protocol", "quick", "--eps", "8"], ["attack", "--split", "test", "--steps", "1"]):
        assert main(["-q", *command, "--model", str(out), "--data", f"imagefolder:{renamed}", "--image-size", "16",
                     "--out", str(tmp_path / command[0])]) == 2
        err = capsys.readouterr().err
        assert "its classes differ from the 3 that" in err and "only in the data: ['aclass']" in err
        assert not (tmp_path / command[0]).exists()

    # a folder of two of its classes is scored over their two outputs, as the trained network reads them
    some = tmp_path / "some"
    for c in ("class0", "class2"):
        shutil.copytree(folder / "val" / c, some / "val" / c)
    assert main(["-q", "eval", "--protocol", "quick", "--option", "steps=1", "--model", str(out), "--data",
                 f"imagefolder:{some}", "--image-size", "16", "--out", str(tmp_path / "some-eval")]) == 0
    results = json.loads((tmp_path / "some-eval" / "results.json").read_text())
    assert results["models"]["run"]["outputs"] == {"of": "the classes it was trained on", "outputs": 3,
                                                   "indices": [0, 2]}
    x, y = rl.data.load_tensors(rl.data.load_dataset(f"imagefolder:{some}", "test", size=16))
    with torch.no_grad():
        right = (rl.models.load_model(out).eval()(x)[:, [0, 2]].argmax(1) == y).float().mean().item()
    assert results["clean_accuracy"] == pytest.approx(right, abs=1e-6)


def test_a_model_with_more_outputs_than_the_folder_has_classes_is_warned(folder, tmp_path):
    """A 10-output network on a 3-class folder ran without a word: label i is the folder's i-th class, which
    is the model's class i only by luck. Equal counts say nothing."""
    for name, said in (("ten", True), ("linear", False)):
        out = tmp_path / name
        assert main(["-q", "eval", "--model", f"{folder / 'mine.py'}:{name}", "--data", f"imagefolder:{folder}",
                     "--image-size", "16", "--protocol", "quick", "--option", "steps=1", "--out", str(out)]) == 0
        warnings = json.loads((out / "results.json").read_text())["models"][name]["warnings"]
        assert any("the model has 10 outputs and the data 3 classes (class0, class1, class2)" in w
                   for w in warnings) is said
    out = tmp_path / "corruption"  # a curve protocol says it too, in its results and its report
    assert main(["-q", "eval", "--model", f"{folder / 'mine.py'}:ten", "--data", f"imagefolder:{folder}",
                 "--image-size", "16", "--protocol", "corruption", "--out", str(out)]) == 0
    warnings = json.loads((out / "results.json").read_text())["models"]["ten"]["warnings"]
    assert len(warnings) == 1 and "the model has 10 outputs and the data 3 classes" in warnings[0]
    assert "the model has 10 outputs and the data 3 classes" in (out / "report.html").read_text()
