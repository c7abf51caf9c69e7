"""Every evaluation kind of a study gets a header of its own in the report:
what was measured, under which budget and steps, on which data, and n."""
from __future__ import annotations

import json
import re

from safetensors.torch import save_file

from robustlab.report.html import write_study_report
from robustlab.report.study import KIND_TITLES
from tests.report.report_helpers import images, study_results


def _evaluations() -> dict:
    cfg = {"steps": 15, "step_size": 1 / 255}
    return {
        "holdout": {"kind": "holdout", "n": 180,
                    "options": {"kind": "holdout", "models": ["a", "b", "c"], "attacks": ["ifgsm", "mdi2fgsm"],
                                "eps": 15, "weights": None},
                    "attack_configs": {"ifgsm": cfg, "mdi2fgsm": cfg},
                    "table": [{"attack": "ifgsm", "setting": "ensemble", "-a": 0.9, "-b": 0.8, "-c": 0.85},
                              {"attack": "ifgsm", "setting": "hold-out", "-a": 0.3, "-b": 0.2, "-c": 0.25}]},
        "nips": {"kind": "nips2017", "n": 200, "eps_255_per_batch": [4, 16, 8, 16],
                 "options": {"kind": "nips2017", "ensemble": ["a", "c"], "targets": ["b", "d"],
                             "attacks": ["mifgsm", "mdi2fgsm"], "batches": 4},
                 "table": [{"attack": "mifgsm", "→ b": 0.4, "→ d": 0.5, "average": 0.45}]},
        "bn": {"kind": "bn_statistics", "n": 64,
               "options": {"kind": "bn_statistics", "models": ["mbn"], "channels": 20, "layer": "layer2.0.bn1"},
               "table": [{"model": "mbn", "layer": "layer2.0.bn1", "route": "adv", "statistic": "running vs clean",
                          "|Δ mean|": 0.3, "var ratio": 1.7}]},
        "sin": {"kind": "stylized", "n": 50, "options": {"kind": "stylized", "models": ["a"], "root": "/d/sin"},
                "data": {"images": 50, "classes_present": 10, "classes": 10, "restricted_to_present": False},
                "table": [{"model": "a", "Stylized-ImageNet accuracy": 0.12}]},
        "ina": {"kind": "imagenet_a", "n": 40, "options": {"kind": "imagenet_a", "models": ["a"], "root": "/d/ina"},
                "data": {"images": 40, "classes_present": 7, "classes": 10, "restricted_to_present": True},
                "table": [{"model": "a", "ImageNet-A accuracy": 0.05}]},
        "gaps": {"kind": "gaps", "n": [300, 300],
                 "options": {"sweep": "defaults.data.size", "values": ["28", "56"], "evaluation": "transfer",
                             "differences": {"di2_gap": ["di2fgsm", "ifgsm"]}},
                 "table": [{"size": "28", "ifgsm": 0.3, "di2fgsm": 0.4, "di2_gap": 0.1}]},
        "cross": {"kind": "dag transfer", "n": 24,
                  "options": {"sums": [["seg", "det"]], "permutation_draws": 3, "clip": "Trunc(X + r) to [0, 1]"},
                  "table": [{"perturbation": "seg", "→ seg": 0.1, "→ det": 0.6}]},
        "fooling": {"kind": "dag targeted", "n": 1, "options": {"model": "seg"},
                    "table": [{"model": "seg", "painted pixels": 0.9}]},
        "proposals": {"kind": "dag proposals", "n": 24, "options": {"model": "det", "nms_ious": [0.7, 0.9]},
                      "table": [{"RPN NMS IoU": 0.7, "proposals per image": 300, "mAP after DAG": 0.4}]},
    }


def _headers(page: str, evaluation: str) -> str:
    m = re.search(rf'<section class="level2" id="evaluation-{evaluation}">\s*<header>(.*?)</header>', page, re.S)
    assert m, evaluation
    return re.sub(r"<[^>]+>", " ", m.group(1))


def test_every_newer_kind_has_a_specific_header(tmp_path):
    res = study_results()
    res["evaluations"].update(_evaluations())
    (tmp_path / "results.json").write_text(json.dumps(res))
    page = write_study_report(tmp_path).read_text()
    h = {name: _headers(page, name) for name in _evaluations()}
    assert "protocol generic" not in page
    assert "ε = 15/255 (0.0588) L∞" in h["holdout"] and "I-FGSM 15" in h["holdout"]
    assert "on the ensemble of the others" in h["holdout"] and "a, b, c" in h["holdout"]
    assert "n = 180 images every model classifies correctly" in h["holdout"]
    assert KIND_TITLES["holdout"] in h["holdout"]
    assert "ε drawn per batch from {4, 8, 12, 16}/255 (drawn here: 4, 8, 16)" in h["nips"]
    assert "N = 10 steps, α = ε/N" in h["nips"] and "made on a+c" in h["nips"]
    assert "misclassification rate of b, d" in h["nips"] and "n = 200 images in 4 batches" in h["nips"]
    assert "Fig. 6.5" in h["bn"] and "20 random channels of layer2.0.bn1" in h["bn"]
    assert "n = 64 images (one batch)" in h["bn"]
    assert "Stylized-ImageNet images read from /d/sin" in h["sin"] and "n = 50 images of 10 classes" in h["sin"]
    assert "top-1 over the logits of the 7 classes present (of 10)" in h["ina"] and "ImageNet-A" in h["ina"]
    assert "ε not applicable" in h["sin"] and "ε not applicable" in h["ina"]
    assert "sweep of defaults.data.size over 28, 56" in h["gaps"] and "di2_gap = DI²-FGSM − I-FGSM" in h["gaps"]
    assert "n = 300 images per value" in h["gaps"]
    assert "summed perturbations seg+det" in h["cross"] and "3 draws" in h["cross"] and "n = 24 scenes" in h["cross"]
    assert "fooling image" in h["fooling"] and "n = 1 scene" in h["fooling"]
    assert "NMS IoU at 0.7, 0.9" in h["proposals"]
    for name, ev in _evaluations().items():
        assert f"{ev['kind']} · {KIND_TITLES[ev['kind']]}" in h[name], name


def test_a_sweep_value_names_its_value_and_draws_its_examples(tmp_path):
    """A sweep's combined EVALUATION_VALUE section says its value and finds the
    example files the value's own study wrote (in its folder)."""
    res = study_results(models=("a", "b"))
    pgd = res["evaluations"].pop("pgd")
    pgd["examples"] = {"a": "evaluations/pgd/examples-a.safetensors"}
    res["evaluations"] = {"pgd_28": pgd}
    res["sweep"] = {"key": "defaults.data.size", "values": ["28"], "runs": {"28": "size_28"}}
    (tmp_path / "results.json").write_text(json.dumps(res))
    (tmp_path / "size_28" / "evaluations" / "pgd").mkdir(parents=True)
    save_file(images(3), str(tmp_path / "size_28" / "evaluations" / "pgd" / "examples-a.safetensors"))
    page = write_study_report(tmp_path).read_text()
    head = _headers(page, "pgd_28")
    assert "sweep value defaults.data.size = 28: evaluation pgd of the study in size_28/" in head
    assert "ε = 25/255 (0.0980) L∞" in head
    assert page.count('alt="adversarial example') == 3
