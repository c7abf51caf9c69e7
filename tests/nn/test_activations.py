"""ReLU forward with the parametric-softplus derivative backward (§5.3.2, eq. 5.3)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab as rl
from robustlab.nn import ReLUSoftplusBackward, relu_softplus_backward, smooth_relu_backward


@pytest.mark.parametrize("alpha", [1.0, 10.0])
def test_forward_is_relu_backward_is_sigmoid(alpha):
    x = torch.linspace(-2, 2, 101, dtype=torch.float64, requires_grad=True)
    y = relu_softplus_backward(x, alpha)
    assert torch.equal(y, torch.relu(x))
    (g,) = torch.autograd.grad(y.sum(), x)
    # Eq. (5.3): d/dx (1/α) log(1 + e^{αx}) = σ(αx), checked against softplus itself.
    xs = x.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(F.softplus(xs, beta=alpha).sum(), xs)
    assert torch.allclose(g, ref)
    assert torch.allclose(g, torch.sigmoid(alpha * x))


def test_module_and_function_agree():
    x = torch.randn(4, 5, requires_grad=True)
    m = ReLUSoftplusBackward(10.0)
    (a,) = torch.autograd.grad(m(x).sum(), x)
    (b,) = torch.autograd.grad(relu_softplus_backward(x, 10.0).sum(), x)
    assert torch.equal(a, b)


def test_context_changes_only_the_backward_of_any_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

    class Functional(nn.Module):  # F.relu and Tensor.relu_ calls are caught too
        def forward(self, x):
            h = model[0](x)
            h = F.relu(h)
            h = model[2](h)
            h.relu_()
            return model[4](h)

    x = torch.randn(5, 6, requires_grad=True)
    for net in (model, Functional()):
        y0 = net(x)
        (g0,) = torch.autograd.grad(y0.sum(), x)
        with smooth_relu_backward(10.0):
            y1 = net(x)
            (g1,) = torch.autograd.grad(y1.sum(), x)
        assert torch.equal(y0, y1)
        assert not torch.allclose(g0, g1)
        # Reference: the straight-through form relu(h) + softplus(h) − stop_grad(softplus(h)).
        def ref(v):
            h = model[0](v)
            h = torch.relu(h).detach() + F.softplus(h, beta=10) - F.softplus(h, beta=10).detach()
            h = model[2](h)
            h = torch.relu(h).detach() + F.softplus(h, beta=10) - F.softplus(h, beta=10).detach()
            return model[4](h)
        (g2,) = torch.autograd.grad(ref(x).sum(), x)
        assert torch.allclose(g1, g2, atol=1e-6)
    # Outside the block ReLU is ReLU again.
    (g3,) = torch.autograd.grad(model(x).sum(), x)
    assert torch.equal(g3, g0)


def test_attack_with_smooth_gradient_differs_but_stays_valid(trained_model, batch):
    x, y = batch
    plain = rl.attacks.create("ifgsm", eps=16 / 255)(trained_model, x, y)
    smooth = rl.attacks.create("ifgsm", eps=16 / 255, smooth_grad=10.0)(trained_model, x, y)
    assert not torch.equal(plain, smooth)
    assert (smooth - x).abs().max() <= 16 / 255 + 1e-6


def test_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        ReLUSoftplusBackward(0.0)
    with pytest.raises(ValueError, match="smooth_grad must be > 0"):
        rl.attacks.create("pgd", smooth_grad=-1.0)


# -- the registry and the smooth activations of §5.4 -----------------------------

SMOOTH = ["softplus", "psoftplus", "silu", "gelu", "elu", "celu", "smoothrelu"]


def derivative(act, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(act(x).sum(), x)
    return g


def jump_at_zero(act, h=1e-8):
    """|f'(0+) − f'(0−)|: 0 for a C¹ function, the size of the kink otherwise."""
    x = torch.tensor([-h, h], dtype=torch.float64)
    g = derivative(act.double(), x)
    return float((g[1] - g[0]).abs())


def test_registry_names():
    assert rl.nn.activation_names() == ["relu", "softplus", "psoftplus", "silu", "gelu", "elu", "celu",
                                         "smoothrelu", "relu_softplus_backward"]
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        rl.nn.create_activation("swish")
    with pytest.raises(TypeError, match="takes no options"):
        rl.nn.create_activation("silu", alpha=2.0)


@pytest.mark.parametrize("name", SMOOTH)
def test_smooth_activations_have_a_continuous_derivative(name):
    assert jump_at_zero(rl.nn.create_activation(name)) < 1e-4


def test_relu_has_a_kink():
    assert jump_at_zero(nn.ReLU()) == pytest.approx(1.0)


@pytest.mark.parametrize("alpha", [0.5, 1.5, 2.0])
def test_celu_is_c1_for_every_alpha_and_elu_is_not(alpha):
    """Eq. (5.6)-(5.8): ELU's left derivative at 0 is α, CELU's is 1."""
    assert jump_at_zero(rl.nn.create_activation("celu", alpha=alpha)) < 1e-4
    assert jump_at_zero(rl.nn.create_activation("elu", alpha=alpha)) == pytest.approx(abs(alpha - 1), abs=1e-4)
    assert jump_at_zero(rl.nn.create_activation("elu", alpha=1.0)) < 1e-4


@pytest.mark.parametrize("name", SMOOTH + ["relu"])
def test_gradcheck(name):
    act = rl.nn.create_activation(name).double()
    x = torch.randn(20, dtype=torch.float64) + 0.05  # keep off ReLU's kink
    assert torch.autograd.gradcheck(act, (x.requires_grad_(True),))


def test_parametric_softplus_formula():
    x = torch.linspace(-2, 2, 41)
    assert torch.allclose(rl.nn.create_activation("psoftplus")(x), torch.log1p(torch.exp(10 * x)) / 10, atol=1e-6)


def test_smoothrelu_formula_derivative_and_limit():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    a = torch.tensor(7.0, dtype=torch.float64)
    y = rl.nn.smooth_relu(x, a)
    pos = x >= 0
    assert torch.allclose(y[pos], x[pos] - torch.log(a * x[pos] + 1) / a)  # eq. (5.4)
    assert (y[~pos] == 0).all()
    g = derivative(lambda v: rl.nn.smooth_relu(v, a), x)
    assert torch.allclose(g[pos], a * x[pos] / (1 + a * x[pos]))  # eq. (5.5)
    gaps = [float((rl.nn.smooth_relu(x, torch.tensor(v, dtype=torch.float64)) - x.clamp_min(0)).abs().max())
            for v in (1.0, 10.0, 100.0, 1000.0)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.01  # converges to ReLU as α grows


def test_smoothrelu_alpha_is_learnable_shared_and_stays_positive():
    act = rl.nn.SmoothReLU()
    assert float(act.alpha.detach()) == pytest.approx(400.0)  # §5.4.2 initialization
    assert sum(p.numel() for p in act.parameters()) == 1  # one α for all channels
    opt = torch.optim.Adam(act.parameters(), lr=1.0)
    x = torch.rand(64, 8) * 3
    for _ in range(200):  # push α down hard, through zero: a larger α gives larger outputs
        opt.zero_grad()
        act(x).sum().backward()
        opt.step()
        assert float(act.alpha.detach()) > 0
    assert float(act.alpha.detach()) < 1


def test_swap_to_relu_softplus_backward_keeps_outputs(trained_model, batch):
    x, _ = batch
    swapped = rl.nn.swap_activation(trained_model, "relu_softplus_backward")
    assert torch.equal(swapped(x), trained_model(x))
    xa = x.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(swapped(xa).sum(), xa)
    (g0,) = torch.autograd.grad(trained_model(xa).sum(), xa)
    assert not torch.allclose(g0, g1)
