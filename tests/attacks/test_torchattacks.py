"""Equality with torchattacks' FGSM, BIM and MIFGSM on the same model.

No randomness is involved. torchattacks averages the cross-entropy over the
batch while robustlab sums it (so a sample's gradient never depends on the
others); with a batch of 64 the two gradients differ by the exact factor 2⁻⁶,
so signs, and hence the attacks, agree bit for bit.
"""
from __future__ import annotations

import pytest
import torch

import robustlab as rl

torchattacks = pytest.importorskip("torchattacks")

EPS, ALPHA, STEPS = 24 / 255, 2 / 255, 10


def test_fgsm_equals_torchattacks(trained_model, batch):
    x, y = batch
    ours = rl.attacks.create("fgsm", eps=EPS)(trained_model, x, y)
    theirs = torchattacks.FGSM(trained_model, eps=EPS)(x, y)
    assert torch.equal(ours, theirs)


def test_bim_equals_torchattacks_ifgsm(trained_model, batch):
    x, y = batch
    ours = rl.attacks.create("ifgsm", eps=EPS, step_size=ALPHA, steps=STEPS)(trained_model, x, y)
    theirs = torchattacks.BIM(trained_model, eps=EPS, alpha=ALPHA, steps=STEPS)(x, y)
    assert torch.equal(ours, theirs)


def test_mifgsm_equals_torchattacks(trained_model, batch):
    x, y = batch
    ours = rl.attacks.create("mifgsm", eps=EPS, step_size=ALPHA, steps=STEPS, mu=1.0)(trained_model, x, y)
    theirs = torchattacks.MIFGSM(trained_model, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0)(x, y)
    # torchattacks projects as x + clamp(x_adv - x, ±ε), robustlab clamps x_adv to
    # [x − ε, x + ε] ∩ [0, 1] directly; the two differ by float round-off only.
    assert (ours - theirs).abs().max() <= 1e-6
    assert (ours != theirs).float().mean() < 0.01


def test_targeted_mifgsm_equals_torchattacks(trained_model, batch):
    x, y = batch
    target = (y + 3) % 10
    ours = rl.attacks.create("mifgsm", eps=EPS, step_size=ALPHA, steps=STEPS, targeted=True)
    theirs = torchattacks.MIFGSM(trained_model, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0)
    theirs.set_mode_targeted_by_function(lambda images, labels: (labels + 3) % 10)
    a, b = ours(trained_model, x, y, target=target), theirs(x, y)
    assert (a - b).abs().max() <= 1e-6
