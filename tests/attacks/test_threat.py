"""ε-ball and pixel range for every registered attack, in both norms."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.attacks import L2Ball, LinfBall, create_threat

GRADIENT_FAMILY = [n for n in rl.attacks.names() if n not in ("cw", "dcw")]
FAST = {"cw": {"steps": 5, "binary_search_steps": 2}, "dcw": {"steps": 5, "binary_search_steps": 2}}


@pytest.mark.parametrize("name", GRADIENT_FAMILY)
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("linf", 32 / 255), ("l2", 0.5), ("l2", 2.0)])
def test_ball_and_range(trained_model, batch, name, norm, eps):
    x, y = batch
    atk = rl.attacks.create(name, eps=eps, norm=norm, seed=0)
    res = atk.run(trained_model, x, y)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    delta = (res.x_adv - x).flatten(1)
    norms = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    if name == "gd":  # no projection (§7.5.4): bounded by the random start plus N steps
        bound = eps + atk.steps * atk.step_size
        assert float(norms.max()) <= bound + 1e-5
        assert float(norms.max()) > eps  # it does leave the ball
    else:
        assert float(norms.max()) <= eps + 1e-6
    assert torch.allclose(res.linf if norm == "linf" else res.l2, norms)
    assert not (res.x_adv == x).all()


@pytest.mark.parametrize("name", ["cw", "dcw"])
def test_cw_range(trained_model, batch, name):
    x, y = batch
    res = rl.attacks.create(name, seed=0, **FAST[name]).run(trained_model, x, y)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.isfinite(res.l2).all()


def test_zero_eps_is_identity(trained_model, batch):
    x, y = batch
    for name in GRADIENT_FAMILY:
        if name == "gd":
            continue
        assert torch.equal(rl.attacks.create(name, eps=0.0, seed=0)(trained_model, x, y), x), name


@pytest.mark.parametrize("threat", [LinfBall(0.1), L2Ball(1.5)])
def test_random_delta_inside_ball_and_projection(threat):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 8, 8, generator=g)
    d = threat.random_delta(x, g)
    assert float(threat.norm(d).max()) <= threat.eps + 1e-6
    far = x + 10 * torch.randn(x.shape, generator=g)
    p = threat.project(far, x, threat.box(x))
    assert float(threat.norm(p - x).max()) <= threat.eps + 1e-5
    assert p.min() >= 0 and p.max() <= 1
    # A point already inside stays exactly where it is.
    inside = threat.project(x + d, x, threat.box(x)).clamp(0, 1)
    again = threat.project(inside.clone(), x, threat.box(x))
    assert torch.allclose(again, inside, atol=1e-6)


def test_l2_random_start_fills_the_ball():
    """Radii u^(1/d)·ε are uniform in volume: most mass near the surface."""
    g = torch.Generator().manual_seed(0)
    x = torch.full((2000, 1, 2, 2), 0.5)
    r = L2Ball(0.2).norm(L2Ball(0.2).random_delta(x, g)) / 0.2
    # For d = 4, P(r <= t) = t^4.
    assert abs(float((r <= 0.5).float().mean()) - 0.5**4) < 0.02


def test_create_threat_names():
    assert isinstance(create_threat("Linf", 0.1), LinfBall)
    assert isinstance(create_threat("l2", 0.1), L2Ball)
    with pytest.raises(ValueError, match="norm must be one of"):
        create_threat("l1", 0.1)
