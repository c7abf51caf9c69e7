"""`robustlab study`: config resolution, reuse of finished work, resume after a kill, report = results.json."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from robustlab.app.cli import main
from robustlab.app.study import load_study, resolve_study, run_study
from robustlab.report.html import table_rows

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "dataset": "digits",
    "limit": 64,
    "batch_size": 64,
    "defaults": {"model": {"name": "smallcnn", "width": 8}, "data": {"limit": 512, "eval_limit": 64},
                 "train": {"epochs": 2, "batch_size": 64, "lr": 0.1}, "eval": {"attack": None}},
    "models": {
        "plain": {"recipe": {"name": "vanilla"}},
        "plain_b": {"recipe": {"name": "vanilla"}, "seed": 1},
        "at": {"recipe": {"name": "madry", "eps": 32, "steps": 2, "step_size": 16, "targeted": False}},
    },
    "evaluations": {
        "clean": {"kind": "accuracy"},
        "pgd": {"kind": "whitebox", "models": ["plain", "at"], "eps": 32, "step_size": 8, "steps": [1, 3]},
        "transfer": {"kind": "transfer", "sources": ["plain"], "targets": ["plain", "plain_b"],
                     "attacks": ["ifgsm", "di2fgsm"], "eps": 32},
    },
}


def _write(tmp_path: Path, raw: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------ resolution and errors


def test_defaults_merge_under_each_model_and_sweeps_expand():
    raw = {**TINY, "models": {"mix": {"recipe": {"name": "mixed"}, "sweep": {"recipe.clean_ratio": [0.0, 0.5]}},
                              "deep": {"model": {"depth": 2}, "recipe": {"name": "vanilla"}}}, "evaluations": {}}
    study = resolve_study(raw)
    assert list(study.models) == ["mix-clean_ratio0.0", "mix-clean_ratio0.5", "deep"]
    assert study.models["mix-clean_ratio0.5"].recipe.to_dict() == {"name": "mixed", "clean_ratio": 0.5}
    assert study.models["deep"].model.to_dict() == {"name": "smallcnn", "width": 8, "depth": 2}
    assert study.models["deep"].data.name == "digits" and study.models["deep"].train.epochs == 2


def test_a_model_with_another_recipe_inherits_only_the_options_its_recipe_takes():
    raw = {**TINY, "defaults": {**TINY["defaults"], "recipe": {"name": "madry", "eps": 25, "steps": 3}},
           "models": {"at": {}, "plain": {"recipe": {"name": "vanilla"}}, "mix": {"recipe": {"name": "mixed"}}},
           "evaluations": {}}
    study = resolve_study(raw)
    assert study.models["at"].recipe.to_dict() == {"name": "madry", "eps": 25, "steps": 3}
    assert study.models["plain"].recipe.to_dict() == {"name": "vanilla"}
    assert study.models["mix"].recipe.to_dict() == {"name": "mixed", "eps": 25, "steps": 3}


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown study key"),
    ({"models": {}}, "'models' must map"),
    ({"evaluations": {"e": {"kind": "nope"}}}, "evaluations.e.kind must be one of"),
    ({"evaluations": {"e": {"kind": "whitebox", "models": ["ghost"]}}}, "unknown model(s) ['ghost']"),
    ({"evaluations": {"e": {"kind": "whitebox", "epz": 3}}}, "unknown option(s) ['epz']"),
    ({"evaluations": {"e": {"kind": "whitebox", "eps": -1}}}, "evaluations.e.eps"),
    ({"evaluations": {"e": {"kind": "transfer", "attacks": ["fgsmm"]}}}, "unknown attack(s) ['fgsmm']"),
    ({"models": {"m": {"recipe": {"name": "vanilla"}, "train": {"epochz": 1}}}}, "models.m:"),
    ({"models": {"m": {"recipe": {"name": "madry", "stepz": 3}}}}, "models.m: recipe madry got unknown option(s)"),
    ({"models": {"m": {"recipe": {"name": "vanilla"}, "data": {"name": "cifar10"}},
                 "n": {"recipe": {"name": "vanilla"}}}}, "the same data"),
    ({"limit": 0}, "'limit' must be a positive"),
])
def test_bad_study_configs_are_refused_naming_the_key(change, message):
    with pytest.raises(ValueError) as err:
        resolve_study({**TINY, **change})
    assert message in str(err.value)


def test_overrides_dataset_profile_and_smoke_order(tmp_path):
    raw = {**TINY, "datasets": {"mnist": {"defaults.train.epochs": 7, "limit": 32}},
           "smoke": {"defaults.train.epochs": 1, "limit": 16}}
    path = _write(tmp_path, raw)
    assert load_study(path).models["plain"].train.epochs == 2
    assert load_study(path, ["dataset=mnist"]).models["plain"].data.name == "mnist"
    assert load_study(path, ["dataset=mnist"]).models["plain"].train.epochs == 7
    smoke = load_study(path, ["dataset=mnist"], smoke=True)
    assert smoke.models["plain"].train.epochs == 1 and smoke.limit == 16
    # the command line wins over the profile and the smoke overrides
    assert load_study(path, ["dataset=mnist", "limit=8"], smoke=True).limit == 8
    with pytest.raises(ValueError, match="unknown study key 'epochs'"):
        load_study(path, ["epochs=3"])
    with pytest.raises(ValueError, match="must look like key.sub=value"):
        load_study(path, ["defaults.train.epochs"])


def test_a_study_title_names_the_dataset_it_runs_on():
    quick = load_study("quickstart")
    assert "Fashion-MNIST" in quick.title
    digits = load_study("quickstart", ["dataset=digits"])
    assert "8×8 digits" in digits.title and "Fashion-MNIST" not in digits.title
    assert load_study("ch3_transfer", ["dataset=mnist"]).title.endswith("(on MNIST)")
    # a title given on the command line is taken as written
    assert load_study("quickstart", ["dataset=digits", "title=mine"]).title == "mine"


STUDIES = sorted(p for p in ROOT.joinpath("configs").glob("*.yaml") if not p.stem.startswith(("train_", "attack_")))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_shipped_study_resolves_in_full_and_smoke_form(path):
    full, smoke = load_study(path), load_study(path, smoke=True)
    assert full.models and set(full.models) == set(smoke.models)
    assert (full.form, smoke.form) == ("full", "smoke")  # what results.json records
    assert getattr(full, "evaluations", True)  # a DAG study's evaluations are fixed by its task
    raw = yaml.safe_load(path.read_text())
    assert raw.get("smoke"), f"{path.name} needs a smoke section for CI"


# ------------------------------------------------------------------ running


class _Tables(HTMLParser):
    """The cells of every <table class="results"> of a report, by evaluation name."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._current: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("class") == "results":
            self._current = a["data-evaluation"]
            self.tables[self._current] = []
        elif self._current and tag == "tr":
            self.tables[self._current].append([])
        elif self._current and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._current = None
        elif tag in ("td", "th") and self._cell is not None and self._current:
            self.tables[self._current][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_study_trains_evaluates_and_reuses_finished_work(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    out = tmp_path / "run"
    assert main(["study", str(path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err  # the summary on stdout, each step's line on stderr
    assert all(len(line) <= 100 or Path(line).exists() for line in captured.out.splitlines())  # a path stays whole
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"plain", "plain_b", "at"}
    assert set(results["evaluations"]) == set(TINY["evaluations"])
    clean = {r["model"]: r["clean accuracy"] for r in results["evaluations"]["clean"]["table"]}
    assert min(clean.values()) > 0.5  # digits, 2 epochs: the models learned something
    pgd = {r["model"]: r for r in results["evaluations"]["pgd"]["table"]}
    assert pgd["plain"]["PGD-3"] < clean["plain"] - 0.2  # the attack works on the standard model
    assert pgd["at"]["PGD-3"] > pgd["plain"]["PGD-3"]  # and adversarial training resists it
    assert "report:" in printed and "PGD-3" in printed

    # the report's tables are results.json's numbers, cell for cell
    parser = _Tables()
    parser.feed((out / "report.html").read_text())
    for name, ev in results["evaluations"].items():
        columns, rows = table_rows(ev["table"])
        assert parser.tables[name] == [columns, *rows], name

    # the same command again trains nothing and recomputes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    evals = {p: p.read_text() for p in (out / "evaluations").glob("*.json")}
    assert main(["study", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().err
    assert printed.count("reusing") == len(TINY["models"]) + len(TINY["evaluations"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps
    assert {p: p.read_text() for p in (out / "evaluations").glob("*.json")} == evals

    # a changed evaluation option reruns that evaluation only; a changed model retrains that model only
    assert main(["study", str(path), "--out", str(out), "evaluations.pgd.steps=[1,2]",
                 "models.plain_b.train.lr=0.05"]) == 0
    printed = capsys.readouterr().err
    assert "model plain: trained, reusing" in printed and "model plain_b: training" in printed
    assert "evaluation clean: done, reusing" not in printed  # plain_b changed: its clean accuracy is new
    again = json.loads((out / "results.json").read_text())
    assert [k for k in again["evaluations"]["pgd"]["table"][0] if k.startswith("PGD")] == ["PGD-1", "PGD-2"]
    assert (out / "models" / "plain" / "model.safetensors").stat().st_mtime_ns == \
        stamps[out / "models" / "plain" / "model.safetensors"]


def test_routes_evaluation_reads_the_auxiliary_bns_from_the_checkpoint(tmp_path):
    raw = {**TINY, "models": {"ap": {"recipe": {"name": "advprop", "eps": 8, "steps": 1, "step_size": 8}}},
           "evaluations": {"gap": {"kind": "accuracy", "routes": True},
                           "gap_pgd": {"kind": "whitebox", "routes": True, "eps": 8, "step_size": 4, "steps": [2]}}}
    res = run_study(resolve_study(raw), tmp_path / "run")
    rows = res["evaluations"]["gap"]["table"]
    assert [r["route"] for r in rows] == ["clean", "adv"]
    # the main route is the exported model
    from robustlab.eval.metrics import accuracy
    from robustlab.models import load_model

    model = load_model(tmp_path / "run" / "models" / "ap")
    from robustlab.data import load_dataset

    x, y = load_dataset("digits", "test", limit=64).batch(slice(0, 64))
    assert rows[0]["clean accuracy"] == pytest.approx(accuracy(model, x, y))
    assert rows[0]["clean accuracy"] != rows[1]["clean accuracy"] or \
        res["evaluations"]["gap_pgd"]["table"][0] != res["evaluations"]["gap_pgd"]["table"][1]


def test_a_killed_study_resumes_without_retraining_finished_models(tmp_path):
    raw = {**TINY, "models": {"first": {"recipe": {"name": "vanilla"}},
                              "second": {"recipe": {"name": "madry", "eps": 32, "steps": 2, "step_size": 16},
                                         "data": {"limit": 768}, "train": {"epochs": 5}}},
           "evaluations": {"clean": {"kind": "accuracy"}}}
    path = _write(tmp_path, raw)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "robustlab", "study", str(path), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / "models" / "first" / "results.json"
    second_ckpt = out / "models" / "second" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (second_ckpt.is_dir() and any(second_ckpt.glob("step-*"))) and proc.poll() is None:
        assert time.monotonic() < deadline, "the study did not get to the second model"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done.is_file() and not (out / "results.json").exists()
    stamp = (out / "models" / "first" / "model.safetensors").stat().st_mtime_ns
    res = run_study(load_study(path), out)
    assert (out / "models" / "first" / "model.safetensors").stat().st_mtime_ns == stamp
    second = json.loads((out / "models" / "second" / "results.json").read_text())
    assert second["resumed_from_step"] > 0  # continued from its checkpoint, not from scratch
    assert set(res["models"]) == {"first", "second"}
