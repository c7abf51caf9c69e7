"""`robustlab train` with the user's own network (``model.name: file.py:factory``)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robustlab.app.cli import main
from robustlab.models.factory import load_weights

TINY = ["data.name=digits", "data.limit=128", "data.eval_limit=32", "eval.limit=16", "eval.steps=1",
        "train.epochs=1", "train.batch_size=64"]
NETS = '''
import torch
from torch import nn

def good():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10))

def three_logits():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

def for_32px():
    return nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))

def broken():
    raise RuntimeError("my factory broke")

def no_bn():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "typo.py").write_text("def good(:\n    pass\n")
    return tmp_path


@pytest.mark.parametrize(("spec", "recipe", "message"), [
    ("nets.py:three_logits", "train_vanilla", "must return logits of shape (N, 10) for the 10 classes"),
    ("nets.py:for_32px", "train_vanilla", "on the training images: model: it fails on the data's (1, 8, 8) images"),
    ("nets.py:broken", "train_vanilla", "broken() raised RuntimeError: my factory broke at"),
    ("typo.py:good", "train_vanilla", "typo.py has a syntax error at line 1"),
    ("nets.py:no_bn", "train_advprop", "has no BatchNorm layers to give them"),
])
def test_a_network_that_cannot_train_is_refused_before_the_run_directory(nets, capsys, spec, recipe, message):
    """10 logits for 3 classes trained without a word; the others ended in tracebacks after config.yaml and
    run.json were written, and that half-written folder then refused the corrected command."""
    assert main(["train", recipe, *TINY, f"model.name={spec}", "--out", str(nets / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (nets / "run").exists()


def test_a_packaged_config_trains_your_network_and_advprop_gives_it_routes(nets, capsys):
    """train_advprop's SmallCNN options (width: 16) are not passed to the factory; its batch norms become
    mixture BNs for training, and the exported weights load into the plain network the factory builds."""
    out = nets / "ap"
    assert main(["train", "train_advprop", *TINY, "model.name=nets.py:good", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"].get("width") is None
    assert any(k.startswith("train_acc") for k in results["final"])
    import importlib.util

    spec = importlib.util.spec_from_file_location("nets_for_test", nets / "nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.good()
    before = [p.clone() for p in net.parameters()]
    load_weights(net, out / "model.safetensors", "nets.py:good")
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the trained weights
    assert isinstance(net[1], nn.BatchNorm2d)


def test_a_study_trains_and_evaluates_your_network(nets, capsys):
    """A study model named by file.py:factory trained, then its first evaluation failed ('holds the weights of
    your own network'): the study rebuilds it with the factory and loads the run's weights, routes included."""
    import yaml

    study = {"name": "mine", "dataset": "digits", "limit": 32, "batch_size": 32, "device": "cpu",
             "defaults": {"data": {"limit": 128, "eval_limit": 32}, "eval": {"attack": None},
                          "train": {"epochs": 1, "batch_size": 64}},
             "models": {"mine": {"model": {"name": "nets.py:good"}, "recipe": {"name": "vanilla"}},
                        "mine_ap": {"model": {"name": "nets.py:good"},
                                    "recipe": {"name": "advprop", "eps": 8, "steps": 1, "step_size": 8}}},
             "evaluations": {"clean": {"kind": "accuracy"},
                             "routes": {"kind": "accuracy", "models": ["mine_ap"], "routes": True},
                             "pgd": {"kind": "robust", "protocol": "quick", "eps": 8, "options": {"steps": 2}}}}
    (nets / "study.yaml").write_text(yaml.safe_dump(study))
    out = nets / "s"
    assert main(["study", "study.yaml", "--out", str(out)]) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    clean = {r["model"]: r["clean accuracy"] for r in res["evaluations"]["clean"]["table"]}
    assert set(clean) == {"mine", "mine_ap"}
    import importlib.util

    import robustlab as rl

    spec = importlib.util.spec_from_file_location("nets_for_study", nets / "nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x, y = rl.data.load_dataset("digits", "test").batch(slice(0, 32))
    for name in clean:  # the figure is the trained weights' own, measured independently
        net = module.good()
        load_weights(net, out / "models" / name / "model.safetensors", "nets.py:good")
        assert clean[name] == pytest.approx(rl.eval.accuracy(net.eval(), x, y))
    assert {r.get("route") for r in res["evaluations"]["routes"]["table"]} >= {"clean", "adv"}
    assert main(["study", "study.yaml", "--out", str(out)]) == 0  # again: reused, the same figures
    again = json.loads((out / "results.json").read_text())
    assert again["evaluations"]["clean"] == res["evaluations"]["clean"]
    # a reused study keeps the cost of what it reuses (it reported 0 s)
    assert again["compute_seconds"] == res["compute_seconds"] > 0
    assert "of training and evaluation in all" in (out / "report.html").read_text()


def test_your_network_starts_from_its_own_weights(nets, capsys):
    """model.weights with a factory: fine-tuning your own trained network (it was refused as an option that
    applies to robustlab's, timm's and torchvision's models only)."""
    first = nets / "first"
    assert main(["train", "train_vanilla", *TINY, "model.name=nets.py:good", "--out", str(first)]) == 0
    tuned = nets / "tuned"
    assert main(["train", "train_vanilla", *TINY, "model.name=nets.py:good", "train.lr=1e-9",
                 f"model.weights={first / 'model.safetensors'}", "--out", str(tuned)]) == 0
    a = json.loads((first / "results.json").read_text())["final"]["clean_acc"]
    b = json.loads((tuned / "results.json").read_text())["final"]["clean_acc"]
    assert b == pytest.approx(a, abs=0.07)  # a near-zero learning rate keeps the weights it started from
    assert main(["train", "train_vanilla", *TINY, "model.name=nets.py:good", "model.width=4",
                 "--out", str(nets / "bad")]) == 2
    assert "yours takes model.weights" in capsys.readouterr().err and not (nets / "bad").exists()
