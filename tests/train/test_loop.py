"""The training loop: resume bit for bit, checkpoints, options, BN switches."""
from __future__ import annotations

import json
import math

import pytest
import torch
from train_helpers import ATTACK, Killed, digits_train, kill_at, model_for, small_model

import robustlab as rl
from robustlab.train import recipes
from robustlab.train.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from robustlab.train.schedule import LRSchedule, scaled_lr


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


OPTS = dict(epochs=3, batch_size=64, lr=0.05, checkpoint_every=7, progress=False, log_every=5)


@pytest.mark.parametrize("name", ["madry", "advprop_finegrained"])
def test_kill_and_resume_is_bit_exact(tmp_path, name):
    """Killed mid-epoch (between checkpoints), resumed: the same weights, the
    same optimizer moments, the same BN statistics as an uninterrupted run —
    attack starts, targets, clean/random init coins and augmentations included."""
    ds = digits_train()
    opts = dict(OPTS, epochs=2) if name == "advprop_finegrained" else OPTS
    make = lambda: recipes.create(name, targeted=True, **ATTACK) if name == "madry" else recipes.create(name, **ATTACK)  # noqa: E731
    whole = rl.train.fit(model_for(make(), ds.info), ds, make(), out=tmp_path / "whole", **opts)
    with pytest.raises(Killed):
        rl.train.fit(model_for(make(), ds.info), ds, make(), out=tmp_path / "cut", on_step=[kill_at(31)], **opts)
    assert latest_checkpoint(tmp_path / "cut").name == "step-00000028"
    resumed = rl.train.fit(model_for(make(), ds.info, seed=123), ds, make(), out=tmp_path / "cut", resume=True, **opts)
    assert resumed.resumed_from == 28
    _same_weights(whole.model, resumed.model)
    # The metrics log reads as one run: every step logged once, in order.
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line)["step"] for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert steps == ref
    assert [h["train_loss"] for h in whole.history] == [h["train_loss"] for h in resumed.history]


def test_resume_without_checkpoint_starts_afresh_and_finished_run_is_not_retrained(tmp_path):
    ds = digits_train()
    first = rl.train.fit(small_model(ds.info), ds, out=tmp_path, resume=True, epochs=1, batch_size=64,
                         progress=False)
    assert first.resumed_from is None and first.steps == len(ds) // 64
    calls = []
    again = rl.train.fit(small_model(ds.info, seed=5), ds, out=tmp_path, resume=True, epochs=1, batch_size=64,
                         progress=False, on_step=[calls.append])
    assert calls == [] and again.resumed_from == first.steps
    _same_weights(first.model, again.model)


def test_checkpoint_is_safetensors_and_json(tmp_path):
    from safetensors.torch import load_file

    ds = digits_train()
    rl.train.fit(small_model(ds.info), ds, out=tmp_path, epochs=1, batch_size=64, progress=False)
    ckpt = latest_checkpoint(tmp_path)
    tensors = load_file(str(ckpt / "state.safetensors"))  # no pickle involved
    meta = json.loads((ckpt / "state.json").read_text())
    assert meta["step"] == len(ds) // 64 and meta["epoch"] == 1
    assert any(k.startswith("optim.") for k in tensors) and "rng.torch" in tensors
    assert {"param_groups", "scalars"} <= set(meta["optimizer"])
    model = rl.models.load_model(tmp_path)  # the exported model
    assert isinstance(model, torch.nn.Module)


def test_corrupted_or_truncated_checkpoint_is_refused(tmp_path):
    ds = digits_train()
    rl.train.fit(small_model(ds.info), ds, out=tmp_path, epochs=1, batch_size=64, progress=False)
    ckpt = latest_checkpoint(tmp_path)
    data = (ckpt / "state.safetensors").read_bytes()
    (ckpt / "state.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        rl.train.fit(small_model(ds.info), ds, out=tmp_path, resume=True, epochs=1, batch_size=64, progress=False)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    (ckpt / "state.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(ckpt)
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ckpt)


def test_a_damaged_newest_checkpoint_names_itself_and_the_one_before_it(tmp_path, capsys):
    """A corrupt state.json gave 'error: Expecting property name enclosed in double quotes' on the command line:
    no file named, no word of the older checkpoint that still resumes."""
    import yaml

    from robustlab.app.cli import main

    cfg = {"seed": 0, "device": "cpu", "model": {"name": "smallcnn", "width": 4},
           "data": {"name": "digits", "limit": 256, "eval_limit": 32}, "recipe": {"name": "vanilla"},
           "train": {"epochs": 2, "batch_size": 64, "checkpoint_every": 2, "keep_checkpoints": 3},
           "eval": {"attack": None}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["-q", "train", str(tmp_path / "cfg.yaml"), "train.epochs=1", "--out", str(out)]) == 0
    newest, older = list_checkpoints(out)[-1], list_checkpoints(out)[-2]
    (newest / "state.json").write_text("{")
    assert main(["-q", "train", "--resume", str(out), "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {newest / 'state.json'} is corrupted" in err
    assert f"remove {newest} to resume from the one before it ({older.name})" in err


def test_old_checkpoints_are_pruned_and_no_temp_left(tmp_path):
    ds = digits_train()
    rl.train.fit(small_model(ds.info), ds, out=tmp_path, epochs=2, batch_size=64, checkpoint_every=5,
                 keep_checkpoints=2, progress=False)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-00000040", "step-00000044"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == names


def test_resume_refuses_a_different_batch_size(tmp_path):
    ds = digits_train()
    rl.train.fit(small_model(ds.info), ds, out=tmp_path, epochs=1, batch_size=64, progress=False)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        rl.train.fit(small_model(ds.info), ds, out=tmp_path, resume=True, epochs=1, batch_size=32, progress=False)


def test_running_stats_for_the_last_epochs():
    """§6.4.3: during the last K epochs BN normalizes with (and no longer
    updates) its running statistics."""
    ds = digits_train()
    seen = {}

    def spy(step):
        if step in (44, 45, 66):
            bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            seen[step] = (bn.running_mean.clone(), int(bn.num_batches_tracked))

    model = small_model(ds.info)
    res = rl.train.fit(model, ds, recipes.create("madry", **ATTACK), epochs=3, batch_size=64, lr=0.02,
                       bn_running_last=1, progress=False, on_step=[spy])
    assert torch.equal(seen[45][0], seen[66][0]) and seen[45][1] == seen[66][1] == 44
    assert seen[44][1] == 44
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert not any(getattr(m, "_rl_running_stats", False) for m in model.modules())  # switched off at the end


def test_label_smoothing_and_grad_clip_take_effect():
    ds = digits_train()
    runs = {}
    for key, kw in {"plain": {}, "ls": {"label_smoothing": 0.1}, "clip": {"grad_clip": 1e-3}}.items():
        res = rl.train.fit(small_model(ds.info), ds, epochs=1, batch_size=64, progress=False, **kw)
        runs[key] = res
    assert runs["ls"].history[0]["train_loss"] > runs["plain"].history[0]["train_loss"]
    # A tiny clip makes every update tiny: the model barely learns.
    assert runs["clip"].history[0]["train_acc"] < runs["plain"].history[0]["train_acc"] - 0.2


def test_bf16_autocast_on_cpu_trains():
    ds = digits_train()
    res = rl.train.fit(small_model(ds.info), ds, epochs=2, batch_size=64, amp="bf16", channels_last=True,
                       progress=False)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_schedules():
    s = LRSchedule(0.1, steps_per_epoch=10, epochs=110, kind="step", milestones=(35, 70, 95))
    assert s.lr_at(0) == pytest.approx(0.1) and s.lr_at(349) == pytest.approx(0.1)
    assert s.lr_at(350) == pytest.approx(0.01) and s.lr_at(700) == pytest.approx(1e-3)
    assert s.lr_at(950) == pytest.approx(1e-4)
    c = LRSchedule(1.0, steps_per_epoch=10, epochs=10, kind="cosine")
    assert c.lr_at(0) == 1.0 and c.lr_at(50) == pytest.approx(0.5) and c.lr_at(100) == pytest.approx(0.0)
    w = LRSchedule(0.4, steps_per_epoch=10, epochs=10, kind="constant", warmup_epochs=2)
    assert [w.lr_at(i) for i in (0, 9, 19, 20)] == pytest.approx([0.02, 0.2, 0.4, 0.4])
    e = LRSchedule(0.256, steps_per_epoch=10, epochs=10, kind="exponential", gamma=0.97, decay_every=2.4)
    assert e.lr_at(23) == pytest.approx(0.256) and e.lr_at(24) == pytest.approx(0.256 * 0.97)
    assert scaled_lr(0.1, 4096, 256) == pytest.approx(1.6)  # §4.5's batch of 4096 under the linear rule
    assert math.isclose(scaled_lr(0.1, 64, None), 0.1)


def test_lr_in_metrics_follows_the_schedule(tmp_path):
    ds = digits_train()
    rl.train.fit(small_model(ds.info), ds, out=tmp_path, epochs=2, batch_size=64, lr=0.1, milestones=[1],
                 log_every=11, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lrs[11] == pytest.approx(0.1) and lrs[33] == pytest.approx(0.01)


@pytest.mark.parametrize(("kw", "match"), [
    ({"epochs": 0}, "epochs"), ({"batch_size": 5000}, "larger than the training set"),
    ({"optimizer": "lbfgs"}, "optimizer"), ({"lr": -1}, "lr"), ({"amp": "fp8"}, "amp"),
    ({"amp": "fp16"}, "CUDA"), ({"schedule": "poly"}, "schedule"), ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"epoch": 3}, "unknown training option"), ({"momentum": 1.0}, "momentum"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, kw, match):
    ds = digits_train()
    with pytest.raises((ValueError, TypeError), match=match):
        rl.train.fit(small_model(ds.info), ds, out=tmp_path / "run", progress=False, **kw)
    assert not (tmp_path / "run").exists()


def test_bad_data_is_refused(tmp_path):
    x = torch.rand(64, 1, 8, 8) * 2  # pixels outside [0, 1]
    y = torch.randint(0, 10, (64,))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rl.train.fit(small_model(digits_train().info), (x, y), batch_size=32, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="images"):
        rl.train.fit(small_model(digits_train().info), (x[0], y), batch_size=32, progress=False)
    with pytest.raises(TypeError, match="data must be"):
        rl.train.fit(small_model(digits_train().info), [1, 2, 3], progress=False)


def test_tensor_pair_data_and_evaluate_callback():
    ds = digits_train()
    x, y = ds.batch(slice(None))
    seen = []

    def evaluate(model):
        seen.append(model.training)
        return {"clean_acc": rl.eval.accuracy(model, x[:200], y[:200])}

    res = rl.train.fit(small_model(ds.info), (x, y), epochs=3, batch_size=64, lr=0.05, eval_every=2,
                       evaluate=evaluate, progress=False)
    assert seen == [False, False]  # epochs 2 and 3 (the last), in eval mode
    assert "clean_acc" in res.history[1] and "clean_acc" not in res.history[0]
    assert res.history[-1]["clean_acc"] > 0.8


def test_load_trained_model_gives_the_exported_or_the_routed_model(tmp_path):
    ds = digits_train()
    recipe = recipes.create("advprop", **ATTACK)
    trained = model_for(recipe, ds.info)
    res = rl.train.fit(trained, ds, recipe, out=tmp_path, epochs=1, batch_size=128, progress=False)
    exported = rl.train.checkpoint.load_trained_model(tmp_path, routed=False)
    _same_weights(exported, res.model)  # AdvProp's test-time model: the auxiliary BNs dropped (§7.4.3)
    routed = rl.train.checkpoint.load_trained_model(tmp_path)
    assert rl.nn.route_names(routed) == ("clean", "adv") and not routed.training
    _same_weights(routed, trained)  # every BN route, from the last training checkpoint
    x, _ = ds.batch(slice(0, 32))
    with rl.nn.route(routed, "clean"):
        assert torch.equal(routed(x), exported(x))
    vanilla = tmp_path / "vanilla"
    rl.train.fit(small_model(ds.info), ds, out=vanilla, epochs=1, batch_size=128, progress=False)
    _same_weights(rl.train.checkpoint.load_trained_model(vanilla), rl.models.load_model(vanilla))


def test_edited_checkpoint_record_is_refused(tmp_path):
    """state.json (step, options, RNG metadata) is covered by a digest: editing it is refused."""
    import json

    from robustlab.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path, 5, model=model, optimizer=opt)
    load_checkpoint(path)  # as written: accepted
    meta = json.loads((path / "state.json").read_text())
    meta["step"] = 500
    (path / "state.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="edited"):
        load_checkpoint(path)


def test_metrics_truncation_tolerates_a_torn_last_line(tmp_path):
    from robustlab.train.loop import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    _truncate_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 2"):
        _truncate_metrics(path, 2)
