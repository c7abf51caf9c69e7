"""White-box robustness curves: one run serves every point, exactly."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.eval.whitebox import pgd_for_curve, robustness_curve, worst_case

EPS, ALPHA = 0.15, 0.01
STEPS = [0, 1, 5, 10, 20, 40]


@pytest.mark.parametrize("targeted", [False, True])
def test_curve_is_non_increasing_and_equals_separate_runs(trained_model, digits, targeted):
    x, y = digits[0][:200], digits[1][:200]
    curve = robustness_curve(trained_model, [(x[:100], y[:100]), (x[100:], y[100:])], steps=STEPS, eps=EPS,
                             step_size=ALPHA, targeted=targeted, seed=3)
    acc = curve.accuracy
    assert all(a >= b for a, b in zip(acc, acc[1:])), acc
    assert acc[-1] < acc[0] - 0.3  # the attack works
    for n in (5, 20, 40):  # each point equals a separate PGD-n run with the same seed
        sep = []
        for xb, yb in ((x[:100], y[:100]), (x[100:], y[100:])):
            res = pgd_for_curve(EPS, ALPHA, n, targeted=targeted, seed=3).run(trained_model, xb, yb)
            sep.append(~res.success)
        assert float(torch.cat(sep).float().mean()) == pytest.approx(acc[STEPS.index(n)])
    assert curve.iterations_run < len(y) * max(STEPS)  # early stop paid off


def test_restarts_and_worst_case_only_lower_accuracy(trained_model, digits):
    x, y = digits[0][:120], digits[1][:120]
    one = robustness_curve(trained_model, [(x, y)], steps=[5, 10], eps=0.08, step_size=0.01, seed=0)
    three = robustness_curve(trained_model, [(x, y)], steps=[5, 10], eps=0.08, step_size=0.01, restarts=3, seed=0)
    tgt = robustness_curve(trained_model, [(x, y)], steps=[5, 10], eps=0.08, step_size=0.01, targeted=True, seed=0)
    assert all(b <= a for a, b in zip(one.accuracy, three.accuracy))
    worst = worst_case([one, tgt])
    assert all(w <= min(a, b) for w, a, b in zip(worst.accuracy, one.accuracy, tgt.accuracy))
    assert torch.equal(worst.broken_at, torch.minimum(one.broken_at, tgt.broken_at))


def test_step_zero_is_clean_accuracy_without_random_start(trained_model, digits):
    x, y = digits
    curve = robustness_curve(trained_model, [(x, y)], steps=[0], eps=EPS, step_size=ALPHA, random_start=False)
    assert curve.accuracy[0] == pytest.approx(rl.eval.accuracy(trained_model, x, y))


def test_bad_arguments(trained_model, digits):
    with pytest.raises(ValueError, match="steps"):
        robustness_curve(trained_model, [digits], steps=[-1])
    with pytest.raises(ValueError, match="restarts"):
        robustness_curve(trained_model, [digits], steps=[1], restarts=0)
    with pytest.raises(ValueError, match="stop_on"):
        rl.attacks.create("pgd", stop_on="never")
