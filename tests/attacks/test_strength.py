"""Attacks do what they claim on a trained model."""
from __future__ import annotations

import robustlab as rl
from robustlab.eval import accuracy


def test_accuracy_falls_with_eps_and_steps(trained_model, digits):
    x, y = digits
    clean = accuracy(trained_model, x, y)
    assert clean > 0.9
    by_eps = [accuracy(trained_model, rl.attacks.create("pgd", eps=e / 255, steps=10, seed=0, clean_init_prob=0)(
        trained_model, x, y), y) for e in (8, 24, 48)]
    assert clean >= by_eps[0] > by_eps[1] > by_eps[2]
    assert by_eps[2] < 0.2
    by_steps = [accuracy(trained_model, rl.attacks.create("ifgsm", eps=32 / 255, step_size=4 / 255, steps=n)(
        trained_model, x, y), y) for n in (1, 3, 10)]
    assert by_steps[0] > by_steps[1] >= by_steps[2]


def test_iterative_beats_single_step(trained_model, digits):
    x, y = digits
    fgsm = accuracy(trained_model, rl.attacks.create("fgsm", eps=32 / 255)(trained_model, x, y), y)
    ifgsm = accuracy(trained_model, rl.attacks.create("ifgsm", eps=32 / 255)(trained_model, x, y), y)
    assert ifgsm < fgsm


def test_targeted_attacks_reach_the_target(trained_model, digits):
    x, y = digits
    for name in ("pgd", "mifgsm"):
        atk = rl.attacks.create(name, eps=64 / 255, steps=40, step_size=4 / 255, targeted=True, seed=0)
        res = atk.run(trained_model, x, y)
        assert (res.target != y).all()  # a wrong class, drawn per sample
        assert res.success.float().mean() > 0.9, name
        pred = trained_model(res.x_adv).argmax(1)
        assert ((pred == res.target) == res.success).all()


def test_random_targets_cover_every_wrong_class(trained_model, digits):
    x, y = digits
    res = rl.attacks.create("pgd", eps=8 / 255, steps=1, targeted=True, seed=0).run(trained_model, x, y)
    shift = (res.target - y) % 10
    assert set(shift.tolist()) == set(range(1, 10))


def test_explicit_target(trained_model, batch):
    x, y = batch
    target = (y + 1) % 10
    res = rl.attacks.create("pgd", eps=64 / 255, steps=40, step_size=4 / 255, targeted=True, seed=0).run(
        trained_model, x, y, target=target)
    assert (res.target == target).all() and res.success.float().mean() > 0.9


def test_cw_margin_loss_and_smooth_grad_attack(trained_model, digits):
    x, y = digits
    clean = accuracy(trained_model, x, y)
    for kw in ({"loss": "cw"}, {"smooth_grad": 10.0}):
        adv = rl.attacks.create("pgd", eps=32 / 255, steps=10, seed=0, **kw)(trained_model, x, y)
        assert accuracy(trained_model, adv, y) < clean - 0.3, kw


def test_attack_own_prediction_when_no_label(trained_model, batch):
    """Without y the model's clean predictions are attacked (the DI² release)."""
    x, _ = batch
    pred = trained_model(x).argmax(1)
    atk = rl.attacks.create("ifgsm", eps=32 / 255)
    res = atk.run(trained_model, x)
    assert (res.labels == pred).all()
    assert (atk(trained_model, x) == atk(trained_model, x, pred)).all()


def test_cw_finds_small_perturbations(trained_model, batch):
    x, y = batch
    res = rl.attacks.create("cw", steps=100, confidence=0.0, binary_search_steps=4, initial_const=1.0).run(
        trained_model, x, y)
    assert res.success.float().mean() > 0.9
    pgd = rl.attacks.create("pgd", eps=64 / 255, steps=20, norm="linf", seed=0).run(trained_model, x, y)
    # A minimum-norm attack needs much less L2 than a full L∞ budget.
    assert res.l2[res.success].mean() < 0.5 * pgd.l2.mean()
    pred = trained_model(res.x_adv).argmax(1)
    assert ((pred != y) == res.success).all()


def test_cw_confidence_margin(trained_model, batch):
    x, y = batch
    kappa = 5.0
    res = rl.attacks.create("cw", steps=100, confidence=kappa, binary_search_steps=4, initial_const=1.0).run(
        trained_model, x, y)
    logits = trained_model(res.x_adv)
    margin = rl.attacks.cw_margin(logits, y)
    # A sample counted a success holds at least the κ margin (the C&W criterion).
    assert res.success.any()
    assert (margin[res.success] >= kappa - 1e-4).all()
    # Samples not found keep the clean image.
    assert (res.x_adv[~res.success] == x[~res.success]).all()


def test_targeted_cw(trained_model, batch):
    """Targeted C&W in 100 iterations: the tanh box saturates the digits' black
    background (w ≈ ±7), so some targets stay out of reach at this budget."""
    x, y = batch
    target = (y + 5) % 10
    res = rl.attacks.create("cw", steps=100, confidence=0.0, binary_search_steps=4, initial_const=1.0,
                            targeted=True).run(trained_model, x, y, target=target)
    assert res.success.float().mean() > 0.6
    assert (trained_model(res.x_adv).argmax(1)[res.success] == target[res.success]).all()


def test_mixed_precision_forward(trained_model, digits):
    """autocast="bf16" (meant for GPUs; CPU autocast runs the same path)."""
    x, y = digits
    atk = rl.attacks.create("pgd", eps=32 / 255, steps=10, seed=0, autocast="bf16")
    adv = atk(trained_model, x, y)
    assert adv.dtype == x.dtype and (adv - x).abs().max() <= 32 / 255 + 1e-6
    full = rl.attacks.create("pgd", eps=32 / 255, steps=10, seed=0)(trained_model, x, y)
    assert abs(accuracy(trained_model, adv, y) - accuracy(trained_model, full, y)) < 0.1
    assert accuracy(trained_model, adv, y) < accuracy(trained_model, x, y) - 0.3
