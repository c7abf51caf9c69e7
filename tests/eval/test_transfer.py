"""Transfer matrices (Table 3.1) and the all-or-nothing criterion (Table 4.2)."""
from __future__ import annotations

import pytest

import robustlab as rl
from robustlab.eval.transfer import adversarial_sets, all_or_nothing, transfer_matrix


def test_ifgsm_transfer_matrix_diagonal_dominates(trained_model, second_model, digits):
    x, y = digits
    models = {"A": trained_model, "B": second_model}
    attacks = {"ifgsm": lambda: rl.attacks.create("ifgsm", eps=0.1, steps=10, step_size=0.02),
               "mdi2fgsm": lambda: rl.attacks.create("mdi2fgsm", eps=0.1, steps=10, step_size=0.02, seed=0)}
    res = transfer_matrix(attacks, models, models, [(x[:150], y[:150]), (x[150:300], y[150:300])])
    s = res["success"]["ifgsm"]
    assert s["A"]["A"] >= s["A"]["B"] and s["B"]["B"] >= s["B"]["A"]  # white-box ≥ black-box
    assert s["A"]["A"] > 0.5 and 0 < res["n"] <= 300
    assert set(res["success"]["mdi2fgsm"]["B"]) == {"A", "B"}


def test_all_or_nothing_is_at_most_the_weakest_attacker(trained_model, second_model, digits):
    x, y = digits
    loader = [(x[:200], y[:200])]
    sets = adversarial_sets({"fgsm@B": (rl.attacks.create("fgsm", eps=0.15), second_model),
                             "ifgsm@B": (rl.attacks.create("ifgsm", eps=0.15), second_model),
                             "noise": (rl.attacks.create("pgd", eps=0.15, steps=0, seed=0), second_model)},
                            loader)
    res = all_or_nothing(trained_model, sets)
    assert res["all_or_nothing"] <= min(res["per_attacker"].values()) and res["n"] == 200
    assert res["all_or_nothing"] < max(res["per_attacker"].values())
    with pytest.raises(ValueError, match="other images"):
        all_or_nothing(trained_model, {"a": loader, "b": [(x[:100], y[:100])]})
