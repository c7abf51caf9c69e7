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


def test_whitebox_evaluations_keep_a_few_examples_the_report_draws(tmp_path):
    raw = {**TINY, "models": {"plain": TINY["models"]["plain"]},
           "evaluations": {"pgd": {"kind": "whitebox", "eps": 32, "step_size": 8, "steps": [1, 3]}}}
    out = tmp_path / "run"
    assert main(["-q", "study", str(_write(tmp_path, raw)), "--out", str(out)]) == 0
    ev = json.loads((out / "results.json").read_text())["evaluations"]["pgd"]
    assert set(ev["examples"]) == {"plain"}
    kept = load_file(str(out / ev["examples"]["plain"]))
    assert kept["clean"].shape == kept["adversarial"].shape == (8, 1, 8, 8)  # bounded: 8 of the 64 images
    assert kept["index"].tolist() == list(range(8))
    assert float((kept["adversarial"] - kept["clean"]).abs().max()) <= 32 / 255 + 1e-6  # inside the ε-ball
    fates = ev["per_sample"]["plain"]
    assert len(fates["broken_by"]) == len(fates["broken_at"]) == 8
    assert all(at is None or 0 <= at <= 3 for at in fates["broken_at"])  # within max(steps)
    html = (out / "report.html").read_text()
    grid = html.index("adversarial examples of plain")
    assert grid > html.index('id="evaluation-pgd"') and "<img" in html[grid:]
    assert "broken by PGD at step" in html or "robust" in html[grid:]
