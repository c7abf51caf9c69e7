"""Eq. (3.8): weighted logit fusion."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.attacks import NIPS2017_WEIGHTS, Ensemble


def test_fuses_logits_with_weights(trained_model, second_model, batch):
    x, _ = batch
    ens = Ensemble([trained_model, second_model], weights=[0.25, 0.75])
    with torch.no_grad():
        expected = 0.25 * trained_model(x) + 0.75 * second_model(x)
        assert torch.allclose(ens(x), expected, atol=1e-6)
        assert torch.allclose(Ensemble([trained_model, second_model])(x),
                              0.5 * trained_model(x) + 0.5 * second_model(x), atol=1e-6)


def test_nips2017_weights_sum_to_one():
    assert len(NIPS2017_WEIGHTS) == 8 and sum(NIPS2017_WEIGHTS) == pytest.approx(1.0)
    assert NIPS2017_WEIGHTS[-1] == pytest.approx(0.25 / 7.25)


def test_attacking_the_ensemble_fools_both_members(trained_model, second_model, digits):
    x, y = digits
    ens = Ensemble([trained_model, second_model])
    adv = rl.attacks.create("ifgsm", eps=48 / 255, seed=0)(ens, x, y)
    for m in (ens, trained_model, second_model):
        assert rl.eval.accuracy(m, adv, y) < 0.2


@pytest.mark.parametrize("weights,match", [
    ([0.5], "one entry per model"),
    ([-0.5, 1.5], ">= 0"),
    ([0.5, 0.6], "sum to 1"),
    ([float("nan"), 1.0], "finite"),
])
def test_bad_weights(trained_model, second_model, weights, match):
    with pytest.raises(ValueError, match=match):
        Ensemble([trained_model, second_model], weights=weights)


def test_members_must_agree(trained_model):
    other = rl.models.create_model("smallcnn", 7, in_channels=1, width=4)
    with pytest.raises(ValueError, match="disagree on the logits shape"):
        Ensemble([trained_model, other])(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="non-empty"):
        Ensemble([])
