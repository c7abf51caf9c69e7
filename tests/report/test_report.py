"""The HTML report: numbers match results.json; it renders in headless Chromium
(non-blank screenshot, no console message)."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from robustlab.report import write_report

RESULTS = {
    "kind": "eval", "protocol": "all", "clean_accuracy": 0.8125,
    "whitebox": {"PGD untargeted": {"steps": [10, 100, 1000], "accuracy": [0.5, 0.4375, 0.4125]}},
    "sanity": {"measurements": {"n": 200, "pgd": 0.4375, "noise": 0.79, "unbounded": 0.0},
               "warnings": [{"check": "noise", "message": "random noise is stronger than PGD", "values": {}}]},
    "transfer": {"success": {"ifgsm": {"A": {"A": 0.9, "B": 0.3}, "B": {"A": 0.25, "B": 0.85}}}, "n": 100},
    "corruption": {"clean_error": 0.2, "mean_error": 0.35, "errors": {"gaussian_noise": {"1": 0.25, "5": 0.6}}},
    "history": [{"kind": "epoch", "epoch": 1, "step": 10, "train_loss": 1.5, "clean_acc": 0.7},
                {"kind": "epoch", "epoch": 2, "step": 20, "train_loss": 1.1, "clean_acc": 0.8}],
    "recipe": {"name": "madry"}, "steps": 20, "train_seconds": 3.0, "images_per_second": 850.0,
}


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _render(path, shot):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium where apt exists)")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--screenshot={shot}", "--window-size=1200,1600", path.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture()
def run_dir(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    return tmp_path


def test_report_holds_the_numbers_of_results_json(run_dir):
    page = write_report(run_dir).read_text()
    for value in ("0.4375", "0.4125", "madry", "random noise is stronger than PGD", "85.0000", "data:image/png"):
        assert value in page, value
    assert "http://" not in page and "https://" not in page  # self-contained


def test_report_renders_in_chromium_without_console_messages(run_dir, tmp_path):
    report = write_report(run_dir)
    console = _render(report, tmp_path / "shot.png")
    assert console == []
    img = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), dtype=float)
    assert img.std() > 10 and (img < 128).mean() > 0.01  # text and plots, not a blank page


def test_console_errors_are_detected(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>console.error('boom')</script></body></html>")
    assert any("boom" in line for line in _render(bad, tmp_path / "bad.png"))


def test_missing_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        write_report(tmp_path)
