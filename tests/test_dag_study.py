"""DAG studies (`kind: dag`, ch. 2) and `robustlab attack --dag`: config checks, run directory, reuse, report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from robustlab.app.cli import main
from robustlab.app.dag import load_dense, resolve_dag_study
from robustlab.app.study import load_study
from robustlab.report.html import table_rows
from robustlab.report.plots import colorize

TINY = {
    "kind": "dag", "task": "segmentation", "name": "tiny_dag", "seed": 0,
    "scenes": {"source": "shapes", "size": 32, "max_objects": 2, "train": 48, "test": 2},
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.01},
    "models": {"a": {"width": 4}, "b": {"width": 4, "seed": 1}},
    "attack": {"max_iter": 3}, "pictures": 1,
    "smoke": {"scenes.test": 1},
    "claims": [{"id": "self", "says": "DAG does not raise mIoU",
                "holds_if": 'table_2_1[a]."mIoU adversarial" <= table_2_1[a]."mIoU clean"'}],
}


@pytest.mark.parametrize("change, message", [
    ({"task": "classification"}, "task: segmentation or detection"),
    ({"bogus": 1}, "unknown key(s) ['bogus']"),
    ({"scenes": {"source": "cifar"}}, "scenes.source must be one of"),
    ({"scenes": {"sizee": 3}}, "unknown key(s) ['scenes.sizee']"),
    ({"scenes": {"test": 0}}, "scenes.test must be a positive integer"),
    ({"attack": {"gamma": 0}}, "attack.gamma must be > 0"),
    ({"attack": {"gamma": "abc"}}, "attack.gamma must be a number in 0-255 units"),
    ({"attack": {"gamma": -1}}, "attack.gamma must be > 0 (0-255 units"),  # the message a 0 gets, in any notation
    ({"attack": {"gamma": "-1/255"}}, "attack.gamma must be > 0 (0-255 units"),
    ({"attack": {"gamma": "-0.002px"}}, "attack.gamma must be > 0 (0-255 units"),
    ({"attack": {"gamma": "nan"}}, "attack.gamma must be finite"),
    ({"attack": {"nms_iou": 0.9}}, "unknown key(s) ['attack.nms_iou']"),  # a detection option
    ({"models": {}}, "'models' must map"),
    ({"models": {"a": {"depth": 3}}}, "models.a takes width and seed"),
    ({"nms_ious": [0.7, 1.5]}, "nms_ious must be a list"),
])
def test_bad_dag_studies_are_refused_naming_the_key(change, message):
    with pytest.raises(ValueError) as err:
        resolve_dag_study({**TINY, **change})
    assert message in str(err.value)


def test_shipped_dag_configs_resolve_with_the_thesis_attack_settings():
    root = Path(__file__).resolve().parents[1] / "configs"
    seg = load_study(root / "ch2_dag_segmentation.yaml")
    det = load_study(root / "ch2_dag_detection.yaml")
    assert seg.task == "segmentation" and seg.attack.gamma == 0.5 and seg.attack.max_iter == 200
    assert seg.attack.kwargs()["gamma"] == det.attack.kwargs()["gamma"] == 0.5 / 255  # eq. 2.3's γ, in pixels
    assert det.task == "detection" and det.attack.max_iter == 150 and det.attack.nms_iou == 0.9
    assert det.attack.select_iou == 0.1 and det.attack.score_thresh == 0.1
    assert load_study(root / "ch2_dag_segmentation.yaml", smoke=True).scenes.test < seg.scenes.test


@pytest.mark.parametrize("written", [0.5, "0.5", "0.5/255", f"{0.5 / 255!r}px", "1/510"])
def test_gamma_takes_the_notations_of_a_budget_and_keeps_what_is_written(written):
    study = resolve_dag_study({**TINY, "attack": {"gamma": written}})
    assert study.attack.kwargs()["gamma"] == pytest.approx(0.5 / 255, rel=1e-12)
    assert study.attack.to_dict()["gamma"] == written  # results.json and the perturbation keys as written


def test_colorize_maps_classes_to_distinct_colours():
    import torch

    lab = torch.tensor([[0, 1], [2, 255]])
    rgb = colorize(lab)
    assert rgb.shape == (3, 2, 2) and float(rgb[:, 0, 0].sum()) == 0.0
    assert not torch.equal(rgb[:, 0, 1], rgb[:, 1, 0]) and torch.allclose(rgb[:, 1, 1], torch.full((3,), 0.5))


def test_dag_study_runs_reuses_its_work_and_reports_its_numbers(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["study", str(path), "--out", str(out)]) == 0
    capsys.readouterr()
    res = json.loads((out / "results.json").read_text())
    assert set(res["evaluations"]) == {"table_2_1", "transfer", "fooling"}
    assert res["form"] == "full"  # no --smoke
    rows = res["evaluations"]["table_2_1"]["table"]
    assert [r["model"] for r in rows] == ["a", "b"] and all(0 <= r["mIoU clean"] <= 1 for r in rows)
    assert all(r["iterations (mean)"] <= 3 for r in rows)
    transfer = [r["perturbation"] for r in res["evaluations"]["transfer"]["table"]]
    assert transfer == ["ORIG", "a", "b", "a+b"]
    (claim,) = res["claims"]  # a DAG study's claims are computed from its tables, as every study's
    assert claim["verdict"] == "holds" and claim["values"] == {
        "table_2_1[a].mIoU adversarial": rows[0]["mIoU adversarial"], "table_2_1[a].mIoU clean": rows[0]["mIoU clean"]}
    html = (out / "report.html").read_text()
    for ev in res["evaluations"].values():
        _, cells = table_rows(ev["table"])
        assert all(c in html for row in cells for c in row)
    assert html.count("data:image/png;base64,") >= 3  # pictures, active targets, fooling image
    model, spec = load_dense(out / "models" / "a")
    assert spec["task"] == "segmentation" and spec["width"] == 4 and not model.training

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert main(["study", str(path), "--out", str(out)]) == 0
    assert "trained, reusing" in capsys.readouterr().err  # each step's line on stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps  # models and r reused

    # robustlab attack --dag on one of the trained models
    att = tmp_path / "att"
    assert main(["attack", "--dag", "--model", str(out / "models" / "b"), "--gamma", "abc", "--out", str(att)]) == 2
    assert "--gamma must be a number" in capsys.readouterr().err and not att.exists()
    assert main(["attack", "--dag", "--model", str(out / "models" / "b"), "--limit", "2", "--steps", "2",
                 "--gamma", "0.5/255", "--out", str(att)]) == 0
    att_res = json.loads((att / "results.json").read_text())
    assert att_res["form"] == "full"  # as every study-kind results.json (no smoke: overrides here)
    dag = att_res["evaluations"]["dag"]
    one = dag["table"][0]
    assert one["model"] == "b" and one["iterations (mean)"] <= 2 and dag["options"]["gamma"] == "0.5/255"
    assert (att / "adversarial.safetensors").is_file() and (att / "report.html").is_file()


def test_attack_dag_refuses_a_classifier_directory(tmp_path, capsys):
    from robustlab.models import create_model, save_model

    save_model(create_model("smallcnn", 10, in_channels=1, width=4), tmp_path / "clf")
    assert main(["attack", "--dag", "--model", str(tmp_path / "clf")]) == 2
    assert "not a dense" in capsys.readouterr().err
