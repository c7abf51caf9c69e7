"""The hold-out protocol (Table 3.3) and the NIPS 2017 protocol (§3.4.5)."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.eval import holdout_evaluation, nips2017_attack, run_nips2017


@pytest.fixture(scope="module")
def third_model():
    from tests.conftest import train_digits_cnn

    return train_digits_cnn(seed=2, width=8)


def test_holdout_white_box_beats_black_box(trained_model, second_model, third_model, digits):
    x, y = digits
    loader = [(x[:128], y[:128]), (x[128:256], y[128:256])]
    models = {"a": trained_model, "b": second_model, "c": third_model}
    res = holdout_evaluation(lambda: rl.attacks.create("ifgsm", eps=32 / 255), models, loader)
    assert set(res) == {"-a", "-b", "-c"}
    for row in res.values():
        assert row["n"] > 200
        assert row["ensemble"] > row["holdout"] > 0.05  # white-box above black-box, some transfer
    # Counting only images all models get right matches a manual computation.
    n = 0
    for xb, yb in loader:
        keep = torch.ones_like(yb, dtype=torch.bool)
        for m in models.values():
            keep &= m(xb).argmax(1) == yb
        n += int(keep.sum())
    assert res["-a"]["n"] == n


def test_holdout_needs_two_models(trained_model, digits):
    with pytest.raises(ValueError, match="at least 2 models"):
        holdout_evaluation(rl.attacks.create("fgsm"), {"a": trained_model}, [digits])


def test_nips2017_settings():
    atk = nips2017_attack("m-di2-fgsm", 12 / 255)
    assert (atk.steps, atk.mu, atk.p) == (10, 1.0, 0.4)
    assert atk.step_size == pytest.approx(1.2 / 255)
    assert nips2017_attack("fgsm", 4 / 255).steps == 1
    with pytest.raises(ValueError, match="no ε budget"):
        nips2017_attack("cw", 4 / 255)


def test_run_nips2017_draws_eps_per_batch(trained_model, second_model, digits):
    x, y = digits
    loader = [(x[i: i + 40], y[i: i + 40]) for i in range(0, 360, 40)]
    res = run_nips2017("mifgsm", trained_model, loader, {"white": trained_model, "black": second_model}, seed=1)
    assert len(res["eps_255_per_batch"]) == 9 and set(res["eps_255_per_batch"]) <= {4, 8, 12, 16}
    assert len(set(res["eps_255_per_batch"])) > 1
    assert res["n"] == 360
    assert res["success"]["white"] >= res["success"]["black"]
    again = run_nips2017("mifgsm", trained_model, loader, {"white": trained_model}, seed=1)
    assert again["eps_255_per_batch"] == res["eps_255_per_batch"]
