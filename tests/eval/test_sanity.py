"""The gradient-masking checklist flags a masked model and passes a normal one."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.eval.sanity import random_search, run_sanity_checks, sanity_check


class Quantized(nn.Module):
    """A non-differentiable front end (4-level quantization): its gradient is
    zero almost everywhere, the textbook case of masked gradients."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(torch.round(x * 4) / 4)


def test_normal_model_passes(trained_model, digits):
    x, y = digits
    report = run_sanity_checks(trained_model, [(x[:200], y[:200])], eps=0.1, steps=10)
    assert report.warnings == [], [str(w) for w in report.warnings]
    m = report.measurements
    assert m["unbounded"] <= 0.05 and m["loss_end"] > m["loss_start"] and m["pgd"] < m["clean"]


def test_masked_model_is_flagged(trained_model, digits):
    x, y = digits
    masked = Quantized(trained_model).eval()
    warnings = sanity_check(masked, [(x[:200], y[:200])], eps=0.1, steps=10)
    checks = {w.check for w in warnings}
    assert {"unbounded", "loss_increases"} <= checks, [str(w) for w in warnings]


def test_random_search_stays_in_the_ball_and_breaks_a_model(trained_model, digits):
    x, y = digits[0][:100], digits[1][:100]
    xa = random_search(trained_model, x, y, eps=0.2, queries=100)
    assert (xa - x).abs().max() <= 0.2 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        assert (trained_model(xa).argmax(1) == y).float().mean() < (trained_model(x).argmax(1) == y).float().mean()


def test_surrogate_transfer_is_measured(trained_model, second_model, digits):
    report = run_sanity_checks(trained_model, [digits], eps=0.1, steps=5, surrogate=second_model, limit=100,
                               queries=20)
    assert 0 <= report.measurements["transfer"] <= 1


def test_bad_eps(trained_model, digits):
    with pytest.raises(ValueError, match="eps"):
        sanity_check(trained_model, [digits], eps=0)
