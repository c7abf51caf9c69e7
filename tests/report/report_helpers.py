"""Hand-built results for the report tests (no training: fast), and a
headless Chromium that reports how a page lays out at a given width."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

CORRUPTIONS = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression"]
EVIL = "<script>alert('x')</script>"


def _final(acc: float, adv: bool) -> dict:
    out = {"kind": "epoch", "epoch": 2, "step": 40, "train_loss": 1.1, "clean_acc": acc, "train_seconds": 3.0}
    if adv:
        out.update(train_acc_adv=0.4, train_acc_clean=0.7, train_loss_adv=1.5, train_loss_clean=0.9)
    else:
        out["train_acc"] = 0.8
    return out


def study_results(claims: list | None = None, models: tuple[str, ...] = ("vanilla", "pgd_at", "sat", "advprop",
                                                                         "vanilla_b")) -> dict:
    """A study's results.json as robustlab study writes it (quickstart-shaped), with every evaluation kind."""
    recipes = {"vanilla": {"name": "vanilla"}, "vanilla_b": {"name": "vanilla"},
               "pgd_at": {"name": "madry", "eps": 25, "steps": 5, "step_size": 8, "targeted": False},
               "sat": {"name": "madry", "eps": 25, "steps": 5, "step_size": 8, "targeted": False},
               "advprop": {"name": "advprop", "eps": 4, "steps": 2, "step_size": 2}}
    ms = {m: {"run_dir": f"runs/x/models/{m}", "recipe": recipes.get(m, {"name": "vanilla"}),
              "model": {"name": "smallcnn", "width": 16, **({"act": "silu"} if m == "sat" else {})}, "steps": 40,
              "train_seconds": 3.0, "final": _final(0.8 - 0.05 * k, recipes.get(m, {}).get("name") != "vanilla")}
          for k, m in enumerate(models)}
    steps = [1, 2, 5, 10, 20]
    curves = {m: {"steps": steps, "accuracy": [0.6 - 0.1 * k - 0.01 * s for s in steps]}
              for k, m in enumerate(models[:4])}
    success = {a: {models[0]: {t: 0.3 + 0.1 * j + 0.05 * i for j, t in enumerate((models[0], models[-1]))}}
               for i, a in enumerate(("ifgsm", "di2fgsm", "mdi2fgsm"))}
    errors = {m: {c: {str(s): min(1.0, 0.2 + 0.05 * s + 0.01 * k) for s in (1, 3, 5)} for c in CORRUPTIONS}
              for k, m in enumerate(models[:4])}
    res = {
        "kind": "study", "name": "quickstart", "title": "vanilla vs PGD-AT vs SAT vs AdvProp",
        "claim": "Adversarial training buys robustness.", "chapter": 4, "notes": None, "data": "fashion_mnist",
        "models": ms, "seconds": 120.0,
        "evaluations": {
            "clean": {"kind": "accuracy", "options": {"kind": "accuracy", "models": list(models)}, "n": 500,
                      "table": [{"model": m, "clean accuracy": 0.802 - 0.01 * k} for k, m in enumerate(models)]},
            "pgd": {"kind": "whitebox", "options": {"kind": "whitebox", "models": list(models[:4]), "eps": 25,
                                                    "step_size": 4, "steps": steps, "loss": "ce", "targeted": False,
                                                    "restarts": 1},
                    "n": 500, "curves": curves, "warnings": {m: [] for m in models[:4]},
                    "table": [{"model": m, **{f"PGD-{s}": a for s, a in zip(c["steps"], c["accuracy"])},
                               "masking": "none"} for m, c in curves.items()]},
            "transfer": {"kind": "transfer", "options": {"kind": "transfer", "sources": [models[0]],
                                                         "targets": [models[0], models[-1]],
                                                         "attacks": ["ifgsm", "di2fgsm", "mdi2fgsm"], "eps": 16},
                         "n": 300, "value": "success rate on images every model classifies correctly",
                         "raw": {"success": success, "n": 300},
                         "table": [{"attack": a, "source": s, **{f"→ {t}": v for t, v in row.items()}}
                                   for a, by in success.items() for s, row in by.items()]},
            "corruption": {"kind": "corruption", "options": {"kind": "corruption", "models": list(models[:4]),
                                                             "corruptions": CORRUPTIONS, "severities": [1, 3, 5]},
                           "n": 200, "value": "accuracy, mean over severities", "errors": errors,
                           "table": [{"model": m, "clean": 0.8, "corrupted (mean)": 0.6,
                                      **{c: 1 - sum(e[c].values()) / 3 for c in CORRUPTIONS}}
                                     for m, e in errors.items()]},
        },
    }
    if claims is not None:
        res["claims"] = claims
    return res


CLAIMS = [
    {"id": "T3.1", "says": "M-DI²-FGSM transfers better than I-FGSM to an unseen model", "verdict": "holds",
     "values": {"I-FGSM → vanilla_b": 0.4, "M-DI²-FGSM → vanilla_b": 0.5}},
    {"id": "F5.3", "says": "SiLU is more robust than ReLU under PGD-20", "verdict": "does not hold",
     "values": {"pgd_at": 0.2, "sat": 0.18, "margin": {"needed": 0.01}}},
]


def images(k: int = 4, c: int = 1, size: int = 28, eps: float = 25 / 255, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(k, c, size, size, generator=g)
    delta = (torch.rand(k, c, size, size, generator=g) * 2 - 1).sign() * eps
    adv = (clean + delta).clamp(0, 1)
    return {"clean": clean, "adversarial": adv, "index": torch.arange(k)}


def eval_results(name: str = "model", n: int = 64) -> dict:
    per = {"clean_accuracy": 0.9, "robust_accuracy": 0.45, "n": n, "eps": 8 / 255, "eps_255": 8.0, "norm": "linf",
           "protocol": "standard", "per_attack": {"apgd-ce": 0.5, "apgd-margin": 0.45}, "warnings": [],
           "audit": {"linf_max": 8 / 255, "linf_max_255": 8.0, "l2_max": 1.2, "nan_count": 0, "pixel_min": 0.0,
                     "pixel_max": 1.0, "within_budget": True},
           "seconds": 1.0, "options": {"steps": 100, "targets": 3, "target_steps": None, "restarts": 1,
                                       "stages": ["apgd-ce", "apgd-margin"]},
           "fallback": {"used": False, "reason": ""}, "curve": None, "model_calls": 10, "iterations": 10,
           "per_sample": {"clean_correct": [True, True, False, True], "broken_by": ["apgd-ce", None, "clean", None],
                          "broken_at": [12, -1, 0, -1]}}
    return {"kind": "eval", "protocol": "standard", "data": "cifar10", "n": n, "eps": 8 / 255, "eps_255": 8.0,
            "norm": "linf", "model_specs": [name], "route": None, "models": {name: per}, "seconds": 1.0, **{
                k: per[k] for k in ("robust_accuracy", "clean_accuracy", "per_attack", "warnings", "audit", "fallback",
                                    "n", "seconds", "curve")}}


# ------------------------------------------------------------------ Chromium


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium where apt exists)")
    return found


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]

# Measures, once every image has loaded, the page's width against the window's
# and every visible table wrapper that has to scroll, and tells the host page.
PROBE = """<script>addEventListener("load", () => {
  const wide = [...document.querySelectorAll(".table-wrap")]
    .filter(e => e.checkVisibility() && e.scrollWidth > e.clientWidth + 1)  // a folded table is not drawn
    .map(e => (e.closest("section") || {}).id || "?");
  const fit = {scroll: document.documentElement.scrollWidth, inner: innerWidth, wide: wide};
  parent.postMessage(JSON.stringify(fit), "*");
});</script>"""


def layout(report: Path, width: int, tmp: Path) -> dict:
    """How ``report`` lays out in a ``width``-px viewport: ``scroll`` (the page's
    scrollWidth), ``inner`` (the viewport), ``wide`` (tables that scroll in their
    wrapper). Headless Chromium's windows are at least 500 px wide, so the page
    is shown in an iframe of exactly ``width`` px."""
    probe = tmp / f"probe-{width}.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    host = tmp / f"host-{width}.html"
    host.write_text(f"<!DOCTYPE html><html><body style='margin:0'><iframe src='{probe.name}' "
                    f"style='width:{width}px;height:1600px;border:0'></iframe><script>addEventListener('message', "
                    "e => document.body.setAttribute('data-fit', e.data))</script></body></html>")
    proc = subprocess.run([chromium(), *FLAGS, f"--window-size={width + 100},1700", "--virtual-time-budget=5000",
                           "--dump-dom", host.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    import html as html_lib
    import re

    m = re.search(r'data-fit="([^"]*)"', proc.stdout)
    assert m, proc.stdout[-1000:] + proc.stderr[-2000:]
    return json.loads(html_lib.unescape(m.group(1)))


def screenshot(page: Path, shot: Path, width: int, height: int = 2000) -> list[str]:
    """A ``width``-px screenshot of ``page`` (in an iframe below 500 px); the console lines Chromium logged."""
    target = page
    if width < 500:
        target = page.with_name(f"frame-{width}-{page.name}")
        target.write_text(f"<!DOCTYPE html><html><body style='margin:0'><iframe src='{page.name}' "
                          f"style='width:{width}px;height:{height}px;border:0'></iframe></body></html>")
    proc = subprocess.run([chromium(), *FLAGS, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                           f"--window-size={width},{height}", target.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
