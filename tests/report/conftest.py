"""Run directories for the report tests, built by hand (fast)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

from tests.report.report_helpers import CLAIMS, eval_results, images, study_results


@pytest.fixture()
def study_dir(tmp_path: Path) -> Path:
    """A study run directory with claims and kept adversarial examples of one evaluation."""
    run = tmp_path / "study"
    (run / "evaluations" / "pgd").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(study_results(CLAIMS)))
    save_file(images(), str(run / "evaluations" / "pgd" / "examples-vanilla.safetensors"))
    return run


@pytest.fixture()
def eval_dir(tmp_path: Path) -> Path:
    run = tmp_path / "eval"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(eval_results()))
    save_file(images(4, 3, 32, 8 / 255), str(run / "examples-model.safetensors"))
    return run
