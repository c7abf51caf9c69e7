"""Bad input gets a clear error naming the argument, before any work starts."""
from __future__ import annotations

import math

import pytest
import torch

import robustlab as rl


@pytest.fixture()
def atk():
    return rl.attacks.create("pgd", eps=8 / 255, steps=2)


def test_nan_pixels(atk, trained_model, batch):
    x, y = batch
    x = x.clone()
    x[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"x contains 1 NaN"):
        atk(trained_model, x, y)


def test_pixels_outside_unit_range(atk, trained_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\].*max 255"):
        atk(trained_model, x * 255, y)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\].*min -0.5"):
        atk(trained_model, x - 0.5, y)


def test_wrong_rank_and_dtype(atk, trained_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\) \(rank 4\); got rank 3"):
        atk(trained_model, x[0], y)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        atk(trained_model, (x * 255).to(torch.uint8), y)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        atk(trained_model, x.numpy(), y)
    with pytest.raises(ValueError, match="at least one image"):
        atk(trained_model, x[:0], y[:0])


def test_labels(atk, trained_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"y holds class index 10, out of range for a model with 10 classes"):
        atk(trained_model, x, torch.full_like(y, 10))
    with pytest.raises(ValueError, match="y must hold class indices >= 0"):
        atk(trained_model, x, torch.full_like(y, -1))
    with pytest.raises(ValueError, match=r"y must have shape \(64,\)"):
        atk(trained_model, x, y[:10])
    with pytest.raises(TypeError, match="y must hold integer class indices"):
        atk(trained_model, x, y.float())


def test_out_of_range_label_fails_before_any_work(trained_model, batch):
    """The label check runs on the first forward pass, before any gradient step."""
    x, y = batch
    calls = []
    trained_model.register_forward_hook(lambda *a: calls.append(1))
    hooks = trained_model._forward_hooks
    try:
        with pytest.raises(ValueError, match="out of range"):
            rl.attacks.create("ifgsm", steps=50)(trained_model, x, torch.full_like(y, 11))
        assert len(calls) == 1
    finally:
        hooks.clear()


def test_target_checks(trained_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="target was given but pgd is untargeted"):
        rl.attacks.create("pgd")(trained_model, x, y, target=y)
    with pytest.raises(ValueError, match="target holds class index 20"):
        rl.attacks.create("pgd", targeted=True)(trained_model, x, y, target=torch.full_like(y, 20))


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps must be >= 0"),
    ({"eps": float("nan")}, "eps must be finite"),
    ({"steps": -1}, "steps must be >= 0"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"step_size": 0.0}, "step_size must be > 0"),
    ({"mu": -1.0}, "mu must be >= 0"),
    ({"p": 2.0}, "p must be <= 1"),
    ({"clean_init_prob": -0.2}, "clean_init_prob must be >= 0"),
    ({"norm": "l1"}, "norm must be one of"),
    ({"loss": "hinge"}, "loss must be one of"),
    ({"seed": "0"}, "seed must be an int"),
    ({"eps": "8"}, "eps must be a number"),
    ({"autocast": "int8"}, "autocast must be 'bf16', 'fp16' or None"),
])
def test_bad_hyper_parameters(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rl.attacks.create("mdi2fgsm", **kwargs)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown attack 'deepfool'; known attacks: fgsm, ifgsm"):
        rl.attacks.create("deepfool")
    with pytest.raises(TypeError, match=r"pgd got unknown keyword\(s\) \['epsilon'\]"):
        rl.attacks.create("pgd", epsilon=0.1)


def test_not_a_model(batch):
    x, y = batch
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        rl.attacks.create("fgsm")(lambda v: v, x, y)


def test_non_logit_output(batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"model must return logits of shape \(N, num_classes\)"):
        rl.attacks.create("fgsm")(torch.nn.Identity(), x, y)
