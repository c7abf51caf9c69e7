"""Metric sinks (``train.log``) and the callbacks that receive the metrics."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from train_helpers import Killed, digits_train, kill_at, small_model

import robustlab as rl
from robustlab.app.config import resolve

# 1437 digits / 64 = 22 steps an epoch; checkpoints at 7, 14, 21, 22, 28, …
OPTS = dict(epochs=2, batch_size=64, lr=0.05, progress=False, log_every=5)
BOTH = ["jsonl", "tensorboard"]




def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _events(run_dir):
    """{tag: [(step, value)]} as TensorBoard reads ``run_dir/tensorboard`` (purges applied)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(records):
    """The scalars the TensorBoard sink should hold for these jsonl records."""
    out: dict[str, list] = {}
    for r in records:
        for k, v in r.items():
            if k not in ("kind", "step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(f"{r['kind']}/{k}", []).append((r["step"], v))
    return out


def _assert_events_match(run_dir):
    events, expected = _events(run_dir), _expected(_records(run_dir))
    assert events.keys() == expected.keys()
    for tag, want in expected.items():
        got = events[tag]
        assert [s for s, _ in got] == [s for s, _ in want], tag  # every step once, in order
        for (_, a), (_, b) in zip(got, want):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-6), tag  # TensorBoard stores float32
    return events


def test_tensorboard_scalars_equal_the_jsonl_records(tmp_path):
    pytest.importorskip("tensorboard")
    ds = digits_train()
    rl.train.fit(small_model(ds.info), ds, out=tmp_path, log=BOTH, evaluate=lambda m: {"clean_acc": 0.5}, **OPTS)
    events = _assert_events_match(tmp_path)
    assert {"train/loss", "train/acc", "train/lr", "epoch/train_loss", "epoch/clean_acc",
            "epoch/train_seconds"} <= events.keys()
    assert [s for s, _ in events["train/loss"]] == list(range(5, 45, 5))
    assert [s for s, _ in events["epoch/train_loss"]] == [22, 44]


def test_jsonl_only_writes_no_tensorboard(tmp_path):
    ds = digits_train()
    rl.train.fit(small_model(ds.info), ds, out=tmp_path, **dict(OPTS, epochs=1))
    assert _records(tmp_path) and not (tmp_path / "tensorboard").exists()


def test_resume_with_tensorboard_shows_each_step_once(tmp_path):
    """Killed at step 26: the newest checkpoint is the epoch end at 22 (whose
    epoch record it keeps), the train record at 25 came after it. Resumed, the
    events read as one run: 25 once, the epoch record at 22 still there."""
    pytest.importorskip("tensorboard")
    from robustlab.train.checkpoint import latest_checkpoint

    ds = digits_train()
    opts = dict(OPTS, checkpoint_every=7, log=BOTH)
    with pytest.raises(Killed):
        rl.train.fit(small_model(ds.info), ds, out=tmp_path, on_step=[kill_at(26)], **opts)
    assert latest_checkpoint(tmp_path).name == "step-00000022"
    assert [s for s, _ in _events(tmp_path)["train/loss"]] == [5, 10, 15, 20, 25]
    resumed = rl.train.fit(small_model(ds.info, seed=3), ds, out=tmp_path, resume=True, **opts)
    assert resumed.resumed_from == 22
    events = _assert_events_match(tmp_path)
    assert [s for s, _ in events["train/loss"]] == list(range(5, 45, 5))
    assert [s for s, _ in events["epoch/train_loss"]] == [22, 44]


def test_on_step_receives_the_step_metrics(tmp_path):
    ds = digits_train()
    seen, steps, lrs = [], [], []

    def two(step, metrics):
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad
                   for k, v in metrics.items() if k != "lr")
        seen.append({k: float(v) for k, v in metrics.items()})
        lrs.append(metrics["lr"])

    class Counter:  # a callable object with one argument: still f(step)
        def __call__(self, step):
            steps.append(step)

    rl.train.fit(small_model(ds.info), ds, out=tmp_path, on_step=[two, Counter()],
                 **dict(OPTS, schedule="cosine"))
    assert steps == list(range(1, 45)) and len(seen) == 44 and all(isinstance(lr, float) for lr in lrs)
    train = [r for r in _records(tmp_path) if r["kind"] == "train"]
    assert len(train) == 8
    for r in train:
        window = seen[r["step"] - 5: r["step"]]
        for k in ("loss", "acc"):
            assert sum(m[k] for m in window) / 5 == pytest.approx(r[k], rel=1e-6, abs=1e-6), (r["step"], k)
        assert seen[r["step"] - 1]["lr"] == r["lr"]
    assert len(set(lrs)) > 1  # the cosine schedule moves


def test_on_log_receives_exactly_the_jsonl_records(tmp_path):
    ds = digits_train()
    got = []
    result = rl.train.fit(small_model(ds.info), ds, out=tmp_path, on_log=[got.append],
                          evaluate=lambda m: {"clean_acc": 0.25}, **OPTS)
    assert got == _records(tmp_path)
    assert [r["kind"] for r in got].count("epoch") == 2 and [r for r in got if r["kind"] == "epoch"] == result.history
    without_dir = []  # no run directory: the callbacks get the same records
    rl.train.fit(small_model(ds.info), ds, on_log=without_dir.append, evaluate=lambda m: {"clean_acc": 0.25}, **OPTS)
    drop = lambda records: [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]  # noqa: E731
    assert drop(without_dir) == drop(got)


@pytest.mark.parametrize("log, match", [
    (["tensorboard"], "log must include 'jsonl'"),
    ("tensorboard", "log must include 'jsonl'"),
    ([], "log must include 'jsonl'"),
    (["jsonl", "wandb"], r"log names unknown sink\(s\) \['wandb'\]; allowed: jsonl, tensorboard"),
    (3, "log must be a sink name or a list"),
])
def test_bad_log_is_refused_before_any_work(tmp_path, log, match):
    ds = digits_train()
    with pytest.raises(ValueError, match=match):
        rl.train.fit(small_model(ds.info), ds, out=tmp_path / "run", log=log, **dict(OPTS, epochs=1))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="config key train." + match):
        resolve({"train": {"log": log}})


def test_log_accepts_a_string_and_drops_repeats():
    assert rl.train.TrainOptions(log="jsonl").log == ["jsonl"]
    assert rl.train.TrainOptions(log=("jsonl", "tensorboard", "jsonl")).log == BOTH
    assert rl.train.TrainOptions().to_dict()["log"] == ["jsonl"]
    assert resolve({"train": {"log": BOTH}}).train.log == BOTH


@pytest.mark.parametrize("kw", [{"on_step": [3]}, {"on_step": 3}, {"on_log": [None]}, {"on_log": "jsonl"}])
def test_non_callable_callbacks_are_refused_before_any_work(tmp_path, kw):
    ds = digits_train()
    with pytest.raises(TypeError, match=f"{next(iter(kw))} must"):
        rl.train.fit(small_model(ds.info), ds, out=tmp_path / "run", **kw, **dict(OPTS, epochs=1))
    assert not (tmp_path / "run").exists()


def test_missing_tensorboard_names_the_install_before_any_directory(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    ds = digits_train()
    calls = []
    with pytest.raises(ImportError, match=r"pip install 'robustlab\[tensorboard\]'"):
        rl.train.fit(small_model(ds.info), ds, out=tmp_path / "run", log=BOTH, on_step=[calls.append], **OPTS)
    assert not (tmp_path / "run").exists() and calls == []
    rl.train.fit(small_model(ds.info), ds, out=tmp_path / "plain", **dict(OPTS, epochs=1))  # jsonl needs nothing


def test_cli_train_log_writes_tensorboard_and_may_change_on_resume(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from test_train_cli import CONFIGS, TINY

    from robustlab.app.cli import main

    out = tmp_path / "run"
    assert main(["train", str(CONFIGS[0]), *TINY, "eval.attack=null", "train.log=[jsonl,tensorboard]",
                 "--out", str(out)]) == 0
    assert (out / "tensorboard").is_dir()
    events = _assert_events_match(out)
    assert "epoch/clean_acc" in events and "epoch/train_loss" in events
    assert main(["train", "--resume", str(out), "train.log=[jsonl]"]) == 0  # logging is not the run's identity


def test_a_fresh_start_replaces_the_metrics_a_run_left_before_its_first_checkpoint(tmp_path):
    from robustlab.train.sinks import JsonlSink

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    JsonlSink(tmp_path, resume_step=2).write({"step": 3})  # resumed: appended
    assert (tmp_path / "metrics.jsonl").read_text().count("step") == 3
    JsonlSink(tmp_path).write({"step": 1})  # started afresh: only its own records
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
