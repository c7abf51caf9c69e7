"""A study keeps the adversarial examples of its robust evaluations, and its report shows them."""
from __future__ import annotations

import json

from safetensors.torch import load_file

from robustlab.app.cli import main
from tests.test_study import TINY, _write


def test_robust_evaluations_keep_examples_the_report_draws(tmp_path):
    raw = {**TINY, "models": {"plain": TINY["models"]["plain"]},
           "evaluations": {"robust": {"kind": "robust", "protocol": "quick", "eps": 32}}}
    out = tmp_path / "run"
    assert main(["-q", "study", str(_write(tmp_path, raw)), "--out", str(out)]) == 0
    ev = json.loads((out / "results.json").read_text())["evaluations"]["robust"]
    assert set(ev["examples"]) == {"plain"}
    kept = load_file(str(out / ev["examples"]["plain"]))
    assert kept["clean"].shape == kept["adversarial"].shape and kept["clean"].shape[0] > 0
    assert float((kept["adversarial"] - kept["clean"]).abs().max()) <= 32 / 255 + 1e-6  # inside the ε-ball
    html = (out / "report.html").read_text()
    assert "adversarial examples of plain" in html and "<img" in html
