"""``kind: sweep`` studies (the ch. 3 resolution sweep): one inner study per
value in its own folder, the combined tables, the gaps table and its claims,
reuse on a rerun, bad sweeps refused before any work."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from robustlab.app.cli import main
from robustlab.app.study import load_study

SWEEP = {
    "name": "restiny",
    "kind": "sweep",
    "dataset": "digits",
    "device": "cpu",
    "limit": 32,
    "batch_size": 32,
    "sweep": {"name": "resolution", "key": "defaults.data.size", "values": [8, 16],
              "per_value": {16: {"defaults.model.stages": 4}}},
    "gaps": {"evaluation": "transfer", "differences": {"di2_gap": ["di2fgsm", "ifgsm"],
                                                       "mdi2_gap": ["mdi2fgsm", "mifgsm"]}},
    "claims": [{"id": "grows", "says": "the DI² gap grows", "holds_if": "gaps[16].di2_gap > gaps[8].di2_gap"},
               {"id": "inner", "says": "DI² on b at 16 px", "holds_if": 'transfer_16[di2fgsm, a]."→ b" >= 0'}],
    # trained enough that some images are classified correctly by all three models (transfer's n > 0)
    "defaults": {"model": {"name": "smallcnn", "width": 4}, "data": {"limit": 768, "eval_limit": 32},
                 "train": {"epochs": 4, "batch_size": 64, "lr": 0.1}, "eval": {"attack": None}},
    "models": {"a": {"recipe": {"name": "vanilla"}}, "b": {"recipe": {"name": "vanilla"}, "seed": 1},
               "c": {"recipe": {"name": "vanilla"}, "seed": 2}},
    "evaluations": {"clean": {"kind": "accuracy"},
                    "transfer": {"kind": "transfer", "sources": ["a"], "targets": ["a", "b", "c"], "eps": 32,
                                 "attacks": ["ifgsm", "di2fgsm", "mifgsm", "mdi2fgsm"]}},
    "smoke": {"defaults.train.epochs": 1},
}


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_sweep_resolves_one_study_per_value_with_its_overrides(tmp_path):
    study = load_study(_write(tmp_path, SWEEP), smoke=True)
    assert list(study.studies) == ["8", "16"]
    assert study.studies["8"].models["a"].data.size == 8 and study.studies["16"].models["a"].data.size == 16
    assert study.studies["16"].models["b"].model.to_dict() == {"name": "smallcnn", "width": 4, "stages": 4}
    assert "stages" not in study.studies["8"].models["b"].model.options
    assert study.studies["16"].models["a"].train.epochs == 1  # the smoke override reaches every inner study
    assert study.form == "smoke" and {s.form for s in study.studies.values()} == {"smoke"}  # and its form
    assert {s.form for s in load_study(_write(tmp_path, SWEEP)).studies.values()} == {"full"}
    assert set(study.models) == {f"{m}_{v}" for m in "abc" for v in (8, 16)}
    assert set(study.evaluations) == {"clean_8", "transfer_8", "clean_16", "transfer_16", "gaps"}
    # a command-line override of a sweep key
    one = load_study(_write(tmp_path, SWEEP), ["sweep.values=[8]", "sweep.per_value={}", "claims=[]"])
    assert list(one.studies) == ["8"]


def test_sweep_runs_each_value_in_its_folder_and_combines_the_gaps(tmp_path, capsys):
    path, out = _write(tmp_path, SWEEP), tmp_path / "run"
    assert main(["study", str(path), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["form"] == "full"
    for v in ("8", "16"):
        inner = json.loads((out / f"resolution_{v}" / "results.json").read_text())
        assert inner["form"] == "full"
        assert (out / f"resolution_{v}" / "report.html").is_file()
        assert res["evaluations"][f"transfer_{v}"]["table"] == inner["evaluations"]["transfer"]["table"]
        row = next(r for r in res["evaluations"]["gaps"]["table"] if r["resolution"] == v)
        table = {r["attack"]: r for r in inner["evaluations"]["transfer"]["table"]}
        black = {a: (r["→ b"] + r["→ c"]) / 2 for a, r in table.items()}  # targets other than the source a
        assert row["ifgsm"] == pytest.approx(black["ifgsm"])
        assert row["di2_gap"] == pytest.approx(black["di2fgsm"] - black["ifgsm"])
        assert row["mdi2_gap"] == pytest.approx(black["mdi2fgsm"] - black["mifgsm"])
        assert row["white-box di2_gap"] == pytest.approx(table["di2fgsm"]["→ a"] - table["ifgsm"]["→ a"])
    assert [r["resolution"] for r in res["evaluations"]["gaps"]["table"]] == ["8", "16"]
    assert all(n > 0 for n in res["evaluations"]["gaps"]["n"])
    assert {c["id"]: c["verdict"] in ("holds", "does not hold") for c in res["claims"]} == {"grows": True,
                                                                                             "inner": True}
    assert (out / "gaps.png").read_bytes()[:4] == b"\x89PNG"
    assert res["evaluations"]["gaps"]["images"] and set(res["models"]) == {f"{m}_{v}" for m in "abc"
                                                                          for v in (8, 16)}
    html = (out / "report.html").read_text()
    assert 'data-evaluation="gaps"' in html and 'data-evaluation="transfer_16"' in html
    assert "report:" in capsys.readouterr().out
    # the same command again reuses every inner model and evaluation
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert main(["study", str(path), "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("reusing") == 2 * (3 + 2)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps


@pytest.mark.parametrize("change, message", [
    ({"sweep": {"key": "defaults.data.size"}}, "sweep.values must be a non-empty list"),
    ({"sweep": {"key": "bogus.size", "values": [8]}}, "sweep.key must be a dotted study key"),
    ({"sweep": {"key": "defaults.data.size", "values": [8, 8]}}, "sweep.values must be distinct"),
    ({"sweep": {"key": "defaults.data.size", "values": [8], "step": 2}}, "unknown key(s) ['sweep.step']"),
    ({"sweep": {"key": "defaults.data.size", "values": [8], "per_value": {16: {}}}},
     "sweep.per_value: ['16'] are not among sweep.values"),
    ({"sweep": {"key": "defaults.data.size", "values": [8, 0]}}, "sweep value 0: models.a: config key data.size"),
    ({"gaps": {"evaluation": "clean", "differences": {"d": ["di2fgsm", "ifgsm"]}}},
     "gaps.evaluation must name a transfer evaluation"),
    ({"gaps": {"evaluation": "transfer", "differences": {"d": ["di2fgsm", "pgd"]}}},
     "gaps.differences: ['pgd'] are not attacks of evaluations.transfer"),
    ({"gaps": {"evaluation": "transfer", "differences": {"d": ["di2fgsm"]}}}, "must map column names to [attack"),
    ({"claims": [{"id": "x", "says": "y", "holds_if": "transfer[ifgsm, a].b > 0"}]}, "unknown evaluation(s)"),
    ({"bogus": 1}, "unknown study key(s) ['bogus']"),
])
def test_bad_sweeps_are_refused_before_any_work(tmp_path, capsys, change, message):
    raw = {**copy.deepcopy(SWEEP), **change}
    out = tmp_path / "run"
    assert main(["study", str(_write(tmp_path, raw)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_ch3_resolution_config_is_the_thesis_setting():
    root = Path(__file__).resolve().parents[2] / "configs"
    full, smoke = load_study(root / "ch3_resolution.yaml"), load_study(root / "ch3_resolution.yaml", smoke=True)
    assert list(full.studies) == list(smoke.studies) == ["28", "56", "112"]
    for value, st in full.studies.items():
        ev = st.evaluations["transfer"]
        assert ev["attacks"] == ["ifgsm", "di2fgsm", "mifgsm", "mdi2fgsm"] and ev["eps"] == 15
        stages = {m.model.options.get("stages", 3) for m in st.models.values()}
        assert stages == {{"28": 3, "56": 4, "112": 5}[value]}
        assert {m.data.size for m in st.models.values()} == {int(value)}
    from robustlab.app.study_attacks import configs

    cfg = configs(full.studies["112"].evaluations["transfer"])
    # §3.4.1: ε = 15, α = 1, N = min(ε + 4, 1.25ε) = 18, μ = 1, p = 0.5
    assert cfg["ifgsm"]["steps"] == 18 and cfg["mdi2fgsm"]["mu"] == 1.0 and cfg["di2fgsm"]["p"] == 0.5
    assert {c.id for c in full.claims} >= {"R-DI2-grows", "R-MDI2-grows"}
