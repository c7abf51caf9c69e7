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


def test_a_small_plain_eps_in_a_config_is_pixels_as_on_the_cli():
    """``recipe.eps=0.03`` was read as 0.03/255 (a budget 255 times smaller than meant), while ``--eps 0.03``
    is 0.03 px; the same plain number now means the same budget in both, and the training-time attack's too."""
    overrides = ["recipe.name=madry", "recipe.eps=0.03", "recipe.step_size=0.5", "eval.eps=0.03"]  # all pixels
    cfg = resolve(apply_overrides({}, overrides))
    assert cfg.recipe_options()["eps"] == pytest.approx(0.03)
    assert cfg.recipe_options()["step_size"] == pytest.approx(0.5)


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
    (["train", "CFG", "train.seed=7"], "train.seed: the run's seed is the top-level key; write seed: 7"),
    (["train", "CFG", "train.device=cuda"], "train.device: the run's device is the top-level key"),
])
def test_cli_errors_name_the_problem(tmp_path, capsys, args, match):
    args = [str(CONFIGS[0]) if a == "CFG" else a for a in args]
    assert main([*args, "--out", str(tmp_path / "r")] if "--resume" not in args else args) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_resume_of_an_eval_run_says_it_is_not_a_train_run(tmp_path, capsys):
    """``train --resume`` on an eval run listed its keys as 'unknown config sections'."""
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "run.json").write_text(json.dumps({"kind": "eval", "fingerprint": "0" * 64}))
    (tmp_path / "ev" / "config.yaml").write_text("models: [m]\nprotocol: quick\n")
    assert main(["train", "--resume", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "is a robustlab eval run, not a train run" in err and "unknown config section" not in err
    (tmp_path / "ev" / "run.json").write_text('{"kind": ')  # damaged: refused naming it, as the report does
    assert main(["train", "--resume", str(tmp_path / "ev")]) == 2
    assert "run.json is not valid JSON" in capsys.readouterr().err


VANILLA = next(p for p in CONFIGS if p.stem == "train_vanilla")


def _snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_directory_holding_another_run_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(VANILLA), *TINY, "eval.attack=null", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "train" and len(run["fingerprint"]) == 64 and not (out / ".lock").exists()
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", str(VANILLA), *TINY, "recipe.name=madry", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds another run (its config differs in " in err and "recipe.name: 'vanilla' → 'madry'" in err
    assert _snapshot(out) == before


def test_resume_refuses_overrides_that_change_the_run_and_records_more_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(VANILLA), *TINY, "eval.attack=null", "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "recipe.name=madry", "model.width=4"]) == 2
    err = capsys.readouterr().err
    assert "recipe.name" in err and "model.width" in err and "'vanilla' → 'madry'" in err
    assert _snapshot(out) == before
    assert main(["train", "--resume", str(out), "train.epochs=2"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2
    assert json.loads((out / "results.json").read_text())["steps"] == 8
    history = json.loads((out / "run.json").read_text())["history"]
    assert history[-1]["resumed with"] == {"train.epochs": [1, 2]}


def test_bad_input_leaves_no_directory(tmp_path):
    assert main(["train", str(VANILLA), "recipe.eps=-3", "--out", str(tmp_path / "r")]) == 2
    assert main(["train", str(VANILLA), "data.name=nope", "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["train", "study"])
def test_malformed_yaml_names_file_line_and_column(tmp_path, capsys, command):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 0\nmodel: {name: smallcnn\ntrain:\n  epochs: [1\n")
    assert main([command, str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and "malformed YAML" in err and "Traceback" not in err
    line, column = err.split(f"{path}:", 1)[1].split(":")[:2]
    assert int(line) >= 2 and int(column) >= 1
    assert not (tmp_path / "r").exists()


def test_a_key_written_twice_is_refused_with_its_lines(tmp_path, capsys):
    """YAML keeps the last of two equal keys without a word: a second train: section dropped the first's
    batch_size. Merge keys (<<: *base) still override as YAML means them to."""
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  epochs: 1\n  batch_size: 8\ntrain:\n  epochs: 2\n")
    assert main(["train", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4:1" in err and "the key 'train' is written twice (first on line 1)" in err
    assert not (tmp_path / "r").exists()
    from robustlab._io import safe_yaml

    assert safe_yaml("base: &b {lr: 0.1, epochs: 1}\ntrain: {<<: *b, epochs: 3}\n")["train"] == {"lr": 0.1, "epochs": 3}



def test_the_same_command_again_continues_the_run_and_reuses_it_finished(tmp_path, capsys):
    """README: 'the same command again resumes or reuses what is finished' (without --resume)."""
    out = tmp_path / "run"
    args = ["train", str(VANILLA), *TINY, "eval.attack=null", "--out", str(out)]
    assert main(args) == 0
    weights = (out / "model.safetensors").read_bytes()
    assert main(args) == 0  # finished: reused, nothing trained again
    res = json.loads((out / "results.json").read_text())
    assert res["resumed_from_step"] == res["steps"] == 4 and (out / "model.safetensors").read_bytes() == weights
    assert main([*args, "train.epochs=2"]) == 0  # more epochs: continued from step 4, not retrained
    res = json.loads((out / "results.json").read_text())
    assert res["resumed_from_step"] == 4 and res["steps"] == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r.get("kind", r.get("type"))) for r in records]
    assert len(keys) == len(set(keys)), "metrics.jsonl holds a record twice"
    before = _snapshot(out)
    capsys.readouterr()
    assert main([*args, "train.epochs=1"]) == 2  # fewer epochs than trained: refused, the run untouched
    err = capsys.readouterr().err
    assert "config key train.epochs=1" in err and "has trained 2 epochs already" in err
    assert _snapshot(out) == before


def test_scientific_notation_is_a_number_in_configs_and_overrides(tmp_path):
    """PyYAML (YAML 1.1) reads 5e-4 as a string; a config's lr: 5e-4 must be 0.0005."""
    path = tmp_path / "cfg.yaml"
    path.write_text(VANILLA.read_text() + "\n# a user's own rate\n")
    raw = yaml.safe_load(path.read_text())
    raw["train"]["lr"] = "LR"
    path.write_text(yaml.safe_dump(raw).replace("LR", "5e-4"))
    cfg, _ = load_config(path, ["train.weight_decay=1e-5", "train.milestones=[1e1]"])
    assert cfg.train.lr == 0.0005 and cfg.train.weight_decay == 1e-5 and cfg.train.milestones == (10.0,)
    cfg, _ = load_config(path, ["model.name=x1e3"])
    assert cfg.model.name == "x1e3"  # not a number: still a string


def test_another_network_on_the_command_line_drops_only_the_configs_options_for_its_own():
    """docs/training.md's `train_madry ... model.name=tv:resnet50` was refused for the SmallCNN's width: 16."""
    tv, _ = load_config("train_sat", ["model.name=tv:resnet18"])
    assert tv.model.options == {"act": "silu"}  # the surgery option follows; width stays with the SmallCNN
    mine, _ = load_config("train_sat", ["model.name=my.py:net"])
    assert mine.model.options == {}  # your own factory is built as it is
    kept, _ = load_config("train_sat", ["model.name=tv:resnet18", "model.width=4"])
    assert kept.model.options["width"] == 4  # given on the command line: kept (and refused when built)
    same, _ = load_config("train_sat", ["model.name=smallcnn"])
    assert same.model.options["width"] == 16


def test_a_finished_run_rerun_with_other_eval_options_reports_the_new_figures(tmp_path, capsys):
    """Only eval.* changed on a finished run: nothing is trained again, and the figures are measured as the
    config now says (they kept the old attack's under the new config)."""
    out = tmp_path / "run"
    args = ["train", str(VANILLA), *TINY, "eval.attack=null", "--out", str(out)]
    assert main(args) == 0
    first = json.loads((out / "results.json").read_text())
    assert "pgd_acc" not in first["final"]
    weights = (out / "model.safetensors").read_bytes()
    assert main([*args, "eval.attack=pgd"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["resumed_from_step"] == res["steps"] == first["steps"]  # not trained again
    assert (out / "model.safetensors").read_bytes() == weights
    final = res["final"]
    assert final["pgd_n"] == 32 and 0 <= final["pgd_acc"] <= final["clean_acc"]
    assert final["train_loss"] == first["final"]["train_loss"] and res["history"][-1] == final
    assert json.loads((out / "model.json").read_text())["meta"]["final"] == final  # beside the model too
    assert rl.models.load_model(out) is not None  # its digest still holds
    assert yaml.safe_load((out / "config.yaml").read_text())["eval"]["attack"] == "pgd"


def test_configs_that_mean_less_than_they_say_are_warned_before_work(tmp_path, caplog):
    """A valid config can still be weaker than it reads: an attacker whose steps × α falls short of ε, and
    step milestones past the last epoch. Both are said (and the shipped configs say neither)."""
    from robustlab.app.train import build_recipe, config_warnings, milestone_note

    cfg, _ = load_config(Path(__file__).resolve().parents[2] / "configs" / "train_madry.yaml",
                         ["recipe.steps=2", "recipe.step_size=4", "train.epochs=2", "train.milestones=[1, 2, 5]"])
    said = config_warnings(cfg, build_recipe(cfg))
    assert len(said) == 1 and "moves at most 2 × 4/255 = 8/255 from the clean image, less than ε" in said[0]
    assert "train.milestones: 2, 5 are at or past train.epochs (2)" in milestone_note(cfg)
    for path in CONFIGS:
        shipped, _ = load_config(path)
        assert config_warnings(shipped, build_recipe(shipped)) == [], path.name
    folder, _ = load_config(CONFIGS[0], ["data.name=imagefolder:/data/imagenet"])  # decoded between steps
    assert [w for w in config_warnings(folder, build_recipe(folder)) if "data.workers is 0" in w]
    folder, _ = load_config(CONFIGS[0], ["data.name=imagefolder:/data/imagenet", "data.workers=8"])
    assert not [w for w in config_warnings(folder, build_recipe(folder)) if "data.workers" in w]
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="robustlab"):
        assert main(["train", str(VANILLA), *TINY, "data.limit=200", "eval.attack=null", "train.milestones=[3]",
                     "--out", str(out)]) == 0
    text = caplog.text
    assert "train.milestones: 3 is at or past train.epochs (1)" in text
    assert "an epoch is 3 steps of 64 images: 8 images sit out each epoch" in text
