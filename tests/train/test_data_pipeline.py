"""Training data in any form: tensors, a streamed Dataset, a DataLoader, an
ImageFolder; augmentations on every dataset kind, drawn per (seed, epoch,
index); exact resume with workers; memory flat in the dataset's size."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import robustlab as rl
from robustlab.app.cli import main
from robustlab.data.augment import flip_crop, random_resized_crop, random_resized_crop_params
from robustlab.train.batches import EpochBatches
from tests.train.train_helpers import digits_train, small_model

AUGMENTS = ("none", "flip_crop", "random_resized_crop", "autoaugment")


def make_image_folder(root: Path, classes: int = 3, per_class: int = 16, val: int = 4) -> Path:
    """A tiny ImageNet-layout tree of JPEGs and PNGs of varying sizes, each class
    its own dominant colour (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 120, (36 + 3 * (i % 4), 44, 3), dtype=np.uint8)
                a[..., c] = 230
                Image.fromarray(a).save(d / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imagenet"))


# -- the augmentations against hand-written / torchvision references ---------
def test_flip_crop_equals_a_hand_written_crop_and_flip():
    x = torch.rand(6, 3, 10, 12)
    out = flip_crop(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the draws flip_crop makes, in its order
    oy, ox = torch.randint(0, 9, (6,), generator=g), torch.randint(0, 9, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    assert 0 < int(flip.sum()) < 6 and len(set(oy.tolist())) > 1
    for i in range(6):
        padded = torch.zeros(3, 18, 20)
        padded[:, 4:14, 4:16] = x[i]
        ref = padded[:, oy[i]: oy[i] + 10, ox[i]: ox[i] + 12]
        torch.testing.assert_close(out[i], ref.flip(-1) if flip[i] else ref, rtol=0, atol=0)


def test_random_resized_crop_is_torchvision_resized_crop_of_its_params():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(8, 3, 20, 16)
    out = random_resized_crop(x, torch.Generator().manual_seed(1))
    params = random_resized_crop_params(8, 20, 16, torch.Generator().manual_seed(1))
    for img, got, (top, left, h, w, flip) in zip(x, out, params.tolist()):
        ref = TF.resized_crop(img, top, left, h, w, [20, 16], antialias=True)
        torch.testing.assert_close(got, (ref.flip(-1) if flip else ref).clamp(0, 1))
    assert out.shape == x.shape


def test_random_resized_crop_params_follow_torchvision_ranges():
    p = random_resized_crop_params(4000, 64, 48, torch.Generator().manual_seed(0))
    top, left, h, w, flip = p.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 48).all()
    area = (h * w).double() / (64 * 48)
    assert area.min() >= 0.07 and area.max() <= 1.0 and area.mean() < 0.7  # U(0.08, 1) of the area
    aspect = (w.double() / h.double())
    assert aspect.min() > 0.7 and aspect.max() < 1.4  # 3/4 .. 4/3, up to rounding
    assert 0.45 < flip.double().mean() < 0.55
    # An image too elongated for any candidate falls back to the centre crop, aspect clamped.
    tall = random_resized_crop_params(50, 100, 2, torch.Generator().manual_seed(0))
    assert (tall[:, 2] * tall[:, 3] > 0).all() and (tall[:, 0] + tall[:, 2] <= 100).all()


# -- keyed draws: the same images whatever the workers -------------------------
def _epoch_batches(ds, workers, epoch=1, skip=0, world=1, rank=0):
    batches = EpochBatches(ds, 8, rank=rank, world=world, seed=3, workers=workers)
    return [(x.clone(), y.clone()) for x, y in batches.epoch(epoch, skip)]


def test_imagefolder_training_images_do_not_depend_on_workers_or_resume(folder):
    ds = rl.data.load_dataset(f"imagefolder:{folder}", "train", size=24, augment="random_resized_crop")
    assert ds.keyed and ds.info.num_classes == 3
    zero, two = _epoch_batches(ds, 0), _epoch_batches(ds, 2)
    assert len(zero) == 6 and zero[0][0].dtype == torch.uint8 and zero[0][0].shape == (8, 3, 24, 24)
    for (a, ya), (b, yb) in zip(zero, two):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(zero[2:], _epoch_batches(ds, 2, skip=2)))
    # Another epoch (or seed) draws another crop of the same image; the same key, the same crop.
    assert torch.equal(ds[(3, 1, 0)][0], ds[(3, 1, 0)][0])
    assert not torch.equal(ds[(3, 1, 0)][0], ds[(3, 2, 0)][0])
    assert not torch.equal(ds[(3, 1, 0)][0], ds[(4, 1, 0)][0])


def test_in_memory_augmentation_is_seeded_per_step_and_rank():
    base = digits_train()
    ds = rl.data.augmented(base, "flip_crop")
    a, b = _epoch_batches(ds, 0), _epoch_batches(ds, 0)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    plain = _epoch_batches(base, 0)
    assert not torch.equal(a[0][0], plain[0][0]) and torch.equal(a[0][1], plain[0][1])  # same order, augmented
    assert torch.equal(a[3][0], _epoch_batches(ds, 0, skip=3)[0][0])  # resume mid-epoch: the same step's draws
    assert rl.data.augmented(base, "none") is base


# -- fit with every form of data ---------------------------------------------
def _weights(model):
    return [t.detach().clone() for t in model.state_dict().values()]


class _Streamed(Dataset):
    """A plain map-style dataset (not in memory as far as the trainer knows)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_fit_with_a_dataloader_uses_its_dataset_batch_size_and_workers():
    base = digits_train()
    x, y = base.batch(slice(None))
    opts = dict(epochs=1, lr=0.05, progress=False, seed=4)
    ref = rl.train.fit(small_model(base.info), (x, y), batch_size=32, **opts)
    streamed = rl.train.fit(small_model(base.info), _Streamed(x, y), batch_size=32, workers=2, **opts)
    loader = DataLoader(_Streamed(x, y), batch_size=32, shuffle=True, num_workers=2)
    from_loader = rl.train.fit(small_model(base.info), loader, **opts)
    assert from_loader.steps == ref.steps == len(y) // 32
    for a, b, c in zip(_weights(ref.model), _weights(streamed.model), _weights(from_loader.model)):
        assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ValueError, match="batch_size=64 contradicts the DataLoader's batch_size 32"):
        rl.train.fit(small_model(base.info), loader, batch_size=64, **opts)


def test_fit_refuses_an_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.rand(1, 8, 8), 0

    with pytest.raises(TypeError, match="map-style Dataset"):
        rl.train.fit(small_model(digits_train().info), Stream(), epochs=1, progress=False)
    with pytest.raises(TypeError, match="map-style Dataset"):
        rl.train.fit(small_model(digits_train().info), DataLoader(Stream(), batch_size=2), progress=False)


def test_fit_checks_streamed_pixels_before_training(tmp_path):
    x, y = torch.rand(64, 1, 8, 8) * 3, torch.zeros(64, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rl.train.fit(small_model(digits_train().info), _Streamed(x, y), epochs=1, batch_size=16,
                     out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# -- every augmentation through `robustlab train` ------------------------------
def _tiny(tmp_path, data, augment, extra=()):
    cfg = {"seed": 1, "device": "cpu", "model": {"name": "smallcnn", "width": 8},
           "data": data, "recipe": {"name": "madry", "eps": 8, "steps": 1, "step_size": 8},
           "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "log_every": 1, "progress": False},
           "eval": {"attack": "pgd", "steps": 1, "limit": 8}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / f"run-{augment}"
    assert main(["-q", "train", str(path), f"data.augment={augment}", *extra, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("augment", AUGMENTS)
def test_every_augment_trains_on_an_image_folder(tmp_path, folder, augment):
    res = _tiny(tmp_path, {"name": f"imagefolder:{folder}", "size": 24, "eval_limit": 12, "workers": 1}, augment)
    assert res["steps"] == 3 and res["config"]["data"]["augment"] == augment
    assert 0.0 <= res["final"]["clean_acc"] <= 1.0 and "pgd_acc" in res["final"]


@pytest.mark.parametrize("augment", ["random_resized_crop", "autoaugment"])
def test_a_grayscale_image_folder_trains_a_one_channel_model(tmp_path, folder, augment):
    """``data.channels: 1`` on an ImageFolder was refused; it trains (and evaluates) a 1-channel network."""
    data = {"name": f"imagefolder:{folder}", "size": 24, "eval_limit": 12, "workers": 1, "channels": 1}
    res = _tiny(tmp_path, data, augment)
    model = rl.models.load_model(tmp_path / f"run-{augment}")
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert res["steps"] == 3 and first.in_channels == 1 and "pgd_acc" in res["final"]


@pytest.mark.parametrize("augment", AUGMENTS)
def test_every_augment_trains_on_fashion_mnist(tmp_path, augment):
    data = {"name": "fashion_mnist", "limit": 48, "eval_limit": 16, "download": False}
    if augment in ("autoaugment", "random_resized_crop"):
        data["channels"] = 3  # AutoAugment's colour ops need RGB; the crop works on either
    res = _tiny(tmp_path, data, augment)
    assert res["steps"] == 3 and np.isfinite(res["final"]["train_loss"])


def test_image_folder_defaults_to_random_resized_crop_and_streams_evaluation(tmp_path, folder):
    res = _tiny(tmp_path, {"name": f"imagefolder:{folder}", "size": 24, "eval_limit": 12}, "null")
    cfg = rl.app.config.resolve(res["config"])
    assert cfg.data.train_augment() == "random_resized_crop"
    assert res["final"]["clean_acc"] >= 0.0


class _AlwaysFirstClass(torch.nn.Module):
    def forward(self, x):
        return torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_training_time_attack_on_an_image_folder_takes_a_class_mixed_subset(folder):
    """An ImageFolder's images are sorted by class: eval.limit images must be
    spread over it, not its first classes. The val split holds 4 images of
    each of 3 classes; a model answering class 0 is right on a third of them,
    and must be on a third of the 6 images attacked (the first 6: two thirds)."""
    from robustlab.app.train import build_recipe, make_evaluate

    cfg = rl.app.config.resolve({"data": {"name": f"imagefolder:{folder}", "size": 24}, "recipe": {"name": "vanilla"},
                                 "eval": {"attack": "pgd", "eps": 8, "steps": 1, "limit": 6}})
    out = make_evaluate(cfg, build_recipe(cfg), torch.device("cpu"))(_AlwaysFirstClass())
    assert out["clean_n"] == 12 and out["pgd_n"] == 6
    assert out["clean_acc"] == pytest.approx(1 / 3) and out["pgd_acc"] == pytest.approx(1 / 3)


# -- resume with workers, memory ----------------------------------------------
def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_sigkill_and_resume_with_two_workers_is_bit_exact(tmp_path, folder):
    cfg = {"seed": 2, "device": "cpu", "model": {"name": "smallcnn", "width": 8},
           "data": {"name": f"imagefolder:{folder}", "size": 24, "workers": 2, "eval_limit": 6},
           "recipe": {"name": "madry", "eps": 8, "steps": 1, "step_size": 8},
           "train": {"epochs": 8, "batch_size": 8, "lr": 0.05, "checkpoint_every": 3, "progress": False},
           "eval": {"attack": None}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "robustlab", "train", str(path), "--out", str(run)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    ckpt = run / "checkpoints"
    while time.time() < deadline and not (ckpt.is_dir() and any(p.name.startswith("step-") for p in ckpt.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "model.safetensors").exists()
    for args in (["--resume", str(run)], [str(path), "data.workers=0", "--out", str(tmp_path / "whole")]):
        done = subprocess.run([sys.executable, "-m", "robustlab", "train", *args], env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = rl.models.load_model(run), rl.models.load_model(tmp_path / "whole")
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    assert json.loads((run / "results.json").read_text())["resumed_from_step"] > 0


PEAK = textwrap.dedent("""
    import resource, sys, torch
    from torch.utils.data import Dataset
    import robustlab as rl

    class Synthetic(Dataset):  # 3x64x64 uint8 images made from the index: nothing is stored
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(int(i))
            return torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8), int(i) % 10

    class Stop(Exception):
        pass

    def stop(step):
        if step == 6:
            raise Stop

    torch.manual_seed(0)
    model = rl.models.create_model("smallcnn", 10, width=4)
    try:
        rl.train.fit(model, Synthetic(int(sys.argv[1])), epochs=1, batch_size=32, progress=False, on_step=[stop])
    except Stop:
        pass
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
""")


@pytest.mark.slow
def test_memory_stays_flat_as_the_streamed_dataset_grows(tmp_path):
    """40 000 images of 3×64×64 are 490 MB as uint8 (2 GB as float): a trainer
    that loaded or collated the dataset would show it in the peak."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    peaks = []
    for n in (400, 40_000):
        proc = subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True, timeout=300,
                              env=dict(_env(), OMP_NUM_THREADS="1"), cwd=Path(__file__).resolve().parents[2])
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks.append(int(proc.stdout.split()[-1]))
    assert peaks[1] - peaks[0] < 60, f"peak resident memory grew from {peaks[0]} MB to {peaks[1]} MB"


def test_tensor_pairs_and_tensor_datasets_train_identically():
    x, y = digits_train().batch(slice(None))
    opts = dict(epochs=1, batch_size=64, lr=0.05, progress=False)
    a = rl.train.fit(small_model(digits_train().info), (x, y), **opts)
    b = rl.train.fit(small_model(digits_train().info), TensorDataset(x, y), **opts)
    assert all(torch.equal(p, q) for p, q in zip(_weights(a.model), _weights(b.model)))


def test_cifar_with_flip_crop_trains_through_the_cli(tmp_path, monkeypatch):
    """The path every `datasets.cifar10` study profile takes (it crashed with
    "data must be a torch Dataset … got AugmentedDataset"), on CIFAR batches
    written in the python-pickle layout."""
    from tests.test_security import cifar_folder

    cifar_folder(tmp_path / "data")
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path / "data"))
    res = _tiny(tmp_path, {"name": "cifar10", "eval_limit": 3, "download": False}, "flip_crop",
                extra=["train.batch_size=5", "eval.limit=3"])
    assert res["steps"] == 3 and res["config"]["data"]["augment"] == "flip_crop"
