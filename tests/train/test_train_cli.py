"""`robustlab train`: configs, overrides, run directories, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import robustlab as rl
from robustlab.app.cli import main
from robustlab.app.config import apply_overrides, load_config, resolve

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("train_*.yaml"))
TINY = ["data.name=digits", "data.limit=256", "data.eval_limit=64", "eval.limit=32", "eval.steps=2",
        "train.epochs=1", "train.batch_size=64"]


def test_every_recipe_has_a_config():
    names = {p.stem for p in CONFIGS}
    expected = {f"train_{n}" for n in ("vanilla", "madry", "fast", "mixed", "alp", "mbn", "advprop",
                                        "advprop_finegrained", "sat")}
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_and_writes_a_run_directory(tmp_path, path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(path), *TINY, "--out", str(out)]) == 0
    assert "run directory" in capsys.readouterr().out
    for name in ("config.yaml", "metrics.jsonl", "results.json", "model.safetensors", "model.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["name"] == "digits" and cfg["train"]["epochs"] == 1
    assert results["steps"] == 4 and "clean_acc" in " ".join(results["final"])
    model = rl.models.load_model(out)
    if cfg["recipe"]["name"].startswith("advprop"):
        assert not rl.nn.norm.mixture_layers(model)  # exported without the auxiliary BNs
    if cfg["model"].get("act"):
        assert cfg["model"]["act"] in json.dumps(model.robustlab_spec)


def test_resume_a_finished_run_reuses_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(CONFIGS[0]), *TINY, "eval.attack=null", "--out", str(out)]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["train", "--resume", str(out)]) == 0
    assert (out / "model.safetensors").read_bytes() == before
    assert json.loads((out / "results.json").read_text())["resumed_from_step"] == 4


def test_overrides_parse_as_yaml():
    raw = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=1", "train.milestones=[30, 60]",
                                                     "recipe.name=advprop", "eval.attack=null", "model.act=silu"])
    assert raw == {"train": {"epochs": 1, "milestones": [30, 60]}, "recipe": {"name": "advprop"},
                   "eval": {"attack": None}, "model": {"act": "silu"}}
    cfg = resolve(raw)
    assert cfg.train.epochs == 1 and cfg.train.milestones == (30.0, 60.0) and cfg.eval.attack is None


def test_budgets_use_the_thesis_notation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"recipe": {"name": "madry", "eps": 16, "step_size": "1/255"}}))
    cfg, _ = load_config(path)
    opts = cfg.recipe_options()
    assert opts["eps"] == pytest.approx(16 / 255) and opts["step_size"] == pytest.approx(1 / 255)


@pytest.mark.parametrize(("args", "match"), [
    (["train"], "give a config file first"),
    (["train", "missing.yaml"], "cannot read config"),
    (["train", "CFG", "train.epoch=1"], "unknown training option"),
    (["train", "CFG", "trian.epochs=1"], "unknown section"),
    (["train", "CFG", "epochs"], "key.sub=value"),
    (["train", "CFG", "data.colour=1"], "data.colour"),
    (["train", "CFG", "recipe.name=magic"], "recipe must be one of"),
    (["train", "CFG", "recipe.eps=-3"], "eps"),
    (["train", "CFG", "eval.eps=abc"], "eval.eps"),
    (["train", "--resume", "nowhere"], "no config.yaml"),
])
def test_cli_errors_name_the_problem(tmp_path, capsys, args, match):
    args = [str(CONFIGS[0]) if a == "CFG" else a for a in args]
    assert main([*args, "--out", str(tmp_path / "r")] if "--resume" not in args else args) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()
