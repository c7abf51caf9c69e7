"""Bad command lines are refused before any work (issue 14, parts 4 and 6).

One table: every row is a command line a clumsy or hostile user could type.
Each must exit with code 2, name the offending argument or key on stderr,
print no traceback and write nothing: the command runs with ``tmp_path`` as
the working directory (so a default ``runs/`` would land there) and the files
under ``tmp_path`` are compared before and after, byte for byte. Inputs are
tiny (``data.name=digits``), and the point is that no row trains a model.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from robustlab.app.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_TRAIN = {"seed": 0, "device": "cpu", "model": {"name": "smallcnn", "width": 4},
              "data": {"name": "digits", "limit": 128, "eval_limit": 32}, "recipe": {"name": "vanilla"},
              "train": {"epochs": 1, "batch_size": 64, "lr": 0.05}, "eval": {"attack": "pgd", "eps": 25,
                                                                             "steps": 2, "limit": 16}}
TINY_STUDY = {"name": "tiny", "seed": 0, "device": "cpu", "dataset": "digits", "limit": 16,
              "defaults": {"model": {"name": "smallcnn", "width": 4}, "data": {"limit": 128, "eval_limit": 16},
                           "train": {"epochs": 1, "batch_size": 64}, "eval": {"attack": None}},
              "models": {"a": {"recipe": {"name": "vanilla"}},
                         "b": {"recipe": {"name": "madry", "eps": 25, "steps": 2, "step_size": 16}}},
              "evaluations": {"clean": {"kind": "accuracy"}}}
FACTORY = ("import torch\n\ndef make():\n    return torch.nn.Linear(2, 2)\n\ndef notmodule():\n    return 42\n\n"
           "def broken():\n    raise RuntimeError('my factory broke')\n\n"
           "def flat():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10))\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The one real training of this file: a run directory to resume and to evaluate."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", str(CONFIGS / "train_vanilla.yaml"), "data.name=digits", "data.limit=128",
                 "data.eval_limit=32", "train.epochs=1", "train.batch_size=64", "eval.attack=null",
                 "device=cpu", "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------ inputs a case makes for itself


def _yaml(tmp: Path, data: dict, name: str = "cfg.yaml") -> str:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _train(*overrides: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: ["train", _yaml(tmp, TINY_TRAIN), *overrides]


def _train_yaml(text: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, run: Path) -> list[str]:
        (tmp / "cfg.yaml").write_text(text)
        return ["train", str(tmp / "cfg.yaml")]
    return make


def _study(edit: Callable[[dict], None] | None = None, *extra: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, run: Path) -> list[str]:
        import copy

        raw = copy.deepcopy(TINY_STUDY)
        if edit is not None:
            edit(raw)
        return ["study", _yaml(tmp, raw, "study.yaml"), *extra]
    return make


def _copy_run(tmp: Path, run: Path) -> str:
    dst = tmp / "run"
    shutil.copytree(run, dst)
    return str(dst)


def _eval(*args: str, model: str = "run") -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, run: Path) -> list[str]:
        (tmp / "factory.py").write_text(FACTORY)
        spec = ["--checkpoint", _copy_run(tmp, run)] if model == "run" else ["--model", model]
        return ["eval", *spec, "--data", "digits", "--limit", "16", "--device", "cpu", *args]
    return make


def _attack(*args: str, model: str = "smallcnn") -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: ["attack", "--model", model, "--data", "digits", "--limit", "8", "--device", "cpu",
                             *args]


def _dense(tmp: Path) -> str:
    """An untrained segmenter saved as a DAG study saves one (a bad --gamma is refused before it runs)."""
    from robustlab.models import create_dense, save_model

    spec = {"task": "segmentation", "num_classes": 3, "width": 4}
    return str(save_model(create_dense(**spec), tmp / "segmenter", spec=spec))


def _with_file(name: str, text: str, then: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, run: Path) -> list[str]:
        (tmp / name).write_text(text)
        return then(tmp, run)
    return make


def _edit(path: str, value: object) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of cuda on a machine without one")

# (id, command line made in tmp_path, fragment stderr must contain)
CASES = [
    # -- robustlab train
    ("train-malformed-yaml", _train_yaml("seed: 0\nmodel: {name: smallcnn\ndata: x\n"), "cfg.yaml:3:"),
    ("train-yaml-not-mapping", _train_yaml("- a\n- b\n"), "must be a mapping"),
    ("train-missing-config", lambda tmp, run: ["train", str(tmp / "nope.yaml")], "nope.yaml"),
    ("train-no-config", lambda tmp, run: ["train", "train.epochs=1"], "config file"),
    ("train-unknown-key", _train("train.epochz=1"), "train.epochz"),
    ("train-unknown-data-key", _train("data.nmae=digits"), "data.nmae"),
    ("train-unknown-section", _train("bogus.x=1"), "bogus"),
    ("train-epochs-abc", _train("train.epochs=abc"), "train.epochs"),
    ("train-epochs-zero", _train("train.epochs=0"), "train.epochs"),
    ("train-batch-size-zero", _train("train.batch_size=0"), "train.batch_size"),
    ("train-lr-negative", _train("train.lr=-1"), "train.lr"),
    ("train-seed-abc", _train("seed=abc"), "seed"),
    ("train-data-limit-abc", _train("data.limit=abc"), "data.limit"),
    ("train-eval-attack-typo", _train("eval.attack=pgdd"), "pgdd"),
    ("train-eval-steps-negative", _train("eval.steps=-1"), "eval.steps"),
    ("train-eval-limit-zero", _train("eval.limit=0"), "eval.limit"),
    ("train-eval-eps-abc", _train("eval.eps=abc"), "eval.eps"),
    ("train-unknown-model", _train("model.name=nosuchnet"), "nosuchnet"),
    ("train-unknown-activation", _train("model.act=nosuchact"), "nosuchact"),
    ("train-model-option-it-does-not-take", _train("model.name=tv:resnet18", "model.width=4"),
     "model option 'width' is not one "
     "tv:resnet18 takes"),
    ("train-model-option-typo", _train("model.widht=4"), "model option 'widht'"),
    ("train-unknown-recipe", _train("recipe.name=nosuchrecipe"), "nosuchrecipe"),
    ("train-unknown-dataset", _train("data.name=nosuchdata"), "nosuchdata"),
    ("train-unknown-augment", _train("data.augment=nosuchaug"), "nosuchaug"),
    ("train-unknown-optimizer", _train("train.optimizer=nosuchopt"), "nosuchopt"),
    pytest.param("train-device-cuda", _train("device=cuda"), "cuda", marks=NO_GPU, id="train-device-cuda"),
    ("train-out-is-a-file", _with_file("taken", "x", lambda tmp, run: ["train", _yaml(tmp, TINY_TRAIN), "--out",
                                                                        str(tmp / "taken")]), "taken"),
    ("train-out-is-a-users-folder", _with_file("notes.txt", "mine", lambda tmp, run: [
        "train", _yaml(tmp, TINY_TRAIN), "--out", str(tmp)]), "is not empty and holds no robustlab run (cfg.yaml"),
    pytest.param("train-amp-fp16-on-cpu", _train("train.amp=fp16"), "config key train.amp: fp16 needs a CUDA",
                 marks=NO_GPU, id="train-amp-fp16-on-cpu"),
    ("train-warmup-negative", _train("train.warmup_epochs=-1"), "config key train.warmup_epochs must be >= 0"),
    ("train-gamma-zero", _train("train.gamma=0"), "config key train.gamma must be > 0"),
    ("train-milestones-decreasing", _train("train.milestones=[0.5,0.2]"), "train.milestones must be increasing"),
    ("train-resume-other-recipe",
     lambda tmp, run: ["train", "--resume", _copy_run(tmp, run), "recipe.name=madry"], "recipe.name"),
    ("train-resume-not-a-run", lambda tmp, run: ["train", "--resume", str(tmp)], "config.yaml"),
    ("train-resume-with-config",
     lambda tmp, run: ["train", "--resume", _copy_run(tmp, run), _yaml(tmp, TINY_TRAIN)], "--resume"),
    ("train-device-nonsense", _train("device=nosuchdevice"), "nosuchdevice"),
    ("train-milestones-words", _train("train.milestones=[a]"), "train.milestones"),
    ("train-eval-seed-abc", _train("eval.seed=abc"), "eval.seed"),
    ("train-eval-limit-abc", _train("eval.limit=abc"), "eval.limit"),
    ("train-data-eval-limit-zero", _train("data.eval_limit=0"), "data.eval_limit"),
    ("train-recipe-option-typo", _train("recipe.name=madry", "recipe.epz=3"), "epz"),
    ("train-resume-other-model",
     lambda tmp, run: ["train", "--resume", _copy_run(tmp, run), "model.width=8"], "model.width"),
    # -- robustlab study
    ("study-second-model-typo", _study(_edit("models.b.recipe.stpes", 2)), "models.b"),
    ("study-second-model-option-its-network-lacks", _study(_edit("models.b.model", {"name": "tv:resnet18"})),
     "models.b: model option 'width' is not one tv:resnet18 takes"),
    ("study-second-model-option-of-a-wrong-type", _study(_edit("models.b.model", {"width": "abc"})),
     "models.b: model options width='abc'"),
    ("study-unknown-eval-kind", _study(_edit("evaluations.clean.kind", "nosuchkind")), "evaluations.clean.kind"),
    ("study-eval-unknown-model", _study(_edit("evaluations.clean.models", ["a", "zz"])), "zz"),
    ("study-eval-unknown-option", _study(_edit("evaluations.clean.limt", 3)), "limt"),
    ("study-unknown-key", _study(_edit("modles", {})), "modles"),
    ("study-limit-zero", _study(_edit("limit", 0)), "limit"),
    ("study-bad-override", _study(None, "nosuch.key=1"), "nosuch"),
    pytest.param("study-device-cuda", _study(_edit("device", "cuda")), "cuda", marks=NO_GPU,
                 id="study-device-cuda"),
    ("study-malformed-yaml", _with_file("study.yaml", "name: x\nmodels: [a\n", lambda tmp, run: [
        "study", str(tmp / "study.yaml")]), "study.yaml:"),
    ("study-batch-size-abc", _study(_edit("batch_size", "abc")), "batch_size"),
    ("study-whitebox-bad-steps", _study(_edit("evaluations.clean", {"kind": "whitebox", "steps": "x"})),
     "evaluations.clean.steps"),
    # -- an --out that cannot be a directory: one line, not a NotADirectoryError traceback
    ("train-out-under-a-file", _with_file("afile.txt", "x", lambda tmp, run: [
        "train", _yaml(tmp, TINY_TRAIN), "--out", str(tmp / "afile.txt" / "sub")]), "afile.txt/sub"),
    ("eval-out-under-a-file", _with_file("afile.txt", "x", lambda tmp, run: [
        *_eval("--protocol", "quick")(tmp, run), "--out", str(tmp / "afile.txt" / "sub")]), "afile.txt/sub"),
    ("attack-out-under-a-file", _with_file("afile.txt", "x", lambda tmp, run: [
        *_attack()(tmp, run), "--out", str(tmp / "afile.txt" / "sub")]), "afile.txt/sub"),
    # -- robustlab eval
    ("eval-unknown-protocol", _eval("--protocol", "nosuchprotocol"), "--protocol"),
    ("eval-eps-300", _eval("--eps", "300"), "--eps"),
    ("eval-eps-abc", _eval("--eps", "abc"), "--eps"),
    ("eval-batch-size-zero", _eval("--batch-size", "0"), "--batch-size"),
    ("eval-limit-zero", _eval("--limit", "0"), "--limit"),
    ("eval-seed-negative", _eval("--seed", "-1"), "--seed"),
    ("attack-seed-negative", _attack("--seed", "-1"), "--seed"),
    ("eval-factory-raises", _eval(model="factory.py:broken"), "broken() raised RuntimeError: my factory broke"),
    ("attack-factory-raises", _with_file("factory.py", FACTORY, _attack(model="factory.py:broken")),
     "broken() raised RuntimeError"),
    ("attack-model-takes-other-images", _with_file("factory.py", FACTORY, _attack(model="factory.py:flat")),
     "fails on the data's (1, 8, 8) images"),
    ("eval-steps-words", _eval("--steps", "a,b"), "--steps"),
    ("eval-missing-factory-file", _eval(model="missing.py:make"), "missing.py"),
    ("eval-factory-not-a-module", _eval(model="factory.py:notmodule"), "notmodule"),
    ("eval-mean-without-std", _eval("--mean", "0.5"), "--std"),
    ("eval-mean-not-numbers", _eval("--mean", "a,b", "--std", "0.5"), "--mean"),
    ("eval-transfer-one-model", _eval("--protocol", "transfer"), "transfer"),
    ("eval-unknown-dataset", lambda tmp, run: ["eval", "--checkpoint", _copy_run(tmp, run), "--data", "nosuchdata"],
     "nosuchdata"),
    ("eval-missing-checkpoint", lambda tmp, run: ["eval", "--checkpoint", str(tmp / "gone"), "--data", "digits"],
     "gone"),
    pytest.param("eval-device-cuda", _eval("--device", "cuda"), "cuda", marks=NO_GPU, id="eval-device-cuda"),
    ("eval-out-is-a-file", _with_file("taken", "x", lambda tmp, run: _eval("--out", str(tmp / "taken"))(tmp, run)),
     "taken"),
    ("eval-device-nonsense", _eval("--device", "nosuchdevice"), "nosuchdevice"),
    ("eval-workers-negative", _eval("--workers", "-1"), "--workers"),
    ("eval-restarts-zero", _eval("--restarts", "0"), "--restarts"),
    ("eval-missing-weights", _eval("--weights", "gone.safetensors", model="factory.py:make"), "gone.safetensors"),
    # -- robustlab attack
    ("attack-unknown-attack", _attack("--attack", "pgdd"), "pgdd"),
    ("attack-eps-negative", _attack("--eps", "-3"), "eps"),
    ("attack-eps-abc", _attack("--eps", "abc"), "--eps"),
    ("attack-steps-abc", _attack("--steps", "abc"), "--steps"),
    ("attack-missing-checkpoint", lambda tmp, run: _attack(model=str(tmp / "gone") + "/")(tmp, run), "gone"),
    ("attack-unknown-data", lambda tmp, run: ["attack", "--model", "smallcnn", "--data", "nosuchdata"],
     "nosuchdata"),
    ("attack-unknown-model", _attack(model="nosuchnet"), "nosuchnet"),
    ("attack-resize-back-without-diversity", _attack("--attack", "pgd", "--resize-back"),
     "--resize-back applies to an attack with input diversity"),
    ("attack-diversity-on-a-flatten-head",
     _with_file("flat.py", "import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                "torch.nn.Linear(64, 10))\n",
                lambda tmp, run: _attack("--attack", "di2fgsm", "--p", "1", model=str(tmp / "flat.py") + ":make")(
                    tmp, run)), "--resize-back"),
    ("attack-batch-size-zero", _attack("--batch-size", "0"), "--batch-size"),
    ("attack-limit-zero", _attack("--limit", "0"), "--limit"),
    ("attack-config-unknown-option", lambda tmp, run: _attack("--config", _yaml(tmp, {"epz": 3}))(tmp, run), "epz"),
    ("attack-config-malformed",
     _with_file("a.yaml", "eps: [3\n", lambda tmp, run: _attack("--config", str(tmp / "a.yaml"))(tmp, run)),
     "a.yaml:"),
    pytest.param("attack-device-cuda", _attack("--device", "cuda"), "cuda", marks=NO_GPU, id="attack-device-cuda"),
    ("attack-out-is-a-file",
     _with_file("taken", "x", lambda tmp, run: _attack("--out", str(tmp / "taken"))(tmp, run)), "taken"),
    ("attack-device-nonsense", _attack("--device", "nosuchdevice"), "nosuchdevice"),
    ("attack-missing-config", lambda tmp, run: _attack("--config", str(tmp / "gone.yaml"))(tmp, run), "gone.yaml"),
    ("attack-missing-weights", _attack("--weights", "gone.safetensors"), "gone.safetensors"),
    ("attack-unknown-activation", _attack("--act", "nosuchact"), "nosuchact"),
    ("attack-steps-zero", _attack("--steps", "0"), "steps"),
    ("attack-dag-without-model", lambda tmp, run: ["attack", "--dag"], "--model"),
    ("attack-dag-gamma-abc", lambda tmp, run: ["attack", "--dag", "--model", _dense(tmp), "--gamma", "abc"],
     "--gamma"),
    ("attack-dag-gamma-zero", lambda tmp, run: ["attack", "--dag", "--model", _dense(tmp), "--gamma", "0"],
     "--gamma"),
    ("attack-dag-gamma-300", lambda tmp, run: ["attack", "--dag", "--model", _dense(tmp), "--gamma", "300"],
     "--gamma"),
    ("attack-no-model", lambda tmp, run: ["attack", "--data", "digits"], "--model"),
    # -- robustlab report, list, and the command itself
    ("report-no-results", lambda tmp, run: ["report", str(tmp)], "results.json"),
    ("report-missing-dir", lambda tmp, run: ["report", str(tmp / "gone")], "gone"),
    ("list-nonsense", lambda tmp, run: ["list", "nonsense"], "nonsense"),
    ("unknown-command", lambda tmp, run: ["nosuchcommand"], "nosuchcommand"),
    ("verbose-and-quiet", lambda tmp, run: ["-v", "list", "-q"], "contradict"),
    ("resume-with-another-out", lambda tmp, run: ["train", "--resume", str(run), "--out", str(tmp / "elsewhere")],
     "--resume continues"),
]


PARAMS = [c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in CASES]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with its content digest; Python's
    bytecode caches (from importing a ``file.py:factory``) are not outputs."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.mark.parametrize(("name", "make", "fragment"), PARAMS)
def test_bad_command_line_is_refused_before_work(name, make, fragment, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = make(tmp_path, trained)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, f"{name}: exit code {code}; stderr: {err}"
    assert "Traceback" not in err, err
    assert fragment in err, f"{name}: {fragment!r} not in stderr: {err}"
    assert "invalid literal" not in err, err
    assert _snapshot(tmp_path) == before, f"{name}: files written or changed"


def test_verbose_shows_where_a_refused_input_was_refused(tmp_path, capsys):
    """-v adds the traceback to the one-line error (for a report of a bug); without it, one line."""
    args = ["attack", "--model", "smallcnn", "--data", "digits", "--attack", "pgdd", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    quiet = capsys.readouterr().err
    assert "Traceback" not in quiet and "pgdd" in quiet
    assert main([*args, "-v"]) == 2
    loud = capsys.readouterr().err
    assert "Traceback (most recent call last)" in loud and loud.rstrip().endswith(quiet.rstrip().splitlines()[-1])


def test_a_global_batch_that_processes_cannot_share_is_refused_before_work(tmp_path, monkeypatch, capsys):
    """Under torchrun (WORLD_SIZE=2) train.batch_size=7 cannot be split: refused before the run directory."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    assert main(["train", _yaml(tmp_path, TINY_TRAIN), "train.batch_size=7", "--out", str(out)]) == 2
    assert "config key train.batch_size (7) must be divisible by the number of processes (2)" in capsys.readouterr().err
    assert not out.exists()


def test_under_torchrun_a_config_error_is_said_by_rank_0_alone(tmp_path, monkeypatch, capsys):
    """Every rank checks the config and fails alike: one message, not one per process. An error after a rank
    joined the process group may be its own, so it is said with the rank."""
    from robustlab.train import distributed

    out = tmp_path / "run"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", _yaml(tmp_path, TINY_TRAIN), "train.batch_size=7", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert ("must be divisible by the number of processes (2)" in err) is said and "Traceback" not in err
    monkeypatch.setattr(distributed, "joined", True)
    assert main(["train", _yaml(tmp_path, TINY_TRAIN), "train.batch_size=7", "--out", str(out)]) == 2
    assert "robustlab train: error (rank 1): config key train.batch_size" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", [["eval", "--model", "smallcnn", "--data", "digits"],
                                     ["attack", "--model", "smallcnn", "--data", "digits"], ["study", "quickstart"]],
                         ids=lambda c: c[0])
def test_commands_of_one_process_refuse_torchrun(tmp_path, monkeypatch, capsys, command):
    """Under torchrun every process would do the whole evaluation into the same
    folder: refused before any work, said by rank 0 alone."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    out = tmp_path / "run"
    for rank, said in (("0", True), ("2", False)):
        monkeypatch.setenv("RANK", rank)
        assert main([*command, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert (f"robustlab {command[0]} runs in one process; under torchrun (WORLD_SIZE=4)" in err) is said
        assert "Traceback" not in err and not out.exists()


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import robustlab.app.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_list", interrupted)
    assert main(["list"]) == 130
    err = capsys.readouterr().err
    assert "robustlab list: interrupted; the same command continues from what was saved" in err
    assert "Traceback" not in err


def test_report_on_a_broken_or_unfinished_run_says_what_it_is(trained, tmp_path, capsys):
    run = Path(_copy_run(tmp_path, trained))
    (run / "results.json").write_text("[1, 2]")
    assert main(["report", str(run)]) == 2
    assert "results.json holds a JSON list" in capsys.readouterr().err
    # another tool's JSON, or a kind without its parts: refused, not rendered as an empty page
    page = (run / "report.html").read_bytes()
    for doc, said in (({"foo": 1}, "is not the results of a robustlab run: its kind is None"),
                      ({"kind": "study", "foo": 1}, "is a study results.json without evaluations")):
        (run / "results.json").write_text(json.dumps(doc))
        assert main(["report", str(run)]) == 2
        assert said in capsys.readouterr().err and (run / "report.html").read_bytes() == page
    (run / "results.json").unlink()
    assert main(["report", str(run)]) == 2
    assert "is a train run that has not finished (no results.json yet)" in capsys.readouterr().err
    # several folders: all are checked before any report is written
    (tmp_path / "good").mkdir()
    good = Path(_copy_run(tmp_path / "good", trained))
    (good / "report.html").unlink()
    assert main(["report", str(good), str(tmp_path / "nonexistent")]) == 2
    assert "has no results.json" in capsys.readouterr().err and not (good / "report.html").exists()


def test_a_training_config_given_to_study_is_named_as_one(tmp_path, capsys):
    assert main(["study", "train_vanilla", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "this is a training config" in err and "robustlab train CONFIG" in err and not (tmp_path / "s").exists()
