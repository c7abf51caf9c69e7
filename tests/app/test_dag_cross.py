"""Cross-task DAG studies (`kind: dag`, `task: cross-task`; Table 2.4, §2.4.3–2.4.4)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from robustlab.app.claims import ClaimError
from robustlab.app.cli import main
from robustlab.app.dag import resolve_dag_study
from robustlab.app.dag_cross import heterogeneous_sums
from robustlab.app.study import load_study

CROSS = {
    "kind": "dag", "task": "cross-task", "name": "tiny_cross", "seed": 0,
    "scenes": {"source": "shapes", "size": 64, "max_objects": 2, "train": 32, "test": 2},
    "train": {"segmentation": {"epochs": 1, "batch_size": 16}, "detection": {"epochs": 1, "batch_size": 16}},
    "models": {"seg": {"task": "segmentation", "width": 4}, "det": {"task": "detection", "width": 4, "seed": 1}},
    "attack": {"segmentation": {"max_iter": 3}, "detection": {"max_iter": 2, "post_nms_top_n": 100}},
    "pictures": 1,
    "claims": [{"id": "perm", "says": "the permuted sum barely changes accuracy",
                "holds_if": 'mean(table_2_4[none]."→ *") - mean(table_2_4["permuted sum"]."→ *") < 2'},
               {"id": "diag", "says": "white-box cell", "holds_if": 'table_2_4[segmenter, seg]."→ seg mIoU" '
                                                                   '== table_2_1[seg].adversarial'}],
}


@pytest.mark.parametrize("change, message", [
    ({"models": {"a": {"width": 4}, "b": {"task": "detection"}}}, "models.a takes task"),
    ({"models": {"a": {"task": "segmentation"}, "b": {"task": "segmentation", "seed": 1}}},
     "at least one model of each task; no detection model"),
    ({"sums": [["seg", "nobody"]]}, "sums[0] must list at least two distinct models"),
    ({"sums": [["seg"]]}, "sums[0] must list at least two distinct models"),
    ({"sums": []}, "sums must be a non-empty list"),
    ({"nms_ious": [0.7]}, "'nms_ious' is a single-task DAG option"),
    ({"train": {"classification": {}}}, "maps each task (segmentation, detection)"),
    ({"train": {"detection": {"epoch": 1}}}, "unknown key(s) ['train.detection.epoch']"),
    ({"attack": {"detection": {"gamma": 0}}}, "attack.detection.gamma must be > 0"),
    ({"attack": {"segmentation": {"nms_iou": 0.9}}}, "unknown key(s) ['attack.segmentation.nms_iou']"),
])
def test_bad_cross_task_studies_are_refused_naming_the_key(change, message):
    with pytest.raises(ValueError) as err:
        resolve_dag_study({**CROSS, **change})
    assert message in str(err.value)


def test_claims_are_read_against_the_evaluations_a_dag_study_writes():
    bad = {"id": "x", "says": "s", "holds_if": "transfer[ORIG].a > 0"}  # transfer: a single-task evaluation
    with pytest.raises(ClaimError, match="unknown evaluation"):
        resolve_dag_study({**CROSS, "claims": [bad]})
    seg = {**CROSS, "task": "segmentation", "models": {"a": {"width": 4}}, "train": {}, "attack": {}}
    del seg["claims"]
    assert resolve_dag_study({**seg, "claims": [bad]}).claims[0].id == "x"
    with pytest.raises(ClaimError, match="unknown evaluation"):  # Fig. 2.3 is a detection study's
        resolve_dag_study({**seg, "claims": [{**bad, "holds_if": "nms_iou[0.9].x > 0"}]})
    with pytest.raises(ValueError, match="'sums' belongs to task: cross-task"):
        resolve_dag_study({**seg, "sums": [["a", "a"]]})


def test_the_shipped_cross_task_config_resolves_with_the_thesis_attacks():
    root = Path(__file__).resolve().parents[2] / "configs"
    study = load_study(root / "ch2_cross_task.yaml")
    assert {study.task_of(m) for m in study.models} == {"segmentation", "detection"}
    assert study.attack_of("segmentation").gamma == 0.5 and study.attack_of("segmentation").max_iter == 200
    assert study.attack_of("detection").max_iter == 150 and study.attack_of("detection").nms_iou == 0.9
    assert study.sums == [list(study.models)] and study.claims
    smoke = load_study(root / "ch2_cross_task.yaml", smoke=True)
    assert smoke.models == study.models and smoke.scenes.train < study.scenes.train
    assert [c.id for c in smoke.claims] == [c.id for c in study.claims]


def test_summed_perturbation_and_its_permuted_control():
    gen = torch.Generator().manual_seed(0)
    rs = {"a": torch.randn(2, 3, 6, 5, generator=gen), "b": torch.randn(2, 3, 6, 5, generator=gen),
          "c": torch.randn(2, 3, 6, 5, generator=gen)}
    sums = heterogeneous_sums(rs, [["a", "b"], ["a", "b", "c"]], draws=3, seed=0)
    assert list(sums) == ["a+b", "a+b+c"]
    r, perms = sums["a+b+c"]
    assert torch.allclose(r, rs["a"] + rs["b"] + rs["c"])  # §2.4.4: summed as they are, never rescaled
    assert len(perms) == 3 and not torch.equal(perms[0], perms[1])
    for p in perms:
        assert not torch.equal(p, r)
        for i in range(r.shape[0]):
            assert float(p[i].abs().max()) == float(r[i].abs().max())  # same L∞
            for c in range(r.shape[1]):  # the same multiset of values in every channel
                assert torch.equal(p[i, c].flatten().sort().values, r[i, c].flatten().sort().values)
            rows, cols = _row_col_permutation(p[i, 0], r[i, 0])
            assert torch.equal(p[i], r[i][:, rows][:, :, cols])  # every channel moved by channel 0's permutation
    again = heterogeneous_sums(rs, [["a", "b"], ["a", "b", "c"]], draws=3, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(again["a+b+c"][1], perms))  # seeded


def _row_col_permutation(p: torch.Tensor, r: torch.Tensor) -> tuple[list[int], list[int]]:
    """The row and column orders taking r (H, W) to p (values all distinct): p = r[rows][:, cols]."""
    rows = [next(k for k in range(r.shape[0]) if torch.equal(p[j].sort().values, r[k].sort().values))
            for j in range(r.shape[0])]
    moved = r[rows]
    cols = [next(k for k in range(r.shape[1]) if torch.equal(p[:, j], moved[:, k])) for j in range(r.shape[1])]
    return rows, cols


def test_cross_task_study_writes_table_2_4_and_its_claims(tmp_path, capsys):
    path = tmp_path / "cross.yaml"
    path.write_text(yaml.safe_dump(CROSS, allow_unicode=True, sort_keys=False))
    out = tmp_path / "run"
    assert main(["study", str(path), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["evaluations"]) == {"table_2_1", "table_2_4"}
    wb = {r["model"]: r for r in res["evaluations"]["table_2_1"]["table"]}
    assert wb["seg"]["metric"] == "mIoU" and wb["det"]["metric"] == "mAP"
    rows = res["evaluations"]["table_2_4"]["table"]
    assert [(r["from"], r["perturbation"]) for r in rows] == [
        ("none", "none"), ("segmenter", "seg"), ("detector", "det"), ("sum", "seg+det"),
        ("permuted sum", "seg+det (permuted)")]
    assert all({"→ seg mIoU", "→ det mAP", "perceptibility", "L∞ (0-255)"} <= set(r) for r in rows)
    by = {r["from"]: r for r in rows}
    assert by["none"]["→ seg mIoU"] == wb["seg"]["clean"] and by["none"]["→ det mAP"] == wb["det"]["clean"]
    assert by["segmenter"]["→ seg mIoU"] == wb["seg"]["adversarial"]  # the diagonal is the white-box attack
    assert by["detector"]["→ det mAP"] == wb["det"]["adversarial"]
    assert by["sum"]["L∞ (0-255)"] == by["permuted sum"]["L∞ (0-255)"]

    from safetensors.torch import load_file

    r_seg = load_file(str(out / "perturbations" / "seg.safetensors"))["r"]
    r_det = load_file(str(out / "perturbations" / "det.safetensors"))["r"]
    sums = load_file(str(out / "perturbations" / "sums.safetensors"))
    assert sorted(sums) == ["permuted/seg+det/0", "permuted/seg+det/1", "permuted/seg+det/2", "sum/seg+det"]
    assert torch.equal(sums["sum/seg+det"], r_seg + r_det)
    for j in range(3):
        p = sums[f"permuted/seg+det/{j}"]
        assert torch.equal(p.flatten(1).sort(1).values, sums["sum/seg+det"].flatten(1).sort(1).values)

    claims = {c["id"]: c for c in res["claims"]}
    assert claims["perm"]["verdict"] == "holds" and claims["diag"]["verdict"] == "holds", claims
    assert all(isinstance(v, float) for c in claims.values() for v in c["values"].values())
    html = (out / "report.html").read_text()
    assert "Fig. 2.6" in html and html.count("data:image/png;base64,") >= 1

    stamps = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*.safetensors")}
    stamps.update({p: p.stat().st_mtime_ns for p in (out / "perturbations").glob("[sd]e[gt].safetensors")})
    capsys.readouterr()
    assert main(["study", str(path), "--out", str(out)]) == 0
    assert "trained, reusing" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # models and DAG perturbations reused
