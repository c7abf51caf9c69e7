"""torchrun + DDP on CPU (gloo), and a real SIGKILL followed by --resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import robustlab as rl

CONFIG = {
    "seed": 3,
    "device": "cpu",
    "model": {"name": "smallcnn", "width": 8},
    "data": {"name": "digits", "eval_limit": 200},
    "recipe": {"name": "madry", "attack": "pgd", "eps": 25, "steps": 2, "step_size": 12, "targeted": True},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "log_every": 5},
    "eval": {"attack": None},
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A digits SmallCNN trained in-process, as a weights file for model.weights."""
    from safetensors.torch import save_file

    ds = rl.data.load_dataset("digits", "train")
    torch.manual_seed(0)
    model = rl.models.create_model("smallcnn", 10, in_channels=1, width=8, mean=ds.info.mean, std=ds.info.std)
    rl.train.fit(model, ds, epochs=3, batch_size=64, lr=0.05, progress=False)
    path = tmp_path_factory.mktemp("pre") / "smallcnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(path))
    return str(path)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _write(tmp_path, cfg):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(args, timeout=300):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _torchrun(nproc, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "robustlab", "train", *args]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    {"name": "vanilla"},
    {"name": "madry", "attack": "ifgsm", "norm": "l2", "eps": "1.0px", "step_size": "0.5px", "steps": 2,
     "targeted": False},
])
def test_two_process_ddp_equals_one_process(tmp_path, pretrained, recipe):
    """Same global batch, same weights within float tolerance. BN runs on its
    running statistics throughout (bn_running_last = epochs), so no sample's
    output depends on which process its batch-mates are on. L∞ attacks are
    left out on purpose: sign(∇) flips wherever a gradient component is ~0,
    so a 1e-7 difference in the weights moves a pixel by 2α and the runs
    drift apart by more than float tolerance (they agree statistically)."""
    cfg = dict(CONFIG, recipe=recipe, model=dict(CONFIG["model"], weights=pretrained),
               train={"epochs": 2, "batch_size": 64, "lr": 0.01, "bn_running_last": 2, "log_every": 5})
    path = _write(tmp_path, cfg)
    _train([sys.executable, "-m", "robustlab", "train", str(path), "--out", str(tmp_path / "one")])
    _train(_torchrun(2, str(path), "--out", str(tmp_path / "two")))
    one, two = rl.models.load_model(tmp_path / "one"), rl.models.load_model(tmp_path / "two")
    start = rl.models.create_model("smallcnn", 10, in_channels=1, width=8, weights=pretrained)
    moved = 0.0
    for (k, a), b, c in zip(one.state_dict().items(), two.state_dict().values(), start.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
        moved = max(moved, float((a.float() - c.float()).abs().max()))
    assert moved > 1e-3  # the weights did train
    # Rank 0 alone logged: the same lines as the one-process run.
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_advprop_under_ddp_has_no_unused_parameter_error(tmp_path):
    cfg = dict(CONFIG, recipe={"name": "advprop", "eps": 8, "steps": 2, "step_size": 4},
               train={"epochs": 1, "batch_size": 64, "lr": 0.05})
    _train(_torchrun(2, str(_write(tmp_path, cfg)), "--out", str(tmp_path / "ap")))
    model = rl.models.load_model(tmp_path / "ap")
    assert not rl.nn.norm.mixture_layers(model)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = dict(CONFIG, train={"epochs": 4, "batch_size": 32, "lr": 0.05, "checkpoint_every": 10})
    path = _write(tmp_path, cfg)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "robustlab", "train", str(path), "--out", str(run)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints").is_dir():
        time.sleep(0.05)
    while time.time() < deadline and not any(p.name.startswith("step-") for p in (run / "checkpoints").iterdir()):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "model.safetensors").exists()
    _train([sys.executable, "-m", "robustlab", "train", "--resume", str(run)])
    _train([sys.executable, "-m", "robustlab", "train", str(path), "--out", str(tmp_path / "whole")])
    a, b = rl.models.load_model(run), rl.models.load_model(tmp_path / "whole")
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    results = yaml.safe_load((run / "results.json").read_text())
    assert results["resumed_from_step"] > 0


_ROUTES_SCRIPT = '''
import os, sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
import robustlab as rl
from robustlab.train import recipes

out, name = sys.argv[1], sys.argv[2]
ds = rl.data.load_dataset("digits", "train", limit=320)
recipe = recipes.create(name, eps=0.1, steps=2, step_size=0.05)
torch.manual_seed(0)
model = rl.models.create_model("smallcnn", 10, in_channels=1, width=8, mean=ds.info.mean, std=ds.info.std,
                               norm="mbn", routes=recipe.routes)
rank = int(os.environ["RANK"])
state = lambda: {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
if rank == 0:
    save_file(state(), os.path.join(out, "init.safetensors"))
res = rl.train.fit(model, ds, recipe, epochs=1, batch_size=64, lr=0.05, device="cpu", progress=False)
assert res.steps == 5
# fit trains the model it is given in place (on CPU .to() returns the same module);
# res.model is the export, which for AdvProp has lost the auxiliary BNs.
save_file(state(), os.path.join(out, f"rank{rank}.safetensors"))
dist.barrier()  # both ranks tear down together
dist.destroy_process_group()
'''


@pytest.fixture(scope="module", params=["mbn", "advprop"])
def route_dumps(request, tmp_path_factory):
    """(initial state, rank 0's state, rank 1's state) of a mixture-BN model
    trained by ``request.param`` under 2-process gloo DDP, every route kept."""
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp(request.param)
    script = out / "routes.py"
    script.write_text(_ROUTES_SCRIPT)
    _train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(script), str(out), request.param], timeout=120)
    return tuple(load_file(str(out / f"{n}.safetensors")) for n in ("init", "rank0", "rank1"))


def _route_keys(state, route, stats=("running_mean", "running_var", "num_batches_tracked")):
    keys = [k for k in state if f".bns.{route}." in k and k.rsplit(".", 1)[1] in stats]
    assert len(keys) == 3 * len(stats), keys  # smallcnn's three BN layers
    return keys


@pytest.mark.slow
def test_ddp_trains_every_route_alike_on_every_rank(route_dumps):
    """Mixture BN and AdvProp under 2-process DDP: the weights (every route's
    γ, β included) and each route's batch count are identical on both ranks,
    and every route's running statistics moved from their start (each route
    absorbed its own images; the attacks added none: 5 steps, 5 batches)."""
    init, r0, r1 = route_dumps
    for k in r0:
        if not k.endswith(("running_mean", "running_var")):
            assert torch.equal(r0[k], r1[k]), k
    for route in ("clean", "adv"):
        for k in _route_keys(r0, route):
            for state in (r0, r1):
                assert not torch.equal(state[k], init[k]), f"{k} did not move"
        for k in _route_keys(r0, route, ("num_batches_tracked",)):
            assert int(r0[k]) == int(r1[k]) == 5, k


@pytest.mark.slow
def test_every_route_has_the_same_running_statistics_on_every_rank(route_dumps):
    _, r0, r1 = route_dumps
    for route in ("clean", "adv"):
        for k in _route_keys(r0, route, ("running_mean", "running_var")):
            assert torch.equal(r0[k], r1[k]), f"{k} differs across ranks"


@pytest.mark.slow
def test_a_torchrun_resume_in_mid_epoch_logs_the_epochs_an_uninterrupted_run_logs(tmp_path):
    """Rank 0 saved its own part of the epoch's loss sums and every rank restored it, so the mean over ranks
    counted it twice: epoch 1's train_loss read 0.8646 after a resume against 0.8622. The sums are now added
    over the ranks when saved and carried by rank 0 alone."""
    import json
    import shutil

    cfg = dict(CONFIG, train={"epochs": 2, "batch_size": 64, "lr": 0.05, "log_every": 5, "checkpoint_every": 7,
                              "keep_checkpoints": 10})
    path = _write(tmp_path, cfg)
    whole = tmp_path / "whole"
    _train(_torchrun(2, str(path), "--out", str(whole)))
    steps = sorted(p.name for p in (whole / "checkpoints").iterdir())
    cut = tmp_path / "cut"  # the run as a kill after its first mid-epoch checkpoint (step 7 of 22) leaves it
    shutil.copytree(whole, cut)
    for name in steps[1:]:
        shutil.rmtree(cut / "checkpoints" / name)
    for name in ("model.safetensors", "model.json", "results.json", "report.html"):
        (cut / name).unlink(missing_ok=True)
    assert steps[0] == "step-00000007"
    _train(_torchrun(2, "--resume", str(cut)))
    epochs = [json.loads((d / "results.json").read_text())["history"] for d in (whole, cut)]
    assert [r["train_loss"] for r in epochs[1]] == pytest.approx([r["train_loss"] for r in epochs[0]], rel=1e-6)
