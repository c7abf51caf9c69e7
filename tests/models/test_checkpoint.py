"""One model.json for every kind of model: classifiers, segmenters, detectors
(round trips, the old dense layout, tampering, a kind the caller did not ask for)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from robustlab.models import (
    create_dense,
    create_model,
    load_checkpoint,
    load_model,
    load_weights_into,
    read_model_info,
    save_model,
    save_weights,
)
from robustlab.models.checkpoint import META, WEIGHTS
from robustlab.models.factory import load_state_dict as rl_load_state_dict

DENSE = {"segmentation": {"task": "segmentation", "num_classes": 3, "width": 2},
         "detection": {"task": "detection", "num_classes": 3, "width": 2}}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_classifier_round_trip_records_its_kind(tmp_path):
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, in_channels=1, width=4).eval()
    save_model(model, tmp_path / "c", meta={"note": 1})
    doc = json.loads((tmp_path / "c" / META).read_text())
    assert doc["kind"] == "classifier" and doc["spec"]["name"] == "smallcnn" and doc["meta"] == {"note": 1}
    loaded, info = load_checkpoint(tmp_path / "c")
    x = torch.rand(2, 1, 8, 8)
    assert info.kind == "classifier" and torch.equal(loaded(x), model(x)) and not loaded.training


@pytest.mark.parametrize("task, kind", [("segmentation", "segmenter"), ("detection", "detector")])
def test_dense_round_trip(tmp_path, task, kind):
    torch.manual_seed(0)
    model = create_dense(task, 3, 2)
    spec = {**DENSE[task], "seed": 0, "scenes": {"size": 32}, "classes": ["bg", "a", "b"]}
    save_model(model, tmp_path / "d", {"loss": [1.0]}, spec=spec)
    doc = json.loads((tmp_path / "d" / META).read_text())
    assert doc["kind"] == kind and doc["spec"] == spec and len(doc["sha256"]) == 64
    loaded = load_model(tmp_path / "d")  # any kind
    assert type(loaded) is type(model) and _same_weights(loaded, model) and not loaded.training
    info = read_model_info(tmp_path / "d")
    assert (info.kind, info.spec, info.meta) == (kind, spec, {"loss": [1.0]})
    x = torch.rand(1, 3, 32, 32)
    if task == "segmentation":
        assert torch.equal(loaded(x), model.eval()(x))


def test_the_old_dense_layout_still_loads(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = create_dense("segmentation", 3, 2)
    d = tmp_path / "old"
    d.mkdir()
    # what DAG studies wrote before the kind: bare safetensors, {"spec": null, "dense": ...}, no digest
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / WEIGHTS))
    spec = {**DENSE["segmentation"], "seed": 1, "train": {"epochs": 1}}
    (d / META).write_text(json.dumps({"spec": None, "dense": spec, "meta": {"train_seconds": 1.0}}))
    loaded, info = load_checkpoint(d, kind=("segmenter", "detector"))
    assert _same_weights(loaded, model) and info.kind == "segmenter" and info.spec == spec
    assert info.sha256 is None and info.meta == {"train_seconds": 1.0}
    state = model.state_dict()
    state["score2.weight"] = torch.full_like(state["score2.weight"], float("nan"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / WEIGHTS))
    with pytest.raises(ValueError, match="non-finite weights"):
        load_model(d)
    (d / META).write_text(json.dumps({"spec": None, "dense": {**spec, "width": 3}, "meta": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / WEIGHTS))
    with pytest.raises(ValueError, match="does not fit the model model.json describes"):
        load_model(d)


def _edit(d, fn):
    doc = json.loads((d / META).read_text())
    fn(doc)
    (d / META).write_text(json.dumps(doc))


@pytest.mark.parametrize("edit, fragment", [
    (lambda doc: doc["spec"].update(width=3), r"was edited.*width: 3 in model.json, 2 in model.safetensors"),
    (lambda doc: doc.update(kind="detector", spec={**doc["spec"], "task": "detection"}),
     r"was edited.*task: 'detection' in model.json, 'segmentation' in model.safetensors"),
    (lambda doc: doc.update(kind="detector"), r"kind 'detector' disagrees with spec.task 'segmentation'"),
    (lambda doc: doc.update(kind="tracker"), r"kind must be one of classifier, segmenter, detector"),
    (lambda doc: doc["spec"].update(task="depth"), r"task must be one of segmentation, detection"),
    (lambda doc: doc["spec"].pop("width"), r"a dense \(ch. 2\) model's spec is missing the key\(s\) width"),
    (lambda doc: doc["spec"].update(extra=1), r"unknown key\(s\) extra"),
    (lambda doc: doc["spec"].update(num_classes=1), r"num_classes must be an integer >= 2"),
    (lambda doc: doc.update(sha256="0" * 64), r"its sha256 .* differs from 0000"),
    (lambda doc: doc.pop("sha256"), r"records no sha256"),
])
def test_an_edited_dense_model_json_is_refused(tmp_path, edit, fragment):
    d = save_model(create_dense("segmentation", 3, 2), tmp_path / "d", spec=DENSE["segmentation"])
    _edit(d, edit)
    with pytest.raises(ValueError, match=fragment) as err:
        load_model(d)
    assert "model.json" in str(err.value) or "model.safetensors" in str(err.value)


def test_the_same_model_saves_to_the_same_bytes(tmp_path):
    model = create_dense("segmentation", 3, 2)
    files = {save_model(model, tmp_path / str(i), spec=DENSE["segmentation"]) / WEIGHTS for i in range(4)}
    assert len({f.read_bytes() for f in files}) == 1


def test_tampered_dense_weights_are_refused(tmp_path):
    d = save_model(create_dense("segmentation", 3, 2), tmp_path / "d", spec=DENSE["segmentation"])
    w = d / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted or truncated: its sha256"):
        load_model(d)


def test_a_kind_the_caller_did_not_ask_for_is_named(tmp_path):
    save_model(create_model("smallcnn", 10, in_channels=1, width=4), tmp_path / "c")
    save_model(create_dense("detection", 3, 2), tmp_path / "d", spec=DENSE["detection"])
    with pytest.raises(ValueError, match=r"holds a classifier, not a dense model \(segmenter or detector\)"):
        load_model(tmp_path / "c", kind=("segmenter", "detector"))
    with pytest.raises(ValueError, match="holds a detector, not classifier"):
        load_model(tmp_path / "d", kind="classifier")
    from robustlab.models import resolve_model  # a user's --model: classifiers only

    with pytest.raises(ValueError, match="holds a detector"):
        resolve_model(tmp_path / "d")


def test_bad_dense_specs_are_refused_before_anything_is_written(tmp_path):
    model = create_dense("segmentation", 3, 2)
    with pytest.raises(ValueError, match="missing the key"):
        save_model(model, tmp_path / "d", spec={"task": "segmentation"})
    with pytest.raises(ValueError, match="task must be one of"):
        save_model(model, tmp_path / "d", spec={**DENSE["segmentation"], "task": "pose"})
    assert not (tmp_path / "d").exists()


def test_weights_of_a_foreign_model_are_saved_but_not_rebuilt(tmp_path):
    model = torch.nn.Linear(3, 2)
    d = save_weights(model, tmp_path / "w", meta={"steps": 3})
    doc = json.loads((d / META).read_text())
    assert doc["kind"] is None and doc["spec"] is None and doc["meta"] == {"steps": 3}
    assert doc["sha256"] == hashlib.sha256((d / WEIGHTS).read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"weights of your own network .*\.load_state_dict\('.*model.safetensors'\)"):
        load_model(d)
    # the advice works: the state dict it names loads into the same architecture, checked by load_weights_into
    other = torch.nn.Linear(3, 2)
    other.load_state_dict(rl_load_state_dict(d / WEIGHTS))
    assert torch.equal(other.weight, model.weight)
    again = load_weights_into(torch.nn.Linear(3, 2), d)
    assert torch.equal(again.weight, model.weight) and not again.training
    with pytest.raises(ValueError, match="does not fit the network"):
        load_weights_into(torch.nn.Linear(4, 2), d)
    data = bytearray((d / WEIGHTS).read_bytes())
    data[-1] ^= 1
    (d / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is corrupted or truncated: its sha256"):
        load_weights_into(torch.nn.Linear(3, 2), d)


def test_a_folder_that_is_no_model_names_the_model_folders_near_it(tmp_path):
    """A run's checkpoints/ or step folder points up to the run; a study's
    folder or a folder of runs lists the model folders in it."""
    from robustlab.models import resolve_model

    model = create_model("smallcnn", 10, in_channels=1, width=4)
    for name in ("study/models/a", "study/models/b", "runs/one"):
        save_model(model, tmp_path / name)
    (tmp_path / "runs/one/checkpoints/step-00000001").mkdir(parents=True)
    cases = {"runs/one/checkpoints/step-00000001": f"the run directory above it: {tmp_path / 'runs/one'}",
             "runs": f"the model directories in it: {tmp_path / 'runs/one'}",
             "study": f"in it: {tmp_path / 'study/models/a'}, {tmp_path / 'study/models/b'}"}
    for folder, hint in cases.items():
        with pytest.raises(FileNotFoundError, match=f"holds no {META}; ") as err:
            resolve_model(tmp_path / folder)
        assert hint in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        resolve_model(tmp_path / "empty")
    assert str(err.value).endswith(f"holds no {META}")
