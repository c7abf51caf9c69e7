"""`robustlab eval` and `robustlab report` on trained run directories."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustlab.app.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train_vanilla.yaml"
TINY = ["data.name=digits", "train.epochs=2", "train.batch_size=64", "eval.attack=null", "data.eval_limit=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 0), ("b", 1)):
        assert main(["train", str(CONFIG), *TINY, f"seed={seed}", "--out", str(root / name)]) == 0
    return root


def test_whitebox_and_corruption_write_results_and_report(runs, capsys):
    out = runs / "a" / "eval-all"
    assert main(["eval", "--checkpoint", str(runs / "a"), "--checkpoint", str(runs / "b"), "--data", "digits",
                 "--protocol", "all", "--eps", "25", "--step-size", "4", "--steps", "1,5,10", "--limit", "64",
                 "--targeted"]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    curve = res["whitebox"]["PGD untargeted"]["accuracy"]
    assert all(a >= b for a, b in zip(curve, curve[1:])) and "PGD targeted" in res["whitebox"]
    assert isinstance(res["sanity"]["warnings"], list) and "sanity" in text
    assert set(res["transfer"]["success"]) == {"ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm"}
    assert len(res["corruption"]["errors"]) == 15
    assert res["bn_statistics"]  # running statistics of the model's batch norms, plotted in the report
    page = (out / "report.html").read_text()
    assert f"{curve[-1]:.4f}" in page
    assert main(["report", str(runs / "a")]) == 0
    assert "eval-all" in (runs / "a" / "report.html").read_text()  # the training report includes the eval run


@pytest.mark.parametrize(("args", "match"), [
    (["--protocol", "transfer"], "at least two"),
    (["--steps", "a,b"], "--steps"),
    (["--eps", "-1"], "eps"),
])
def test_eval_errors(runs, capsys, args, match):
    assert main(["eval", "--checkpoint", str(runs / "a"), "--data", "digits", *args]) == 2
    assert match in capsys.readouterr().err
