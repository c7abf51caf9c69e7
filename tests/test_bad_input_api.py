"""Bad input to the public API: one table (kornia's tester shape, issue 14 part 6).

Every case asserts the exception type, a message fragment naming the argument,
how many forward passes the model saw (none, except where the class count is
read from the first forward pass), and that nothing was written to disk."""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab._checks import channel_mismatch
from robustlab.data import DataNotFoundError
from robustlab.models.checkpoint import META, WEIGHTS


class Counting(nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


@dataclass
class Ctx:
    model: Counting  # a 1-channel SmallCNN, 10 classes, for (4, 1, 8, 8) images
    fcn: Counting  # a 3-channel SmallFCN, 4 classes, for (1, 3, 16, 16) images
    x: torch.Tensor
    y: torch.Tensor
    inputs: Path  # prepared bad files and directories


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _export(root: Path, name: str) -> Path:
    torch.manual_seed(0)
    return rl.models.save_model(rl.models.create_model("smallcnn", 10, in_channels=1, width=4), root / name)


def _edit_json(d: Path, fn: Callable[[dict], None]) -> None:
    doc = json.loads((d / META).read_text())
    fn(doc)
    (d / META).write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Tampered exports and planted data directories, made once."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("inputs")
    d = _export(root, "nan")
    with safe_open(str(d / WEIGHTS), framework="pt") as f:
        header = f.metadata()
    state = load_file(str(d / WEIGHTS))
    k = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[k][0] = math.nan
    save_file(state, str(d / WEIGHTS), metadata=header)
    _edit_json(d, lambda doc: doc.update(sha256=hashlib.sha256((d / WEIGHTS).read_bytes()).hexdigest()))
    d = _export(root, "flipped")
    raw = bytearray((d / WEIGHTS).read_bytes())
    raw[-3] ^= 0x10
    (d / WEIGHTS).write_bytes(bytes(raw))
    d = _export(root, "truncated")
    (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:200])
    _edit_json(_export(root, "other_act"), lambda doc: doc["spec"].update(act="gelu"))
    _edit_json(_export(root, "unknown_act"), lambda doc: doc["spec"].update(act="swish2"))
    _edit_json(_export(root, "missing_key"), lambda doc: doc["spec"].pop("in_channels"))
    _edit_json(_export(root, "no_sha"), lambda doc: doc.pop("sha256"))
    d = _export(root, "foreign")
    (d / META).unlink()
    folder = root / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(pickle.dumps(Payload(root / "marker"), protocol=2))
    return root


@pytest.fixture()
def ctx(inputs, tmp_path, monkeypatch) -> Ctx:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)
    torch.manual_seed(0)
    model = Counting(rl.models.create_model("smallcnn", 10, in_channels=1, width=4).eval())
    fcn = Counting(rl.models.SmallFCN(3, 4, width=2).eval())
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return Ctx(model, fcn, x, torch.tensor([0, 1, 2, 3]), inputs)


def _snapshot(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for root in roots for p in sorted(root.rglob("*"))}


def _failing_channels(model, x):
    raise ValueError(channel_mismatch(model, x, "images"))


def pgd(**kw):
    return rl.attacks.create("pgd", eps=8 / 255, steps=2, **kw)


def nan_at(x: torch.Tensor, value: float = math.nan) -> torch.Tensor:
    x = x.clone()
    x[0, 0, 0, 0] = value
    return x


# (call, exception type, message fragment naming the argument, forward passes allowed)
CASES = {
    # ---- rl.attacks.create
    "attack_unknown_name": (lambda c: rl.attacks.create("pgdd"), ValueError, "unknown attack 'pgdd'", 0),
    "attack_name_not_str": (lambda c: rl.attacks.create(3), TypeError, "attack name must be a string", 0),
    "attack_negative_eps": (lambda c: rl.attacks.create("pgd", eps=-1), ValueError, "eps must be >= 0", 0),
    "attack_nan_eps": (lambda c: rl.attacks.create("pgd", eps=math.nan), ValueError, "eps must be finite", 0),
    "attack_inf_eps": (lambda c: rl.attacks.create("fgsm", eps=math.inf), ValueError, "eps must be finite", 0),
    "attack_str_eps": (lambda c: rl.attacks.create("pgd", eps="8"), TypeError, "eps must be a number", 0),
    "attack_negative_steps": (lambda c: rl.attacks.create("pgd", steps=-1), ValueError, "steps must be >= 0", 0),
    "attack_fractional_steps": (lambda c: rl.attacks.create("ifgsm", steps=2.5), ValueError,
                                "steps must be a whole number", 0),
    "attack_cw_zero_steps": (lambda c: rl.attacks.create("cw", steps=0), ValueError, "steps must be >= 1", 0),
    "attack_unknown_norm": (lambda c: rl.attacks.create("pgd", norm="L3"), ValueError, "norm must be one of", 0),
    "attack_unknown_loss": (lambda c: rl.attacks.create("pgd", loss="hinge"), ValueError, "loss must be one of", 0),
    "attack_negative_step_size": (lambda c: rl.attacks.create("pgd", step_size=-0.1), ValueError,
                                  "step_size must be > 0", 0),
    "attack_negative_mu": (lambda c: rl.attacks.create("mifgsm", mu=-1), ValueError, "mu must be >= 0", 0),
    "attack_p_above_one": (lambda c: rl.attacks.create("di2fgsm", p=2), ValueError, "p must be <= 1", 0),
    "attack_unknown_keyword": (lambda c: rl.attacks.create("pgd", epss=1), TypeError, "unknown keyword(s) ['epss']",
                               0),
    "attack_fgsm_has_no_steps": (lambda c: rl.attacks.create("fgsm", steps=3), ValueError,
                                 "fgsm is a single step", 0),
    # ---- attack.run with bad x / y
    "run_model_not_module": (lambda c: pgd().run(lambda v: v, c.x, c.y), TypeError, "model must be a torch.nn.Module",
                             0),
    "run_x_rank3": (lambda c: pgd().run(c.model, c.x[0], c.y), ValueError, "x must have shape (N, C, H, W)", 0),
    "run_x_rank5": (lambda c: pgd().run(c.model, c.x[None], c.y), ValueError, "x must have shape (N, C, H, W)", 0),
    "run_x_numpy": (lambda c: pgd().run(c.model, c.x.numpy(), c.y), TypeError, "x must be a torch.Tensor", 0),
    "run_x_uint8": (lambda c: pgd().run(c.model, (c.x * 255).to(torch.uint8), c.y), TypeError,
                    "got dtype torch.uint8 (8-bit images: x.float() / 255)", 0),
    "run_x_float64": (lambda c: pgd().run(c.model, c.x.double(), c.y), TypeError, "got torch.float64 (convert them", 0),
    "run_x_empty": (lambda c: pgd().run(c.model, c.x[:0], c.y[:0]), ValueError, "x must hold at least one image", 0),
    "run_x_above_one": (lambda c: pgd().run(c.model, c.x * 255, c.y), ValueError, "x must lie in [0, 1]", 0),
    "run_x_negative": (lambda c: pgd().run(c.model, c.x - 0.5, c.y), ValueError, "x must lie in [0, 1]", 0),
    "run_x_nan": (lambda c: pgd().run(c.model, nan_at(c.x), c.y), ValueError, "x contains 1 NaN", 0),
    "run_x_inf": (lambda c: pgd().run(c.model, nan_at(c.x, math.inf), c.y), ValueError, "x contains 1 NaN", 0),
    "run_y_short": (lambda c: pgd().run(c.model, c.x, c.y[:2]), ValueError, "y must have shape (4,)", 0),
    "run_y_2d": (lambda c: pgd().run(c.model, c.x, c.y[:, None]), ValueError, "y must have shape (4,)", 0),
    "run_y_float": (lambda c: pgd().run(c.model, c.x, c.y.float()), TypeError, "y must hold integer class indices",
                    0),
    "run_y_bool": (lambda c: pgd().run(c.model, c.x, c.y.bool()), TypeError, "y must hold integer class indices", 0),
    "run_y_list": (lambda c: pgd().run(c.model, c.x, [0, 1, 2, 3]), TypeError, "y must be a torch.Tensor", 0),
    "run_y_negative": (lambda c: pgd().run(c.model, c.x, c.y - 1), ValueError, "y must hold class indices >= 0", 0),
    "run_y_too_large": (lambda c: pgd().run(c.model, c.x, c.y + 7), ValueError, "y holds class index 10", 1),
    "run_target_untargeted": (lambda c: pgd().run(c.model, c.x, c.y, target=c.y), ValueError,
                              "target was given but pgd is untargeted", 0),
    "run_target_too_large": (lambda c: pgd(targeted=True).run(c.model, c.x, c.y, target=c.y + 20), ValueError,
                             "target holds class index 23", 1),
    "run_cw_float64": (lambda c: rl.attacks.create("cw", steps=1).run(c.model, c.x.double(), c.y), TypeError,
                       "x must have dtype float32", 0),
    # ---- channels against the model's first convolution (named once the model fails on them)
    "channels_rgb_into_gray": (lambda c: pgd().run(c.model, c.x.expand(-1, 3, -1, -1), c.y), ValueError,
                               "x has 3 channels", 1),
    "channels_gray_into_rgb": (lambda c: _failing_channels(c.fcn, c.x), ValueError,
                               "images has 1 channels (shape (4, 1, 8, 8)) but the model's first convolution takes 3",
                               0),
    # ---- rl.models.create_model
    "model_zero_classes": (lambda c: rl.models.create_model("smallcnn", 0), ValueError, "num_classes must be", 0),
    "model_one_class": (lambda c: rl.models.create_model("smallcnn", num_classes=1), ValueError,
                        "num_classes must be an integer >= 2", 0),
    "model_float_classes": (lambda c: rl.models.create_model("smallcnn", 2.5), ValueError, "num_classes", 0),
    "model_unknown_name": (lambda c: rl.models.create_model("resnet_huge"), ValueError, "unknown model 'resnet_huge'",
                           0),
    "model_factory_with_surgery": (lambda c: rl.models.resolve_model("nope.py:f", act="silu"), ValueError,
                                   "is your own network, built as its factory makes it", 0),
    "model_weights_file_as_name": (lambda c: rl.models.resolve_model("r50.pt", num_classes=10), ValueError,
                                   "a weights file is no architecture; name the network", 0),
    "model_bad_depth": (lambda c: rl.models.create_model("resnet7_cifar"), ValueError, "CIFAR ResNet depth", 0),
    "model_unknown_tv": (lambda c: rl.models.create_model("tv:nope"), ValueError, "unknown torchvision model 'nope'",
                         0),
    "model_option_it_does_not_take": (lambda c: rl.models.create_model("tv:resnet18", width=16), ValueError,
                                      "model option 'width' is not one tv:resnet18 takes", 0),
    "model_unknown_act": (lambda c: rl.models.create_model("smallcnn", act="swish2"), ValueError,
                          "unknown activation 'swish2'", 0),
    "model_act_options_alone": (lambda c: rl.models.create_model("smallcnn", act_options={"alpha": 2.0}), ValueError,
                                "act_options", 0),
    "model_bad_denoise_where": (lambda c: rl.models.create_model("smallcnn", denoise="mean", denoise_where="x"),
                                ValueError, "where must be 'stages' or 'all'", 0),
    "model_zero_width": (lambda c: rl.models.create_model("smallcnn", width=0), ValueError, "width", 0),
    "model_missing_weights": (lambda c: rl.models.create_model("smallcnn", weights=c.inputs / "none.pt"),
                              FileNotFoundError, "weights file not found", 0),
    # ---- rl.models.load_model on tampered directories
    "load_nan_weights": (lambda c: rl.models.load_model(c.inputs / "nan"), ValueError, "non-finite weights", 0),
    "load_flipped_byte": (lambda c: rl.models.load_model(c.inputs / "flipped"), ValueError,
                          "model.safetensors is corrupted or truncated", 0),
    "load_truncated": (lambda c: rl.models.load_model(c.inputs / "truncated"), ValueError,
                       "model.safetensors is corrupted or truncated", 0),
    "load_edited_act": (lambda c: rl.models.load_model(c.inputs / "other_act"), ValueError,
                        "act: 'gelu' in model.json", 0),
    "load_unknown_act": (lambda c: rl.models.load_model(c.inputs / "unknown_act"), ValueError, "spec.act must be", 0),
    "load_missing_key": (lambda c: rl.models.load_model(c.inputs / "missing_key"), ValueError,
                         "spec is missing the key(s) in_channels", 0),
    "load_no_sha256": (lambda c: rl.models.load_model(c.inputs / "no_sha"), ValueError, "records no sha256", 0),
    "load_foreign_export": (lambda c: rl.models.load_model(c.inputs / "foreign"), ValueError,
                            "holds model.safetensors but no model.json", 0),
    "load_missing_dir": (lambda c: rl.models.load_model(c.inputs / "nowhere"), FileNotFoundError, "no checkpoint", 0),
    # ---- rl.data.load_dataset
    "data_unknown_name": (lambda c: rl.data.load_dataset("cifar11"), ValueError, "unknown dataset 'cifar11'", 0),
    "data_none_name": (lambda c: rl.data.load_dataset(None), ValueError, "unknown dataset None", 0),
    "data_bad_split": (lambda c: rl.data.load_dataset("digits", "val"), ValueError, "split must be one of", 0),
    "data_zero_limit": (lambda c: rl.data.load_dataset("digits", limit=0), ValueError, "limit must be a positive", 0),
    "data_str_limit": (lambda c: rl.data.load_dataset("digits", limit="5"), ValueError, "limit must be a positive", 0),
    "data_zero_size": (lambda c: rl.data.load_dataset("digits", size=0), ValueError, "size must be a positive", 0),
    "data_negative_channels": (lambda c: rl.data.load_dataset("digits", channels=-1), ValueError,
                               "channels must be a positive", 0),
    "data_two_channels": (lambda c: rl.data.load_dataset("digits", channels=2), ValueError,
                          "channels: only gray → 3 channels", 0),
    "data_missing_dir": (lambda c: rl.data.load_dataset("cifar10", data_dir=c.inputs / "nowhere", download=False),
                         DataNotFoundError, "cifar-10-batches-py", 0),
    "data_planted_pickle": (lambda c: rl.data.load_dataset("cifar10", data_dir=c.inputs / "cifar", download=False),
                            ValueError, "test_batch is not a plain CIFAR batch", 0),
    "data_missing_imagefolder": (lambda c: rl.data.load_dataset(f"imagefolder:{c.inputs / 'nowhere'}"),
                                 DataNotFoundError, "imagefolder: no class folders found", 0),
    "loader_zero_batch_size": (lambda c: rl.data.make_loader(rl.data.load_dataset("digits"), 0), ValueError,
                               "batch_size must be a positive integer", 0),
    # ---- rl.eval.accuracy
    "accuracy_empty": (lambda c: rl.eval.accuracy(c.model, c.x[:0], c.y[:0]), ValueError,
                       "accuracy needs at least one sample: x", 0),
    "accuracy_length_mismatch": (lambda c: rl.eval.accuracy(c.model, c.x, c.y[:2]), ValueError,
                                 "x and y must hold the same number", 0),
    # ---- DAG (ch. 2)
    "dag_negative_gamma": (lambda c: rl.attacks.dag_segmentation(c.fcn, torch.rand(1, 3, 16, 16), gamma=-1),
                           ValueError, "gamma must be > 0", 0),
    "dag_zero_gamma": (lambda c: rl.attacks.dag_segmentation(c.fcn, torch.rand(1, 3, 16, 16), gamma=0), ValueError,
                       "gamma must be > 0", 0),
    "dag_nan_gamma": (lambda c: rl.attacks.dag_segmentation(c.fcn, torch.rand(1, 3, 16, 16), gamma=math.nan),
                      ValueError, "gamma must be finite", 0),
    "dag_str_gamma": (lambda c: rl.attacks.dag_segmentation(c.fcn, torch.rand(1, 3, 16, 16), gamma="0.5"), TypeError,
                      "gamma must be a number", 0),
    "dag_float64": (lambda c: rl.attacks.dag_segmentation(c.fcn, torch.rand(1, 3, 16, 16, dtype=torch.float64)),
                    TypeError, "got torch.float64 (convert them with .float())", 0),
    "dag_stop_fraction": (lambda c: rl.attacks.dag_segmentation(c.fcn, torch.rand(1, 3, 16, 16), stop_fraction=1.5),
                          ValueError, "stop_fraction must be in [0, 1)", 0),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input(case, ctx, tmp_path):
    call, exc, fragment, calls = CASES[case]
    before = _snapshot(tmp_path, ctx.inputs)
    with pytest.raises(exc) as err:
        call(ctx)
    assert fragment in str(err.value), f"{fragment!r} not in {str(err.value)!r}"
    assert ctx.model.calls + ctx.fcn.calls <= calls
    assert _snapshot(tmp_path, ctx.inputs) == before  # nothing written, nothing changed
    assert not (ctx.inputs / "marker").exists()


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


def test_good_input_passes_the_same_checks(ctx):
    """The table's baseline: the same calls with good values work (so each case fails for its one bad value)."""
    assert pgd().run(ctx.model, ctx.x, ctx.y).x_adv.shape == ctx.x.shape
    assert channel_mismatch(ctx.model, ctx.x) is None
    assert channel_mismatch(nn.Linear(2, 2), ctx.x) is None  # no convolution: nothing to compare
    assert 0.0 <= rl.eval.accuracy(ctx.model, ctx.x, ctx.y) <= 1.0
    assert len(rl.data.load_dataset("digits", limit=5, size=4, channels=3)) == 5
    res = rl.attacks.dag_segmentation(ctx.fcn, torch.rand(1, 3, 16, 16), gamma=0.5 / 255, max_iter=1)
    assert res.perturbation.shape == (1, 3, 16, 16)
    assert np.isfinite(res.perturbation.numpy()).all()
