"""RunDir: one folder holds one run (fingerprint + lock), created lazily."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustlab.app.rundir import LOCK, RUN, RunDir, RunDirLocked, fingerprint_of, first_free


def test_fingerprint_is_the_canonical_json_sha256():
    assert fingerprint_of({"b": 1, "a": [1, 2]}) == fingerprint_of({"a": [1, 2], "b": 1})
    assert fingerprint_of({"a": 1}) != fingerprint_of({"a": 2}) and len(fingerprint_of({})) == 64


def test_folder_is_created_with_the_first_file_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir(None, "demo", fingerprint_of({"x": 1}))
    assert run.path.parent.name == "runs" and run.path.name.startswith("demo-") and not run.path.exists()
    run.write_config({"x": 1})
    stored = json.loads((run.path / "run.json").read_text())
    assert stored["kind"] == "demo" and stored["fingerprint"] == fingerprint_of({"x": 1}) and stored["robustlab"]
    assert int((run.path / LOCK).read_text()) == os.getpid()
    res = run.finish({"kind": "demo", "value": 1})
    assert json.loads((run.path / "results.json").read_text()) == {"kind": "demo", "value": 1}
    assert (run.path / "report.html").is_file() and res["run_dir"] == str(run.path)
    run.close()
    assert not (run.path / LOCK).exists()


def test_run_json_names_the_git_commit_of_the_source_or_none(tmp_path, monkeypatch):
    from robustlab.app import rundir

    head = subprocess.run(["git", "-C", str(Path(rundir.__file__).parents[2]), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    with RunDir(tmp_path / "a", "demo", None) as run:
        run.finish({"kind": "demo"}, report=False)
    assert json.loads((tmp_path / "a" / RUN).read_text())["commit"] == (head or None)

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    for broken in (no_git, lambda *a, **k: (_ for _ in ()).throw(subprocess.TimeoutExpired("git", 2)),
                   lambda *a, **k: subprocess.CompletedProcess(a, 128, "", "fatal: not a git repository")):
        rundir.source_commit.cache_clear()
        monkeypatch.setattr(rundir.subprocess, "run", broken)
        assert rundir.source_commit() is None
    rundir.source_commit.cache_clear()
    monkeypatch.setattr(rundir.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, f"{tmp_path}\n{'a' * 40}\n", ""))  # an enclosing repository's commit is not robustlab's
    assert rundir.source_commit() is None
    rundir.source_commit.cache_clear()
    monkeypatch.setattr(rundir.subprocess, "run", no_git)
    with RunDir(tmp_path / "b", "demo", None) as run:  # never fails a run
        run.finish({"kind": "demo"}, report=False)
    assert json.loads((tmp_path / "b" / RUN).read_text())["commit"] is None
    rundir.source_commit.cache_clear()


def test_finishing_refreshes_the_commit_of_a_resumed_run(tmp_path, monkeypatch):
    from robustlab.app import rundir

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / RUN).write_text(json.dumps({"kind": "demo", "fingerprint": None, "created": "then",
                                                  "robustlab": "0.0", "commit": "b" * 40}))
    monkeypatch.setattr(rundir, "source_commit", lambda: "c" * 40)
    with RunDir(tmp_path / "r", "demo", None) as run:
        run.finish({"kind": "demo"}, report=False)
    stored = json.loads((tmp_path / "r" / RUN).read_text())
    assert stored["commit"] == "c" * 40 and stored["created"] == "then"


def test_another_run_is_refused_before_anything_is_written(tmp_path):
    with RunDir(tmp_path / "r", "train", "a" * 64) as run:
        run.finish({"kind": "train"}, report=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    for kind, fp in (("train", "b" * 64), ("study", "a" * 64)):
        with pytest.raises(ValueError, match="holds another run"):
            RunDir(tmp_path / "r", kind, fp)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before
    again = RunDir(tmp_path / "r", "train", "a" * 64)
    assert again.reused
    again.close()


@pytest.mark.parametrize("text, fragment", [('{"kind": ', "is not valid JSON"), ("[1, 2]", "holds a JSON list"),
                                            ("null", "holds a JSON null")])
def test_a_run_json_that_is_not_a_json_object_is_refused_naming_it(tmp_path, text, fragment):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / RUN).write_text(text)
    with pytest.raises(ValueError, match=f"{tmp_path / 'r' / RUN} {fragment}.*; refusing to write into"):
        RunDir(tmp_path / "r", "train", None)
    assert (tmp_path / "r" / RUN).read_text() == text and not (tmp_path / "r" / LOCK).exists()


def test_a_second_writer_fails_naming_the_holder_and_a_stale_lock_is_taken_over(tmp_path):
    first = RunDir(tmp_path / "r", "train", None)
    first.ensure()
    with pytest.raises(RunDirLocked, match=f"process {os.getpid()}"):
        RunDir(tmp_path / "r", "train", None)
    first.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "r" / LOCK).write_text(dead.stdout)  # a killed run's lock
    run = RunDir(tmp_path / "r", "train", None)
    run.ensure()
    assert int((tmp_path / "r" / LOCK).read_text()) == os.getpid()
    run.close()


def test_first_free_skips_folders_holding_other_runs(tmp_path):
    base = tmp_path / "eval-standard"
    assert first_free(base, "eval", "a" * 64) == base  # nothing there yet
    with RunDir(base, "eval", "a" * 64) as run:
        run.finish({"kind": "eval"}, report=False)
    assert first_free(base, "eval", "a" * 64) == base  # its own run: reused
    assert first_free(base, "eval", "b" * 64) == tmp_path / "eval-standard-2"
    (tmp_path / "eval-standard-2").mkdir()
    (tmp_path / "eval-standard-2" / "notes.txt").write_text("a user's file")
    assert first_free(base, "eval", "b" * 64) == tmp_path / "eval-standard-3"


def test_written_files_take_the_umask_mode_whatever_writes_them(tmp_path):
    """model.safetensors and state.safetensors were 0600, every other file of a run 0644."""
    import stat

    import torch

    from robustlab._io import write_json, write_tensors

    write_json(tmp_path / "a.json", {"a": 1})
    write_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
    (tmp_path / "plain.txt").write_text("made by open()")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["a.json"] == modes["t.safetensors"] == modes["plain.txt"], modes
