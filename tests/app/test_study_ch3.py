"""Chapter 3 in studies: C&W / D-C&W transfer (Table 3.2), per-attack options
and sweeps in attack lists, the hold-out (Table 3.3) and NIPS 2017 (§3.4.5)
evaluation kinds; bad attack lists refused before any training."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from robustlab.app.cli import main
from robustlab.app.study import resolve_study, run_study

BASE = {
    "name": "ch3tiny",
    "dataset": "digits",
    "limit": 48,
    "batch_size": 48,
    "device": "cpu",
    "defaults": {"model": {"name": "smallcnn", "width": 8}, "data": {"limit": 768, "eval_limit": 48},
                 "train": {"epochs": 3, "batch_size": 64, "lr": 0.1}, "eval": {"attack": None}},
    "models": {"a": {"recipe": {"name": "vanilla"}}, "b": {"recipe": {"name": "vanilla"}, "seed": 1},
               "c": {"recipe": {"name": "vanilla"}, "seed": 2}},
}
QUICK_CW = {"steps": 20, "binary_search_steps": 2, "confidence": 0.0, "lr": 0.1, "initial_const": 1.0}
EVALS = {
    "t3_2": {"kind": "transfer", "sources": ["a"], "targets": ["a", "b"],
             "attacks": [{"name": "cw", "label": "cw", **QUICK_CW}, {"name": "dcw", "label": "dcw", **QUICK_CW}]},
    "options": {"kind": "transfer", "sources": ["a"], "targets": ["a", "b"], "eps": 32,
                "attacks": ["ifgsm", {"name": "di2fgsm", "p": 0.0},
                            {"sweep": {"attack": "mdi2fgsm", "steps": [2, 4], "mu": 0.5}}]},
    "bb": {"kind": "blackbox", "sources": ["a"], "models": ["b"], "eps": 32,
           "attacks": [{"sweep": {"attack": "di2fgsm", "step_size": [4, 8], "steps": [8, 4], "zip": True}}]},
    "ho": {"kind": "holdout", "attacks": ["ifgsm", {"name": "mdi2fgsm", "steps": 6}], "eps": 32},
    "nips": {"kind": "nips2017", "ensemble": ["a", "b"], "targets": ["a", "c"], "batches": 4,
             "defended": [{"model": "a", "defense": "randomization"}, {"model": "c", "defense": "jpeg", "quality": 50}],
             "attacks": ["mifgsm", {"name": "mdi2fgsm", "p": 0.4, "label": "M-DI2"}]},
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One tiny study with every new form (three digits CNNs, trained once)."""
    out = tmp_path_factory.mktemp("ch3") / "run"
    raw = {**copy.deepcopy(BASE), "evaluations": copy.deepcopy(EVALS)}
    study = resolve_study(raw)
    return study, run_study(study, out), out


def _rows(res, name):
    return res["evaluations"][name]["table"]


def test_cw_and_dcw_run_in_a_transfer_evaluation(ran):
    _, res, _ = ran
    rows = {r["attack"]: r for r in _rows(res, "t3_2")}
    assert set(rows) == {"cw", "dcw"}
    assert rows["cw"]["→ a"] > 0.9 and rows["dcw"]["→ a"] > 0.9  # white-box C&W at κ = 0 succeeds
    configs = res["evaluations"]["t3_2"]["attack_configs"]
    assert configs["cw"]["steps"] == 20 and configs["cw"]["p"] == 0.0 and configs["dcw"]["p"] == 0.5
    assert all(0.0 <= v <= 1.0 for r in rows.values() for k, v in r.items() if k.startswith("→"))


def test_per_attack_options_and_sweeps_label_the_rows_and_reach_the_attack(ran):
    study, res, _ = ran
    assert study.evaluations["options"]["attacks"] == ["ifgsm", "di2fgsm p=0", "mdi2fgsm steps=2",
                                                       "mdi2fgsm steps=4"]
    rows = {r["attack"]: r for r in _rows(res, "options")}
    # §3.3.4: DI²-FGSM with p = 0 is I-FGSM (same seed): the rows agree cell for cell
    assert {k: v for k, v in rows["di2fgsm p=0"].items() if k != "attack"} == \
        {k: v for k, v in rows["ifgsm"].items() if k != "attack"}
    configs = res["evaluations"]["options"]["attack_configs"]
    assert configs["mdi2fgsm steps=2"]["steps"] == 2 and configs["mdi2fgsm steps=4"]["steps"] == 4
    assert configs["mdi2fgsm steps=4"]["mu"] == 0.5  # a scalar in the sweep applies to every attack of it
    assert configs["ifgsm"]["steps"] == 36  # the thesis default N = min(ε + 4, 1.25ε) at ε = 32
    assert rows["mdi2fgsm steps=4"]["→ a"] >= rows["mdi2fgsm steps=2"]["→ a"] - 0.1
    # budgets in 0–255 notation: step 4 and 8 (zipped with 8 and 4 steps)
    bb = _rows(res, "bb")[0]
    assert set(bb) == {"model", "all-or-nothing", "di2fgsm step_size=4 steps=8@a", "di2fgsm step_size=8 steps=4@a"}
    assert bb["all-or-nothing"] <= min(v for k, v in bb.items() if "@" in k)


def test_holdout_evaluation_is_the_library_protocol(ran):
    from robustlab.attacks import create
    from robustlab.data import load_dataset
    from robustlab.eval.holdout import holdout_evaluation
    from robustlab.train.checkpoint import load_trained_model

    _, res, out = ran
    rows = _rows(res, "ho")
    assert [(r["attack"], r["setting"]) for r in rows] == [("ifgsm", "ensemble"), ("mdi2fgsm steps=6", "ensemble"),
                                                          ("ifgsm", "hold-out"), ("mdi2fgsm steps=6", "hold-out")]
    assert set(rows[0]) == {"attack", "setting", "-a", "-b", "-c"}
    models = {m: load_trained_model(out / "models" / m).eval() for m in "abc"}
    x, y = load_dataset("digits", "test", limit=48).batch(slice(0, 48))
    direct = holdout_evaluation(lambda: create("mdi2fgsm", eps=32 / 255, steps=6, seed=0), models, [(x, y)])
    assert res["evaluations"]["ho"]["n"] == direct["-a"]["n"] > 0
    assert {k: rows[1][k] for k in direct} == {k: v["ensemble"] for k, v in direct.items()}
    assert {k: rows[3][k] for k in direct} == {k: v["holdout"] for k, v in direct.items()}


def test_nips2017_draws_eps_per_batch_and_averages_the_targets(ran):
    _, res, _ = ran
    ev = res["evaluations"]["nips"]
    assert [r["attack"] for r in ev["table"]] == ["mifgsm", "M-DI2"]
    assert len(ev["eps_255_per_batch"]) == 4 and set(ev["eps_255_per_batch"]) <= {4, 8, 12, 16}
    cols = ["→ a", "→ c", "→ a+randomization", "→ c+jpeg quality=50"]
    for r in ev["table"]:
        assert [k for k in r if k.startswith("→")] == cols
        assert r["average"] == pytest.approx(sum(r[k] for k in cols) / 4)
        assert 0.0 < r["→ a"] <= 1.0  # a is in the ensemble: white-box, it is fooled
        assert all(0.0 <= r[k] <= 1.0 for k in cols)
    assert ev["n"] == 48
    assert ev["options"]["defended"][1]["label"] == "c+jpeg quality=50"


def test_nips2017_defended_targets_score_the_defense_in_front_of_the_model(ran):
    """The column of a defended target is the misclassification rate of the model
    behind that defense on the protocol's own adversarial examples, recomputed
    here independently (same seeds: same ε per batch, same attack draws)."""
    from robustlab.attacks.ensemble import Ensemble
    from robustlab.data import load_dataset
    from robustlab.eval.defenses import JPEG
    from robustlab.eval.metrics import misclassified
    from robustlab.eval.nips2017 import NIPS2017_EPS_255, nips2017_attack
    from robustlab.train.checkpoint import load_trained_model
    from robustlab.units import from_255

    _, res, out = ran
    ev = res["evaluations"]["nips"]
    models = {m: load_trained_model(out / "models" / m, routed=False).eval() for m in ("a", "b", "c")}
    test = load_dataset("digits", "test", limit=48)
    x, y = test.batch(slice(0, 48))
    source = Ensemble([models["a"], models["b"]], [0.5, 0.5]).eval()
    gen = torch.Generator().manual_seed(0)
    wrong = 0
    for i in range(4):
        eps = NIPS2017_EPS_255[int(torch.randint(4, (), generator=gen))]
        assert eps == ev["eps_255_per_batch"][i]
        xb, yb = x[i * 12:(i + 1) * 12], y[i * 12:(i + 1) * 12]
        x_adv = nips2017_attack("mifgsm", from_255(eps), seed=i)(source, xb, yb)
        wrong += int(misclassified(JPEG(models["c"], quality=50), x_adv, yb).sum())
    row = ev["table"][0]
    assert row["attack"] == "mifgsm" and row["→ c+jpeg quality=50"] == pytest.approx(wrong / 48)


@pytest.mark.parametrize("evaluation, message", [
    ({"kind": "transfer", "attacks": [{"name": "di2fgsm", "q": 0.3}]},
     "evaluations.e.attacks: attack 'di2fgsm q=0.3' (di2fgsm) got unknown option(s) ['q']"),
    ({"kind": "blackbox", "attacks": [{"sweep": {"attack": "mdi2fgsm", "stepz": [1, 2]}}]},
     "evaluations.e.attacks: attack 'mdi2fgsm stepz=1' (mdi2fgsm) got unknown option(s) ['stepz']"),
    ({"kind": "transfer", "attacks": [{"name": "di2fgsm", "p": 1.5}]}, "attack 'di2fgsm p=1.5': p must be"),
    ({"kind": "transfer", "attacks": [{"name": "ifgsm", "step_size": -1}]}, "attack 'ifgsm step_size=-1': step_size"),
    ({"kind": "transfer", "attacks": [{"name": "nope"}]}, "unknown attack(s) ['nope']"),
    ({"kind": "transfer", "attacks": ["ifgsm", {"name": "ifgsm"}]}, "two attacks are labelled 'ifgsm'"),
    ({"kind": "transfer", "attacks": [{"name": "ifgsm", "label": "a[1]"}]}, "may not hold"),
    ({"kind": "transfer", "attacks": [{"sweep": {"attack": "di2fgsm", "p": [0.1], "steps": [1, 2], "zip": True}}]},
     "zip: true pairs lists of one length"),
    ({"kind": "transfer", "attacks": [{"sweep": {"attack": "di2fgsm", "p": 0.1}}]}, "non-empty list of values"),
    ({"kind": "transfer", "attacks": [{"name": "ifgsm", "seed": 3}]}, "got unknown option(s) ['seed']"),
    ({"kind": "transfer", "attacks": []}, "must be a non-empty list"),
    ({"kind": "holdout", "models": ["a"]}, "a hold-out needs at least 2 models"),
    ({"kind": "holdout", "weights": {"a": 1, "b": 1}}, "give every ensembled model a weight; missing ['c']"),
    ({"kind": "holdout", "weights": {"a": 1, "b": 1, "c": -1}}, "weights must be positive numbers"),
    ({"kind": "holdout", "attacks": [{"name": "pgd", "epz": 2}]}, "got unknown option(s) ['epz']"),
    ({"kind": "nips2017", "attacks": [{"name": "mifgsm", "eps": 4}]}, "(eps set by the protocol)"),
    ({"kind": "nips2017", "attacks": ["cw"]}, "C&W has no ε budget"),
    ({"kind": "nips2017", "batches": 0}, "batches must be a whole number >= 1"),
    ({"kind": "nips2017", "ensemble": ["ghost"]}, "unknown model(s) ['ghost']"),
    ({"kind": "nips2017", "defended": [{"model": "ghost", "defense": "jpeg"}]},
     "evaluations.e.defended[0].model: unknown model 'ghost'"),
    ({"kind": "nips2017", "defended": [{"model": "a", "defense": "blur"}]},
     "evaluations.e.defended[0]: defense must be one of ['jpeg', 'randomization']; got 'blur'"),
    ({"kind": "nips2017", "defended": [{"model": "a", "defense": "jpeg", "quality": 0}]},
     "evaluations.e.defended[0]: quality must be >= 1"),
    ({"kind": "nips2017", "defended": [{"model": "a", "defense": "jpeg", "qualty": 5}]},
     "unknown option(s) ['qualty']; it takes ['quality']"),
    ({"kind": "nips2017", "defended": [{"model": "a", "defense": "jpeg"}, {"model": "a", "defense": "jpeg"}]},
     "the label 'a+jpeg' is used twice"),
    ({"kind": "nips2017", "defended": {"model": "a"}}, "evaluations.e.defended must be a list"),
])
def test_bad_attack_lists_and_ch3_options_are_refused_naming_the_evaluation(evaluation, message):
    with pytest.raises(ValueError) as err:
        resolve_study({**BASE, "evaluations": {"e": evaluation}})
    assert message in str(err.value)


def test_the_cli_refuses_an_unknown_attack_option_before_any_work(tmp_path, capsys):
    raw = {**BASE, "evaluations": {"tr": {"kind": "transfer", "attacks": ["ifgsm", {"name": "di2fgsm", "pp": 1}]}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["study", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "evaluations.tr.attacks: attack 'di2fgsm pp=1' (di2fgsm) got unknown option(s) ['pp']" in err
    assert "Traceback" not in err and not out.exists()
    # a smoke override may also bring it
    good = {**raw, "evaluations": {"tr": {"kind": "transfer", "attacks": ["ifgsm"]}},
            "smoke": {"evaluations.tr.attacks": [{"name": "mdi2fgsm", "mu": "x"}]}}
    path.write_text(yaml.safe_dump(good))
    assert main(["study", str(path), "--smoke", "--out", str(out)]) == 2
    assert "attack 'mdi2fgsm mu=x'" in capsys.readouterr().err and not out.exists()


def test_cw_accepts_the_eps_a_study_gives_and_ignores_it():
    from robustlab.attacks import create

    assert create("cw", eps=15 / 255).config() == create("cw").config()
    assert create("dcw", eps=15 / 255).config()["p"] == 0.5
    with pytest.raises(ValueError, match="eps"):
        create("cw", eps=-1.0)


def test_ch3_transfer_config_declares_the_new_sections():
    from robustlab.app.study import load_study

    root = Path(__file__).resolve().parents[2] / "configs"
    for smoke in (False, True):
        study = load_study(root / "ch3_transfer.yaml", smoke=smoke)
        kinds = {name: ev["kind"] for name, ev in study.evaluations.items()}
        assert {k: kinds[k] for k in ("t3_2", "t3_3", "fig3_4", "fig3_5", "fig3_6", "nips2017")} == {
            "t3_2": "transfer", "t3_3": "holdout", "fig3_4": "holdout", "fig3_5": "holdout", "fig3_6": "holdout",
            "nips2017": "nips2017"}
        assert {"T3.2", "T3.3-holdout-MDI2", "F3.4-blackbox", "F3.5-DI2", "F3.6-whitebox", "T3.4"} <= \
            {c.id for c in study.claims}
    full = load_study(root / "ch3_transfer.yaml")
    specs = full.evaluations["fig3_6"]["attack_specs"]
    # Fig. 3.6: N = ε/α at ε = 15
    assert all(s["steps"] * s["step_size"] == 15 for s in specs.values())
    assert full.evaluations["fig3_4"]["attacks"][:2] == ["di2fgsm p=0", "di2fgsm p=0.25"]
