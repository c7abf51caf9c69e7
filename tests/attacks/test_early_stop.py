"""Per-sample early stopping never changes the outcome for samples that remain."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl

CASES = [
    ("pgd", {"eps": 24 / 255, "steps": 10, "clean_init_prob": 0.0}),
    ("mdi2fgsm", {"eps": 24 / 255, "steps": 10}),  # per-sample diversity draws and momentum
    ("pgd", {"eps": 48 / 255, "steps": 10, "targeted": True}),
    ("ifgsm", {"eps": 0.8, "norm": "l2", "steps": 10}),
]


@pytest.mark.parametrize("name,kw", CASES)
def test_early_stop_keeps_remaining_trajectories(trained_model, digits, name, kw):
    x, y = digits
    fixed = rl.attacks.create(name, seed=5, **kw).run(trained_model, x, y)
    early = rl.attacks.create(name, seed=5, early_stop=True, **kw).run(trained_model, x, y)
    n = kw["steps"]
    remained = early.steps == n
    retired = ~remained
    assert retired.any() and remained.any()
    # Samples never retired followed the same trajectory, to float round-off
    # (batched convolutions may sum in another order for a smaller batch).
    assert torch.allclose(early.x_adv[remained], fixed.x_adv[remained], atol=1e-5)
    assert (early.success[remained] == fixed.success[remained]).all()
    # Early stop keeps every success of the fixed-step attack (and may add ones
    # the fixed-step attack reached and then lost).
    assert (early.success | ~fixed.success).all()
    # Retired samples did meet the goal, at the iterate returned.
    assert early.success[retired].all()
    pred = trained_model(early.x_adv).argmax(1)
    goal = pred == early.target if early.target is not None else pred != y
    assert (goal == early.success).all()
    assert (early.steps[retired] < n).all()
    # Targets drawn at random are the same with and without early stop.
    if early.target is not None:
        assert torch.equal(early.target, fixed.target)


def test_early_stop_saves_iterations(trained_model, digits):
    x, y = digits
    res = rl.attacks.create("pgd", eps=64 / 255, steps=20, early_stop=True, seed=0).run(trained_model, x, y)
    assert res.success.float().mean() > 0.95
    assert res.steps.float().mean() < 10


def test_already_misclassified_leave_at_step_zero(trained_model, batch):
    x, y = batch
    wrong = (y + 1) % 10
    res = rl.attacks.create("ifgsm", eps=16 / 255, early_stop=True).run(trained_model, x, wrong)
    correct_for_wrong = trained_model(x).argmax(1) != wrong
    assert (res.steps[correct_for_wrong] == 0).all()
    assert torch.equal(res.x_adv[correct_for_wrong], x[correct_for_wrong])
