"""Study evaluation kinds of ch. 6–7: bn_statistics (Fig. 6.5/6.6), corruption
mCE against a baseline model (Table 7.1), stylized / imagenet_a folders, and the
thesis protocol's final/best iterate columns."""
from __future__ import annotations

import base64
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from robustlab.app.cli import main
from robustlab.app.study import resolve_study, run_study
from robustlab.data import load_dataset
from robustlab.eval.corruption import mce, relative_mce
from robustlab.eval.shifted import restrict_logits
from robustlab.models import load_model

AT = {"eps": 32, "steps": 2, "step_size": 16, "targeted": False}
LOG: list[str] = []  # the robustlab log lines of the module's study run (the ``ran`` fixture)


def _digits_tree(root: Path, classes: list[int] | None = None, n: int = 40) -> Path:
    """The first ``n`` digits test images as 8×8 PNGs in ROOT/CLASS/ (only ``classes`` if given)."""
    x, y = load_dataset("digits", "test", limit=n).batch(slice(0, n))
    for k, (img, label) in enumerate(zip(x, y.tolist())):
        if classes is not None and label not in classes:
            continue
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(root / str(label) / f"{k}.png")
    return root


def _study(tmp: Path) -> dict:
    return {
        "name": "kinds", "dataset": "digits", "limit": 64, "batch_size": 64, "device": "cpu",
        "defaults": {"model": {"name": "smallcnn", "width": 8}, "data": {"limit": 512, "eval_limit": 64},
                     "train": {"epochs": 2, "batch_size": 64, "lr": 0.1}, "eval": {"attack": None}},
        "models": {"plain": {"recipe": {"name": "vanilla"}}, "at": {"recipe": {"name": "madry", **AT}},
                   "mbn": {"recipe": {"name": "mbn", **AT}}, "ap": {"recipe": {"name": "advprop", **AT}}},
        "evaluations": {
            "bn": {"kind": "bn_statistics", "models": ["mbn", "ap", "at", "plain"], "channels": 4},
            "corruption": {"kind": "corruption", "models": ["at", "mbn"], "baseline": "plain", "severities": [2, 4],
                           "corruptions": ["gaussian_noise", "fog", "contrast"]},
            "thesis": {"kind": "robust", "protocol": "thesis", "models": ["at"], "eps": 16,
                       "options": {"steps": [2, 4]}},
            "sin": {"kind": "stylized", "root": str(_digits_tree(tmp / "sin")), "models": ["plain", "at"]},
            "ina": {"kind": "imagenet_a", "root": str(_digits_tree(tmp / "ina", [1, 4, 7])), "models": ["plain"]},
        },
        "claims": [
            {"id": "F6.5", "says": "the adv route's running statistics differ from the clean route's",
             "holds_if": 'mean(bn[mbn, *, adv, "running vs clean route"]."|Δ mean|") > 0'},
            {"id": "T7.1", "says": "adversarial training has a lower mCE than vanilla",
             "holds_if": "corruption[at].mCE < corruption[plain].mCE"},
        ],
    }


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    import logging

    tmp = tmp_path_factory.mktemp("kinds")
    raw = _study(tmp)

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            LOG.append(record.getMessage())

    handler, log = Keep(level=logging.INFO), logging.getLogger("robustlab")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        res = run_study(resolve_study(raw), tmp / "run")
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    return raw, res, tmp / "run"


def test_bn_statistics_table_pictures_and_claim(ran):
    raw, res, _ = ran
    ev = res["evaluations"]["bn"]
    rows = ev["table"]
    by = {(r["model"], r["route"], r["statistic"]) for r in rows}
    # Fig. 6.5 rows for the routed models, Fig. 6.6 rows for every route (AdvProp's auxiliary one included)
    assert ("mbn", "adv", "running vs clean route") in by and ("ap", "adv", "running vs clean route") in by
    assert ("mbn", "adv", "batch (adversarial) vs running") in by and ("mbn", "clean", "batch (clean) vs running") in by
    assert ("at", "-", "batch (adversarial) vs running") in by and ("plain", "-", "batch (clean) vs running") in by
    assert not any(r["model"] in ("at", "plain") and r["statistic"].startswith("running") for r in rows)
    assert all(r["|Δ mean|"] >= 0 and r["var ratio"] > 0 for r in rows)
    assert any(r["|Δ mean|"] > 0 for r in rows if r["statistic"].startswith("running"))
    # pictures: one Fig. 6.5 per routed model, one Fig. 6.6 per (model, route)
    titles = [i["title"] for i in ev["images"]]
    assert sum(t.startswith("Fig. 6.5") for t in titles) == 2 and sum(t.startswith("Fig. 6.6") for t in titles) == 6
    assert all(base64.b64decode(i["png"])[:8] == b"\x89PNG\r\n\x1a\n" for i in ev["images"])
    assert len(ev["statistics"]["mbn"]["running"]["channels"]) == 4
    claims = {c["id"]: c for c in res["claims"]}
    assert claims["F6.5"]["verdict"] == "holds"


def test_bn_statistics_match_the_model_buffers_and_leave_them_alone(ran):
    _, res, run = ran
    from robustlab.train.checkpoint import load_trained_model

    model = load_trained_model(run / "models" / "mbn", routed=True)
    layer = res["evaluations"]["bn"]["statistics"]["mbn"]["layer"]
    bns = dict(model.named_modules())[layer].bns
    row = next(r for r in res["evaluations"]["bn"]["table"] if (r["model"], r["layer"], r["route"], r["statistic"])
               == ("mbn", layer, "adv", "running vs clean route"))
    expect = (bns["adv"].running_mean - bns["clean"].running_mean).abs().mean()
    assert row["|Δ mean|"] == pytest.approx(float(expect), rel=1e-5)
    ratio = bns["adv"].running_var.sum() / bns["clean"].running_var.sum()
    assert row["var ratio"] == pytest.approx(float(ratio), rel=1e-5)


def test_corruption_mce_against_the_baseline_model(ran):
    _, res, _ = ran
    ev = res["evaluations"]["corruption"]
    rows = {r["model"]: r for r in ev["table"]}
    assert list(rows) == ["plain", "at", "mbn"]  # the baseline is evaluated too, first
    assert rows["plain"]["mCE"] == pytest.approx(100.0) and rows["plain"]["relative mCE"] == pytest.approx(100.0)
    ok = [c for c in ev["errors"]["plain"] if c not in ev["mce"]["excluded"]]
    errs = {m: {c: {int(s): e for s, e in ev["errors"][m][c].items()} for c in ok} for m in rows}
    assert rows["at"]["mCE"] == pytest.approx(mce(errs["at"], errs["plain"]))
    ok_rel = [c for c in ok if c not in ev["mce"]["excluded_relative"]]
    if ok_rel:
        pick = {m: {c: errs[m][c] for c in ok_rel} for m in rows}
        assert rows["mbn"]["relative mCE"] == pytest.approx(relative_mce(pick["mbn"], 1 - rows["mbn"]["clean"],
                                                                          pick["plain"], 1 - rows["plain"]["clean"]))
    assert list(rows["at"])[:5] == ["model", "clean", "corrupted (mean)", "mCE", "relative mCE"]
    assert {c["id"]: c for c in res["claims"]}["T7.1"]["verdict"] in ("holds", "does not hold")


def test_a_robust_evaluation_logs_its_progress_and_result_per_model(ran):
    row = ran[1]["evaluations"]["thesis"]["table"][0]
    assert any(line.startswith("thesis at: 64/64 samples (100%) in ") for line in LOG), LOG
    assert f"thesis at: clean {100 * row['clean']:.1f}%, robust {100 * row['robust']:.1f}% (n = 64) in" in \
        "\n".join(LOG)


def test_thesis_protocol_rows_carry_the_final_and_best_iterate(ran):
    _, res, _ = ran
    ev = res["evaluations"]["thesis"]
    row = ev["table"][0]
    assert row["final@4"] == row["robust"] and row["best@4"] <= row["final@4"]
    curve = ev["curves"]["at"]
    assert curve["steps"] == [2, 4] and curve["final_accuracy"][-1] == row["final@4"]
    assert curve["best_accuracy"][-1] == row["best@4"]
    assert all(b <= f for b, f in zip(curve["best_accuracy"], curve["final_accuracy"]))


def test_stylized_and_imagenet_a_accuracy_on_folders(ran):
    raw, res, run = ran
    sin = {r["model"]: r["Stylized-ImageNet accuracy"] for r in res["evaluations"]["sin"]["table"]}
    assert set(sin) == {"plain", "at"} and res["evaluations"]["sin"]["n"] == 40
    # the folder holds the test images themselves (PNG, resized 8 → 9 → cropped 8): accuracy of about the same
    model = load_model(run / "models" / "plain").eval()
    x, y = load_dataset("digits", "test", limit=40).batch(slice(0, 40))
    clean = float((model(x).argmax(1) == y).float().mean())
    assert abs(sin["plain"] - clean) < 0.35
    ina = res["evaluations"]["ina"]
    assert ina["data"]["classes_present"] == 3 and ina["data"]["restricted_to_present"]
    keep = (y == 1) | (y == 4) | (y == 7)
    from robustlab.data.shifted import read_class_folder

    ds = read_class_folder(raw["evaluations"]["ina"]["root"], [str(i) for i in range(10)], kind="imagenet_a",
                           size=8, channels=1)
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        restricted = float((restrict_logits(model(xs), [1, 4, 7]).argmax(1) == ys).float().mean())
        unrestricted = float((model(xs).argmax(1) == ys).float().mean())
    assert len(ds) == int(keep.sum())
    assert ina["table"][0]["ImageNet-A accuracy"] == pytest.approx(restricted) and restricted >= unrestricted


def _bad(tmp: Path, edit) -> dict:
    raw = _study(tmp)
    raw["evaluations"] = {"clean": {"kind": "accuracy"}}
    raw["claims"] = []
    edit(raw)
    return raw


@pytest.mark.parametrize("edit, fragment", [
    (lambda r: r["evaluations"].update(c={"kind": "corruption", "baseline": "ghost"}), "baseline: unknown model"),
    (lambda r: r["evaluations"].update(s={"kind": "stylized"}), "evaluations.s.root must be the folder"),
    (lambda r: r["evaluations"].update(s={"kind": "stylized", "root": "/nonexistent/sin"}), "/nonexistent/sin"),
    (lambda r: r["evaluations"].update(s={"kind": "imagenet_a", "root": "LOOSE"}), "holds images directly"),
    (lambda r: r["evaluations"].update(s={"kind": "stylized", "root": "WRONG"}), "name no class"),
    (lambda r: r["evaluations"].update(b={"kind": "bn_statistics", "channels": 0}), "channels must be"),
    (lambda r: r["evaluations"].update(w={"kind": "whitebox", "steps": [0, 2]}), "iteration counts >= 1"),
    (lambda r: r["models"].update(g={"model": {"norm": "gn"}}) or
     r["evaluations"].update(b={"kind": "bn_statistics"}), "GroupNorm"),
    (lambda r: r["evaluations"].update(b={"kind": "bn_statistics", "chanels": 3}), "unknown option(s) ['chanels']"),
])
def test_bad_evaluations_exit_2_before_any_work(tmp_path, monkeypatch, capsys, edit, fragment):
    loose = tmp_path / "LOOSE"
    loose.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(loose / "a.png")
    _digits_tree(tmp_path / "WRONG" / "x", n=5)  # WRONG/x/<digit>/...: the folder x names no class
    monkeypatch.chdir(tmp_path)
    raw = _bad(tmp_path, edit)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(raw)))
    capsys.readouterr()
    assert main(["study", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_an_evaluation_limit_on_class_sorted_images_spreads_over_the_classes(tmp_path):
    """A study on an ImageFolder holds its test images sorted by class: an
    evaluation's smaller limit takes every k-th of them, not the first classes;
    images in mixed order keep the first ones (Fashion-MNIST's results unchanged)."""
    from types import SimpleNamespace

    from robustlab.app.study_eval import Context

    study = SimpleNamespace(limit=None, batch_size=4)
    y_sorted = torch.arange(5).repeat_interleave(4)  # 5 classes x 4 images
    x = torch.arange(20.0).view(20, 1, 1, 1)
    xs, ys = Context(study, tmp_path, torch.device("cpu"), x, y_sorted).data({"limit": 5})
    assert ys.tolist() == [0, 1, 2, 3, 4] and xs.flatten().tolist() == [0, 4, 8, 12, 16]
    y_mixed = torch.arange(20) % 5
    xs, ys = Context(study, tmp_path, torch.device("cpu"), x, y_mixed).data({"limit": 5})
    assert xs.flatten().tolist() == [0, 1, 2, 3, 4]
