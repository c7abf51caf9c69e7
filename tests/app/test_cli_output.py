"""What the commands write when stderr is not a terminal (a CI log, a pipe):
progress as plain lines on stderr, never a carriage return, nothing with -q;
and final summaries on stdout within 100 columns (issue 17)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustlab.app.summary import WIDTH

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train_vanilla.yaml"
TINY = ["data.name=digits", "data.limit=256", "train.epochs=1", "train.batch_size=64", "eval.attack=null",
        "data.eval_limit=64"]


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}  # a wide terminal must not widen summaries
    proc = subprocess.run([sys.executable, "-m", "robustlab", *argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_fits(stdout: str) -> None:
    """Every summary line fits; a path alone on its line may be as long as it is."""
    long = [line for line in stdout.splitlines() if len(line) > WIDTH and not Path(line).exists()]
    assert long == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("cli_output")
    return root, _run("train", str(CONFIG), *TINY, "--out", str(root / "train"), cwd=root)


def _commands(root: Path, tag: str) -> dict[str, list[str]]:
    run = str(root / "train")
    return {
        "train": ["train", str(CONFIG), *TINY, "--out", str(root / f"train-{tag}")],
        "eval": ["eval", "--model", run, "--data", "digits", "--protocol", "quick", "--limit", "48",
                 "--eps", "8", "--out", str(root / f"eval-{tag}")],
        "attack": ["attack", "--model", run, "--data", "digits", "--limit", "96", "--steps", "3",
                   "--batch-size", "32", "--out", str(root / f"attack-{tag}")],
    }


# the closing progress line of each command's long loop
PROGRESS = {"train": "train vanilla: 4/4 steps (100%) in ", "eval": "eval train: 48/48 samples (100%) in ",
            "attack": "attack pgd: 96/96 images (100%) in "}


@pytest.mark.parametrize("command", ["train", "eval", "attack"])
def test_progress_lines_in_a_log_and_none_with_quiet(trained, command):
    root, first = trained
    proc = first if command == "train" else _run(*_commands(root, "loud")[command], cwd=root)
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    assert PROGRESS[command] in proc.stderr, proc.stderr
    assert PROGRESS[command] not in proc.stdout  # progress on stderr, results on stdout
    _assert_fits(proc.stdout)

    quiet = _run("-q", *_commands(root, "quiet")[command], cwd=root)
    assert "\r" not in quiet.stdout and "\r" not in quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    assert quiet.stdout.strip()  # the summary is still printed
    _assert_fits(quiet.stdout)


def test_work_share_leaves_resumed_samples_out_of_the_mean_cost():
    from robustlab.app.evaluate import work_done

    # 100 samples: 40 resumed (no work here), 10 finished here and 10 under attack with at most
    # 300 evaluations left; 2000 used so far; 5 waiting, 35 unread. Mean cost (2000 + 300) / 20 = 115.
    d = {"done": 50, "resumed": 40, "active": 10, "waiting": 5, "evaluations": 2000, "evaluations_left": 300}
    assert work_done(d, 100) == pytest.approx(2000 / (2000 + 300 + 40 * 115))
    assert work_done({**d, "resumed": 0}, 100) == pytest.approx(2000 / (2000 + 300 + 40 * 2300 / 60))
    assert work_done({"done": 100, "active": 0, "waiting": 0, "evaluations": 0, "evaluations_left": 0}, 100) == 1
