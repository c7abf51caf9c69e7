"""BN during the training attack: testing mode by default, as the authors'
releases (FAIR's and SAT's adv_model.py), through the
attack route's own running statistics, and never updating any of them."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from train_helpers import ATTACK, digits_train, model_for

from robustlab.nn.norm import drop_routes, mixture_layers
from robustlab.train import recipes

ATTACKING = [n for n in recipes.names() if n != "vanilla"]
ROUTED = [n for n in ATTACKING if recipes.create(n).routes]


def _batch(n: int = 32):
    return digits_train().batch(slice(0, n))


def _bn_modules(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def _watch_bns(model):
    """(BN name, training, track_running_stats) of every BN forward."""
    seen = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.append(
        (name, mod.training, mod.track_running_stats))) for name, m in _bn_modules(model)]
    return seen, handles


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def _scramble_stats(model, route_name: str, seed: int) -> None:
    """Give ``route_name``'s BNs running statistics of their own (a fresh
    model's routes all start at mean 0, var 1, so no test could tell them apart)."""
    gen = torch.Generator().manual_seed(seed)
    for layer in mixture_layers(model):
        bn = layer.bns[route_name]
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) * 3 + 0.2)


@pytest.mark.parametrize("bn_stats", [None, "running", "batch"])
@pytest.mark.parametrize("name", ATTACKING)
def test_attack_bn_mode_and_no_statistic_changes(name, bn_stats):
    """Every BN the attack runs through is in testing mode (default and
    ``running``) or in training mode on batch statistics with no running
    buffers (``batch``); all running_mean/var/num_batches_tracked are
    bit-identical after prepare and each module keeps its train/eval flag."""
    ds = digits_train()
    kw = {} if bn_stats is None else {"bn_stats": bn_stats}
    recipe = recipes.create(name, **ATTACK, **kw)
    assert recipe.config()["bn_stats"] == (bn_stats or "running")
    model = model_for(recipe, ds.info).train()
    x, y = _batch()
    if recipe.routes:  # routes with statistics of their own, so a wrong route would show
        for i, r in enumerate(recipe.routes):
            _scramble_stats(model, r, seed=i)
    model.net.fc.eval()  # a mixed train/eval state: restored module by module, not by model.train()
    modes = {n: m.training for n, m in model.named_modules()}
    before = _buffers(model)
    assert any(k.endswith("num_batches_tracked") for k in before)
    seen, handles = _watch_bns(model)
    batch = recipe.prepare(model, x, y, seed=0)
    for h in handles:
        h.remove()
    assert seen, "the attack ran through no batch norm"
    if bn_stats == "batch":
        assert all(training and not track for _, training, track in seen), seen
    else:
        assert not any(training for _, training, _ in seen), seen
    if recipe.routes:  # the attack ran through its own route only
        assert {n.split(".bns.")[1] for n, _, _ in seen} == {recipe.attack_route}
    after = _buffers(model)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(m.track_running_stats for _, m in _bn_modules(model))
    delta = batch["x_adv"] - batch.get("x_aug", x)
    assert 0 < delta.abs().max() <= ATTACK["eps"] + 1e-6


@pytest.mark.parametrize("attack", ["pgd", "ifgsm", "gd", "fgsm"])
def test_default_attack_equals_the_attack_on_the_model_in_eval_mode(attack):
    """On a plain-BN model in train mode the default training attack makes
    exactly the example the same seeded attack makes on ``model.eval()``;
    ``bn_stats="batch"`` makes another one (batch statistics)."""
    ds = digits_train()
    kw = dict(ATTACK, attack=attack)  # FGSM's recipe ignores steps and step_size (one step of ε)
    x, y = _batch()
    model = model_for(recipes.create("madry", **kw), ds.info).train()
    _ = model(x)  # one training forward: running statistics away from their (0, 1) start
    x_adv = recipes.create("madry", **kw).prepare(model, x, y, seed=5)["x_adv"]
    reference = recipes.create("madry", **kw)
    reference.attack.reseed(5)
    assert torch.equal(x_adv, reference.attack(copy.deepcopy(model).eval(), x, y))
    x_batch = recipes.create("madry", bn_stats="batch", **kw).prepare(model, x, y, seed=5)["x_adv"]
    assert not torch.equal(x_adv, x_batch)


@pytest.mark.parametrize("name", ROUTED)
def test_attack_uses_its_routes_own_running_statistics(name):
    """The example made through route R equals the one the same seeded attack
    makes on a plain copy holding route R's BNs (drop_routes); scrambling the
    other routes' statistics changes nothing, scrambling R's changes it."""
    ds = digits_train()
    recipe = recipes.create(name, **ATTACK)
    r = recipe.attack_route
    model = model_for(recipe, ds.info)
    for i, route_name in enumerate(recipe.routes):
        _scramble_stats(model, route_name, seed=10 + i)
    model.train()
    x, y = _batch()

    def attack(m):
        return recipe.prepare(m, x, y, seed=3)

    batch = attack(model)
    source = batch.get("x_aug", x)  # fine-grained AdvProp attacks the augmented images
    plain = drop_routes(model, keep=r).train()
    assert not mixture_layers(plain)
    recipe.attack.reseed(3)
    assert torch.equal(batch["x_adv"], recipe.attack(plain, source, y))

    others = copy.deepcopy(model)
    for i, route_name in enumerate(recipe.routes):
        if route_name != r:
            _scramble_stats(others, route_name, seed=100 + i)
    assert torch.equal(attack(others)["x_adv"], batch["x_adv"])
    own = copy.deepcopy(model)
    _scramble_stats(own, r, seed=200)
    assert not torch.equal(attack(own)["x_adv"], batch["x_adv"])
