"""CUDA code paths of the training engine, for a machine with a GPU.

The test suite runs on CPU; this script checks what only a GPU exercises:
bf16 autocast with channels_last, fp16 with the grad scaler (saved in and
restored from checkpoints), kill-and-resume on CUDA (bit-exact with cuDNN in
deterministic mode), every recipe on CUDA, and ``torchrun`` with the NCCL
backend (one process: the DDP + NCCL path, all-reduce included). One line per
check; exits non-zero if any fails.

Run: ``python benchmarks/cuda_train_check.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from cuda_check import RESULTS, check

import robustlab as rl
from robustlab.train import recipes

ATTACK = {"eps": 0.1, "steps": 2, "step_size": 0.05}
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class Killed(Exception):
    pass


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    ds = rl.data.load_dataset("digits", "train")
    tmp = Path(tempfile.mkdtemp())

    def model(norm=None, routes=("clean", "adv"), width=16):  # noqa: ANN001, ANN202
        torch.manual_seed(0)
        return rl.models.create_model("smallcnn", 10, in_channels=1, mean=ds.info.mean, std=ds.info.std,
                                      width=width, norm=norm, routes=routes)

    @check("every recipe trains on CUDA")
    def _():  # noqa: ANN202
        out = []
        for name in recipes.names():
            r = recipes.create(name, **({} if name == "vanilla" else ATTACK))
            res = rl.train.fit(model("mbn" if r.routes else None, r.routes or ("clean", "adv")), ds, r, epochs=3,
                               batch_size=64, lr=0.05, device="cuda", progress=False)
            first, last = res.history[0]["train_loss"], res.history[-1]["train_loss"]
            assert last < 0.8 * first, (name, first, last)
            out.append(f"{name} {first:.2f}->{last:.2f}")
        return "; ".join(out)

    @check("bf16 autocast + channels_last (madry)")
    def _():  # noqa: ANN202
        m = model()
        res = rl.train.fit(m, ds, recipes.create("madry", **ATTACK), epochs=3, batch_size=64, lr=0.05,
                           device="cuda", amp="bf16", channels_last=True, progress=False)
        conv = next(p for p in m.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last)
        losses = [h["train_loss"] for h in res.history]
        assert losses[-1] < 0.8 * losses[0], losses
        return f"losses {[round(v, 3) for v in losses]}, {res.images_per_second:.0f} img/s"

    @check("fp16 + grad scaler, checkpointed and resumed (advprop)")
    def _():  # noqa: ANN202
        r = lambda: recipes.create("advprop", **ATTACK)  # noqa: E731
        kw = dict(epochs=2, batch_size=64, lr=0.05, device="cuda", amp="fp16", progress=False, checkpoint_every=7)
        whole = rl.train.fit(model("mbn"), ds, r(), out=tmp / "fp16", **kw)
        tensors, meta = rl.train.checkpoint.load_checkpoint(rl.train.checkpoint.latest_checkpoint(tmp / "fp16"))
        scale = float(tensors["scaler.scale"])
        try:
            rl.train.fit(model("mbn"), ds, r(), out=tmp / "fp16b", on_step=[_kill(10)], **kw)
        except Killed:
            pass
        resumed = rl.train.fit(model("mbn"), ds, r(), out=tmp / "fp16b", resume=True, **kw)
        assert resumed.resumed_from == 7
        assert all(torch.isfinite(v).all() for v in resumed.model.state_dict().values() if v.is_floating_point())
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in
                   zip(whole.model.state_dict().values(), resumed.model.state_dict().values()))
        return f"grad scale in checkpoint {scale:g}; resumed vs uninterrupted max |Δw| {diff:.2e}"

    @check("kill-and-resume on CUDA is bit-exact (cuDNN deterministic)")
    def _():  # noqa: ANN202
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        kw = dict(epochs=2, batch_size=64, lr=0.05, device="cuda", progress=False, checkpoint_every=7)
        make = lambda: recipes.create("madry", targeted=True, **ATTACK)  # noqa: E731
        whole = rl.train.fit(model(), ds, make(), out=tmp / "det", **kw)
        try:
            rl.train.fit(model(), ds, make(), out=tmp / "detb", on_step=[_kill(25)], **kw)
        except Killed:
            pass
        resumed = rl.train.fit(model(), ds, make(), out=tmp / "detb", resume=True, **kw)
        same = all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(),
                                                     resumed.model.state_dict().values()))
        assert same, "weights differ"
        return f"resumed from step {resumed.resumed_from}, weights identical"

    @check("torchrun + NCCL (1 process, DDP wrapped), advprop")
    def _():  # noqa: ANN202
        out = tmp / "nccl"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
               "robustlab", "-v", "train", str(CONFIGS / "train_advprop.yaml"), "data.name=digits", "train.epochs=2",
               "train.batch_size=64", "eval.limit=100", "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (out / "model.safetensors").is_file()
        backend = "nccl" if "nccl" in (proc.stderr + proc.stdout).lower() else "(backend not logged)"
        return proc.stdout.strip().splitlines()[-2].strip() + f" [{backend}]"

    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _kill(step: int):  # noqa: ANN202
    def hook(s: int) -> None:
        if s == step:
            raise Killed
    return hook


if __name__ == "__main__":
    sys.exit(main())
