"""The relations of §3.3.4 as bit-for-bit equalities under a seed, and determinism."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.attacks import ifgsm_steps, pgd_step_size
from robustlab.units import from_255

EPS = 24 / 255


def run(name, model, x, y, **kw):
    return rl.attacks.create(name, eps=EPS, seed=0, **kw).run(model, x, y)


def test_p0_turns_di2_into_ifgsm(trained_model, batch):
    x, y = batch
    assert torch.equal(run("di2fgsm", trained_model, x, y, p=0.0).x_adv, run("ifgsm", trained_model, x, y).x_adv)


def test_p0_turns_mdi2_into_mi(trained_model, batch):
    x, y = batch
    assert torch.equal(run("mdi2fgsm", trained_model, x, y, p=0.0).x_adv, run("mifgsm", trained_model, x, y).x_adv)


def test_mu0_turns_mi_into_ifgsm(trained_model, batch):
    x, y = batch
    assert torch.equal(run("mifgsm", trained_model, x, y, mu=0.0).x_adv, run("ifgsm", trained_model, x, y).x_adv)


def test_mu0_turns_mdi2_into_di2(trained_model, batch):
    x, y = batch
    a = run("mdi2fgsm", trained_model, x, y, mu=0.0).x_adv
    b = run("di2fgsm", trained_model, x, y).x_adv
    assert torch.equal(a, b)


def test_n1_turns_ifgsm_into_fgsm(trained_model, batch):
    x, y = batch
    a = run("ifgsm", trained_model, x, y, steps=1, step_size=EPS).x_adv
    b = run("fgsm", trained_model, x, y).x_adv
    assert torch.equal(a, b)
    # FGSM is eq. (3.2) literally: X + ε·sign(∇) clipped to [0, 1].
    xr = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(trained_model(xr), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xr)
    assert torch.equal(b, (x + EPS * g.sign()).clamp(0, 1))


def test_momentum_update():
    """Eq. (3.4): g ← μ·g + ∇/‖∇‖₁; with μ = 0 a positive per-sample rescaling,
    so sign (L∞) and direction (L2) equal those of ∇ — why the loop may skip it."""
    from robustlab.attacks.iterative import momentum_update
    from robustlab.attacks.threat import L2Ball

    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(8, 3, 5, 5, generator=gen) * torch.logspace(-20, 3, 8).view(-1, 1, 1, 1)
    grad[0] = 0  # an all-zero gradient stays zero, no NaN
    g = torch.randn(8, 3, 5, 5, generator=gen)
    expected = 0.7 * g + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-38)
    assert torch.allclose(momentum_update(g.clone(), grad, 0.7), expected, rtol=1e-6)
    zero = momentum_update(torch.zeros_like(grad), grad, 0.0)
    assert torch.equal(zero.sign(), grad.sign())
    assert torch.isfinite(zero).all()
    assert torch.allclose(L2Ball(1.0).direction(zero), L2Ball(1.0).direction(grad), atol=1e-6)


def test_momentum_and_diversity_change_the_attack(trained_model, batch):
    """The identities above are not vacuous: μ and p do change the result."""
    x, y = batch
    base = run("ifgsm", trained_model, x, y).x_adv
    assert not torch.equal(run("mifgsm", trained_model, x, y).x_adv, base)
    assert not torch.equal(run("di2fgsm", trained_model, x, y).x_adv, base)


@pytest.mark.parametrize("name", ["pgd", "di2fgsm", "mdi2fgsm", "gd", "dcw"])
def test_seeded_attacks_are_deterministic(trained_model, batch, name):
    x, y = batch
    kw = {"eps": EPS}
    if name == "dcw":
        kw = {"steps": 30, "binary_search_steps": 1, "initial_const": 10.0, "confidence": 0.0, "abort_early": False}
    a = rl.attacks.create(name, seed=3, **kw)(trained_model, x, y)
    b = rl.attacks.create(name, seed=3, **kw)(trained_model, x, y)
    c = rl.attacks.create(name, seed=4, **kw)(trained_model, x, y)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_unseeded_attacks_follow_the_global_seed(trained_model, batch):
    x, y = batch
    torch.manual_seed(7)
    a = rl.attacks.create("pgd", eps=EPS)(trained_model, x, y)
    torch.manual_seed(7)
    b = rl.attacks.create("pgd", eps=EPS)(trained_model, x, y)
    assert torch.equal(a, b)


def test_thesis_step_rules():
    # §3.4.1: N = min(ε + 4, 1.25ε), α = 1 (0–255 units).
    assert ifgsm_steps(from_255(15)) == 18
    assert ifgsm_steps(from_255(16)) == 20
    assert ifgsm_steps(from_255(4)) == 5
    assert ifgsm_steps(from_255(0.5)) == 1
    atk = rl.attacks.create("mdi2fgsm")
    assert atk.eps == from_255(15) and atk.steps == 18 and atk.step_size == from_255(1)
    assert atk.mu == 1.0 and atk.p == 0.5
    # §4.5: training PGD ε = 16, α = 1, N = 30, 20% clean starts; PGD-10 at ε = 16 steps by ε/10.
    pgd = rl.attacks.create("pgd_train")
    assert (pgd.eps, pgd.step_size, pgd.steps, pgd.clean_init_prob) == (from_255(16), from_255(1), 30, 0.2)
    assert pgd.random_start and not pgd.targeted
    assert pgd_step_size(from_255(16), 10) == pytest.approx(from_255(1.6))
    assert rl.attacks.create("pgd_train", eps=16 / 255, steps=10).step_size == pytest.approx(16 / 255 / 10)
    # The evaluation PGD: a random start always, no clean-start coin, α = 2.5·ε/N.
    ev = rl.attacks.create("pgd")
    assert (ev.eps, ev.steps, ev.clean_init_prob) == (from_255(16), 20, 0.0) and ev.random_start
    assert ev.step_size == pytest.approx(2.5 * from_255(16) / 20)
    assert rl.attacks.create("pgd", eps=8 / 255, steps=10).step_size == pytest.approx(2.5 * 8 / 255 / 10)
    # §7.5.4: GD ε = 4, N = 5, α = 1, no projection.
    gd = rl.attacks.create("gd")
    assert (gd.eps, gd.steps, gd.step_size, gd.project) == (from_255(4), 5, from_255(1), False)
    # §3.4.2: C&W 250 iterations, lr 0.01, confidence 10.
    cw = rl.attacks.create("cw")
    assert (cw.steps, cw.lr, cw.confidence) == (250, 0.01, 10.0)
    assert rl.attacks.create("dcw").diversity.p == 0.5


def test_registry_names_and_aliases():
    assert rl.attacks.names() == ["fgsm", "ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm", "pgd", "pgd_train", "gd", "cw",
                                  "dcw"]
    assert rl.attacks.create("M-DI²-FGSM").name == "mdi2fgsm"
    assert rl.attacks.create("m-di2-fgsm").name == "mdi2fgsm"
    assert rl.attacks.create("I-FGSM").name == "ifgsm"
    assert rl.attacks.create("D-C&W").name == "dcw"
    assert rl.attacks.canonical_name("PGD-train") == rl.attacks.canonical_name("pgd_train") == "pgd_train"
