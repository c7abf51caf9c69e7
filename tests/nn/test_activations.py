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
