"""Every shipped study runs to completion in its `--smoke` form (the full runs' numbers are in docs/results.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustlab.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p for p in ROOT.joinpath("configs").glob("*.yaml") if not p.stem.startswith(("train_", "attack_")))

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_study_runs_in_smoke_form(tmp_path, path, capsys):
    out = tmp_path / path.stem
    assert main(["study", str(path), "--smoke", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["models"] and res["evaluations"]
    assert all(ev["table"] for ev in res["evaluations"].values())
    assert (out / "report.html").stat().st_size > 10_000
    # every shipped study declares its claims, all evaluable in smoke form
    assert res["claims"] and {c["verdict"] for c in res["claims"]} <= {"holds", "does not hold"}, res["claims"]
    for c in res["claims"]:
        assert c["values"] and all(isinstance(v, float) for v in c["values"].values()), c
    assert "report:" in capsys.readouterr().out
