"""Study models fine-tuned from another study model (init_from, train.trainable):
refused configs, training order, the start weights, and retraining when the source changes."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from robustlab.app.cli import main
from robustlab.app.study import resolve_study, run_study
from robustlab.models import load_model

AT = {"name": "madry", "eps": 32, "steps": 2, "step_size": 16, "targeted": False}
BASE = {
    "name": "ft", "dataset": "digits", "limit": 64, "batch_size": 64, "device": "cpu",
    "defaults": {"model": {"name": "smallcnn", "width": 8}, "data": {"limit": 384, "eval_limit": 64},
                 "train": {"epochs": 1, "batch_size": 64, "lr": 0.1}, "eval": {"attack": None}},
    "models": {
        # declared before its source: the study trains the source first
        "at_bn_clean": {"init_from": "at", "recipe": {"name": "vanilla"}, "train": {"trainable": "bn"}},
        "at": {"recipe": AT},
    },
    "evaluations": {"clean": {"kind": "accuracy"}, "ft_only": {"kind": "accuracy", "models": ["at_bn_clean"]}},
}


def _with(**models) -> dict:
    raw = copy.deepcopy(BASE)
    raw["models"].update(models)
    return raw


@pytest.mark.parametrize("models, message", [
    ({"x": {"init_from": "ghost"}}, "models.x.init_from: unknown model 'ghost'"),
    ({"x": {"init_from": "x"}}, "a cycle (x → x)"),
    ({"x": {"init_from": "y"}, "y": {"init_from": "x"}}, "a cycle"),
    ({"x": {"init_from": 3}}, "models.x.init_from must name another model"),
    ({"x": {"init_from": "at", "model": {"width": 12}}}, "another network"),
    ({"x": {"init_from": "ap3", "recipe": {"name": "advprop"}},
      "ap3": {"recipe": {"name": "advprop_finegrained"}}}, "routed models start from a model with the same routes"),
    ({"x": {"init_from": "at", "train": {"trainable": "filters"}}}, "trainable must be one of"),
])
def test_bad_init_from_is_refused_at_load(models, message):
    with pytest.raises(ValueError) as err:
        resolve_study(_with(**models))
    assert message in str(err.value)


def test_bad_init_from_on_the_command_line_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_with(x={"init_from": "ghost"})))
    assert main(["study", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "ghost" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_a_fine_tuned_model_starts_from_its_source_and_follows_it(tmp_path, caplog):
    out = tmp_path / "run"
    res = run_study(resolve_study(BASE), out)
    assert list(res["models"]) == ["at", "at_bn_clean"]  # trained in dependency order
    assert res["models"]["at_bn_clean"]["init_from"] == "at"
    src, ft = load_model(out / "models" / "at").state_dict(), load_model(out / "models" / "at_bn_clean").state_dict()
    bn = [k for k in src if ".bn." in k]
    assert bn
    for k in src:  # the filters are the source's, bit for bit; its BNs were fine-tuned on clean images
        same = torch.equal(src[k], ft[k])
        assert same != (k in bn), k
    record = json.loads((out / "models" / "at_bn_clean" / "init_from.json").read_text())
    assert record["model"] == "at" and len(record["weights_sha256"]) == 64

    # again: nothing retrained, nothing recomputed
    stamp = (out / "models" / "at_bn_clean" / "model.safetensors").stat().st_mtime_ns
    key = json.loads((out / "evaluations" / "ft_only.json").read_text())["key"]
    again = run_study(resolve_study(BASE), out)
    assert (out / "models" / "at_bn_clean" / "model.safetensors").stat().st_mtime_ns == stamp
    assert again["evaluations"]["clean"] == res["evaluations"]["clean"]

    # the source changes: it retrains, so does its dependent (other start weights), and the evaluation reruns
    changed = copy.deepcopy(BASE)
    changed["models"]["at"]["train"] = {"lr": 0.05}
    with caplog.at_level("WARNING", logger="robustlab"):
        run_study(resolve_study(changed), out)
    said = [r.getMessage() for r in caplog.records if "configuration changed" in r.getMessage()]
    assert any(m.startswith("model at: its configuration changed (train.lr: ") and "→ 0.05" in m for m in said), said
    assert any("model at_bn_clean: its configuration changed (it started from other weights)" in m for m in said)
    assert (out / "models" / "at_bn_clean" / "model.safetensors").stat().st_mtime_ns != stamp
    new = json.loads((out / "models" / "at_bn_clean" / "init_from.json").read_text())
    assert new["weights_sha256"] != record["weights_sha256"]
    assert json.loads((out / "evaluations" / "ft_only.json").read_text())["key"] != key  # its config is unchanged

    # a model that drops init_from trains from scratch
    plain = copy.deepcopy(changed)
    del plain["models"]["at_bn_clean"]["init_from"]
    plain["models"]["at_bn_clean"]["train"] = {}
    run_study(resolve_study(plain), out)
    assert not (out / "models" / "at_bn_clean" / "init_from.json").exists()


def test_trainable_bn_in_a_study_model_keeps_the_source_filters_under_an_adversarial_recipe(tmp_path):
    # §6.4.4's other direction: clean filters, BNs fine-tuned on adversarial images
    raw = _with(plain={"recipe": {"name": "vanilla"}},
                plain_bn_adv={"init_from": "plain", "recipe": AT, "train": {"trainable": "bn"}})
    del raw["models"]["at_bn_clean"]
    del raw["evaluations"]["ft_only"]
    run_study(resolve_study(raw), Path(tmp_path / "run"))
    src = load_model(tmp_path / "run" / "models" / "plain").state_dict()
    ft = load_model(tmp_path / "run" / "models" / "plain_bn_adv").state_dict()
    assert all(torch.equal(src[k], ft[k]) for k in src if ".conv." in k or k.startswith("net.fc"))
    assert not all(torch.equal(src[k], ft[k]) for k in src if ".bn." in k)
