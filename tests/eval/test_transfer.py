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


def test_the_dataset_level_evaluations_leave_the_callers_models_as_they_were(trained_model, second_model, digits):
    """robust_accuracy, transfer_matrix, holdout_evaluation, all_or_nothing and run_nips2017 put the user's models
    in eval mode for good and moved them to device="cpu" (a GPU model silently to the CPU); they now attack in
    the inference state and leave mode and device alone, and a model on another device than device= is refused."""
    import copy

    from robustlab.eval.holdout import holdout_evaluation
    from robustlab.eval.nips2017 import run_nips2017

    x, y = digits[0][:32], digits[1][:32]
    a, b = copy.deepcopy(trained_model).train(), copy.deepcopy(second_model).train()
    loader = [(x, y)]
    fgsm = rl.attacks.create("fgsm", eps=0.1)
    rl.eval.robust_accuracy(fgsm, a, loader)
    transfer_matrix({"fgsm": fgsm}, {"A": a}, {"B": b}, loader)
    holdout_evaluation(fgsm, {"A": a, "B": b}, loader)
    all_or_nothing(a, adversarial_sets({"fgsm@B": (fgsm, b)}, loader))
    run_nips2017("fgsm", a, loader, {"B": b})
    assert all(m.training for m in (*a.modules(), *b.modules()))
    with pytest.raises(ValueError, match=r"device='cuda' but a model is on cpu; move it first"):
        rl.eval.robust_accuracy(fgsm, a, loader, device="cuda")
