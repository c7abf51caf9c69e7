"""Each recipe trains, and computes the loss its section of the thesis defines."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_helpers import ATTACK, digits_train, model_for, small_model

import robustlab as rl
from robustlab.nn.norm import MixtureBatchNorm, mixture_layers, route
from robustlab.train import recipes


def _recipe(name: str, **kw):
    return recipes.create(name, **({} if name == "vanilla" else ATTACK), **kw)


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_trains_and_its_loss_falls(name):
    ds = digits_train()
    recipe = _recipe(name)
    model = model_for(recipe, ds.info)
    res = rl.train.fit(model, ds, recipe, epochs=3, batch_size=64, lr=0.05, progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.75 * losses[0], losses
    assert res.steps == 3 * (len(ds) // 64)
    assert not res.model.training


def _count_calls(model):
    calls = []
    model.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


@pytest.mark.parametrize(("name", "expected"), [("vanilla", [32]), ("madry", [32]), ("mixed", [64]),
                                                ("mbn", [32, 32]), ("advprop", [32, 32]),
                                                ("advprop_finegrained", [32, 32, 32])])
def test_forward_passes_per_loss(name, expected):
    """Plain mixing sends clean + adversarial images through one BN in one pass
    (§6.4.2's mixture); MBN/AdvProp give each route its own pass."""
    ds = digits_train()
    recipe = _recipe(name)
    model = model_for(recipe, ds.info).train()
    x, y = ds.batch(slice(0, 32))
    batch = recipe.prepare(model, x, y, seed=0)
    calls = _count_calls(model)
    recipe.loss(model, batch)
    assert calls == expected


def test_mixed_loss_is_equation_6_1_with_alp():
    ds = digits_train()
    recipe = recipes.create("alp", alpha=0.3, alp_weight=0.7, clean_ratio=0.5, **ATTACK)
    model = small_model(ds.info).eval()  # eval: the joint pass equals two separate passes
    x, y = ds.batch(slice(0, 32))
    batch = recipe.prepare(model, x, y, seed=0)
    assert len(batch["x"]) == 16 and len(batch["x_adv"]) == 32
    loss, logs = recipe.loss(model, batch)
    zc, za = model(x[:16]), model(batch["x_adv"])
    expected = 0.3 * F.cross_entropy(zc, y[:16]) + 0.7 * F.cross_entropy(za, y) + 0.7 * ((zc - za[:16]) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert logs["loss_alp"] > 0


def test_clean_ratio_zero_is_madry_training():
    """100% adv + 0% clean (Fig. 6.1's right end) trains exactly as Madry's recipe."""
    ds = digits_train()
    opts = dict(epochs=1, batch_size=64, lr=0.05, progress=False)
    a = rl.train.fit(small_model(ds.info), ds, recipes.create("mixed", clean_ratio=0.0, **ATTACK), **opts).model
    b = rl.train.fit(small_model(ds.info), ds, recipes.create("madry", **ATTACK), **opts).model
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k


def test_adversarial_batch_is_in_the_ball_and_made_through_the_aux_route():
    ds = digits_train()
    recipe = recipes.create("advprop", eps=0.1, steps=3, step_size=0.05)
    model = model_for(recipe, ds.info).train()
    x, y = ds.batch(slice(0, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    for m in mixture_layers(model):
        m.bns["adv"].register_forward_hook(lambda mod, i, o: seen.append("adv"))
        m.bns["clean"].register_forward_hook(lambda mod, i, o: seen.append("clean"))
    batch = recipe.prepare(model, x, y, seed=0)
    assert set(seen) == {"adv"}  # the attack ran through the auxiliary BNs only
    delta = batch["x_adv"] - x
    assert delta.abs().max() <= 0.1 + 1e-6 and batch["x_adv"].min() >= 0 and batch["x_adv"].max() <= 1
    for k, v in model.state_dict().items():  # the attack updated no running statistic
        assert torch.equal(v, before[k]), k
    assert model.training


def _train(name: str, epochs: int):
    """(model as trained, fit result) of a routed recipe on the digits."""
    ds = digits_train()
    recipe = recipes.create(name, **ATTACK)
    model = model_for(recipe, ds.info)
    return model, rl.train.fit(model, ds, recipe, epochs=epochs, batch_size=64, lr=0.05, progress=False)


def test_advprop_exports_the_main_route_without_aux_bns():
    ds = digits_train()
    model, res = _train("advprop", 1)
    exported = res.model
    assert not mixture_layers(exported)
    assert not any("bns." in k for k in exported.state_dict())
    x, _ = ds.batch(slice(0, 100))
    model.eval()
    with route(model, "clean"):
        main = model(x)
    with route(model, "adv"):
        aux = model(x)
    assert torch.equal(exported(x), main)
    assert not torch.allclose(main, aux)
    assert exported.robustlab_spec["norm"] == "bn"


def test_mixture_bn_keeps_per_route_statistics():
    _, res = _train("mbn", 2)
    steps = res.steps
    for layer in mixture_layers(res.model):
        clean, adv = layer.bns["clean"], layer.bns["adv"]
        # Each route saw exactly one batch per step; the attacks updated none.
        assert int(clean.num_batches_tracked) == steps and int(adv.num_batches_tracked) == steps
        assert not torch.allclose(clean.running_mean, adv.running_mean)
        assert not torch.allclose(clean.running_var, adv.running_var)
    restored = rl.models.load_model(_save(res.model))
    for a, b in zip(mixture_layers(restored), mixture_layers(res.model)):
        assert torch.equal(a.bns["adv"].running_var, b.bns["adv"].running_var)


def _save(model):
    import tempfile

    d = tempfile.mkdtemp()
    rl.models.save_model(model, d)
    return d


def test_smooth_backward_changes_gradients_not_outputs():
    """Table 5.1: ReLU forward, softplus backward — for the optimizer the
    logits are identical and the update differs; for the attacker the
    adversarial images differ."""
    ds = digits_train()
    x, y = ds.batch(slice(0, 32))
    plain, smooth = recipes.create("madry", **ATTACK), recipes.create("madry", smooth_backward="both", **ATTACK)
    model = small_model(ds.info).train()
    a, b = plain.prepare(model, x, y, 0), smooth.prepare(model, x, y, 0)
    assert not torch.equal(a["x_adv"], b["x_adv"])
    grads = []
    for recipe in (plain, smooth):
        model.zero_grad()
        with recipe.optimizer_backward():
            loss, _ = recipe.loss(model, a)
        loss.backward()
        conv = next(p for p in model.parameters() if p.dim() == 4)
        grads.append((loss.detach(), conv.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0])
    assert not torch.allclose(grads[0][1], grads[1][1])


def test_recipe_needs_its_routes():
    ds = digits_train()
    with pytest.raises(ValueError, match="routes"):
        rl.train.fit(small_model(ds.info), ds, recipes.create("advprop"), progress=False)


@pytest.mark.parametrize(("name", "kw", "match"), [
    ("nope", {}, "recipe must be one of"),
    ("madry", {"epsilon": 0.1}, "unknown option"),
    ("madry", {"attack": "cw"}, "attack must be one of"),
    ("mixed", {"alpha": 1.5}, "alpha"),
    ("mixed", {"clean_ratio": 0.0, "alp_weight": 0.5}, "clean_ratio > 0"),
    ("vanilla", {"smooth_backward": "sometimes"}, "smooth_backward"),
    ("madry", {"bn_stats": "frozen"}, "bn_stats"),
    ("advprop", {"routes": ("a", "b", "c")}, "routes"),
])
def test_bad_recipe_options(name, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        recipes.create(name, **kw)


def test_registry_defaults_follow_the_thesis():
    madry = recipes.create("madry")
    cfg = madry.attack.config()
    assert cfg["eps_255"] == pytest.approx(16) and cfg["steps"] == 30 and madry.attack.targeted  # §4.5
    assert madry.attack.clean_init_prob == 0.2
    fast = recipes.create("fast").attack  # §5.3.1: PGD-1, ε = β = 4
    assert fast.steps == 1 and fast.eps == pytest.approx(4 / 255) and fast.step_size == pytest.approx(4 / 255)
    adv = recipes.create("advprop")  # §7.5.1: ε = 4, n = 5, α = 1
    assert adv.attack.steps == 5 and adv.attack.eps == pytest.approx(4 / 255) and adv.routes == ("clean", "adv")
    assert recipes.create("advprop", attack="gd").attack.project is False  # Table 7.7
    assert recipes.create("advprop", attack="ifgsm").attack.random_start is False
    assert isinstance(mixture_layers(small_model(digits_train().info, "mbn"))[0], MixtureBatchNorm)


def test_accepted_options_are_what_create_takes():
    assert {"eps", "steps", "step_size", "attack", "routes", "augment"} <= recipes.accepted_options("advprop")
    assert "clean_ratio" in recipes.accepted_options("Mixed") and "eps" not in recipes.accepted_options("vanilla")
    for name in recipes.names():
        unknown = "not_an_option"
        assert unknown not in recipes.accepted_options(name)
        with pytest.raises(TypeError, match="accepted: "):
            recipes.create(name, **{unknown: 1})
    with pytest.raises(ValueError, match="recipe must be one of"):
        recipes.accepted_options("nope")
