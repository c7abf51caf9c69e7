"""Mixture BN, explicit routes, exported models, GroupNorm, running statistics (ch. 6, 7)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.nn import MixtureBatchNorm, drop_routes, route, use_running_stats


def small_net(norm="mbn", routes=("clean", "adv")):
    torch.manual_seed(0)
    return rl.models.create_model("smallcnn", 10, in_channels=1, width=4, norm=norm, routes=routes)


def stats(m, r):
    return {k: v.clone() for k, v in m.bns[r].state_dict().items()}


def test_routes_keep_separate_running_statistics():
    model = small_net().train()
    layer = next(m for m in model.modules() if isinstance(m, MixtureBatchNorm))
    before = {r: stats(layer, r) for r in ("clean", "adv")}
    with route(model, "adv"):
        model(torch.rand(8, 1, 8, 8) * 3)
    after = {r: stats(layer, r) for r in ("clean", "adv")}
    assert all(torch.equal(before["clean"][k], after["clean"][k]) for k in before["clean"])  # untouched
    assert not torch.equal(before["adv"]["running_mean"], after["adv"]["running_mean"])
    assert layer.active == "clean"  # restored after the block
    model(torch.rand(8, 1, 8, 8))
    assert not torch.equal(before["clean"]["running_mean"], stats(layer, "clean")["running_mean"])


def test_route_is_restored_on_error_and_checked():
    model = small_net()
    with pytest.raises(RuntimeError):
        with route(model, "adv"):
            raise RuntimeError("boom")
    assert {m.active for m in model.modules() if isinstance(m, MixtureBatchNorm)} == {"clean"}
    with pytest.raises(ValueError, match="route must be one of the model's routes"):
        with route(model, "aug"):
            pass
    with pytest.raises(ValueError, match="no MixtureBatchNorm layers"):
        with route(small_net(norm=None), "adv"):
            pass
    assert rl.nn.route_names(model) == ("clean", "adv")


@pytest.mark.parametrize("norm", ["mbn", None])
def test_route_none_changes_nothing(norm):
    model = small_net(norm=norm).eval()
    x = torch.rand(4, 1, 8, 8)
    with rl.nn.route(model, None) as inside:
        assert inside is model
        out = model(x)
    assert torch.equal(out, model(x))
    assert {m.active for m in model.modules() if isinstance(m, MixtureBatchNorm)} <= {"clean"}


def test_routes_give_different_outputs_and_configurable_names():
    model = small_net(routes=("clean", "aug", "adv")).train()
    for r in ("aug", "adv"):
        with route(model, r):
            for _ in range(3):
                model(torch.rand(16, 1, 8, 8) * (2 if r == "adv" else 1))
    model.eval()
    x = torch.rand(4, 1, 8, 8)
    outs = {}
    for r in ("clean", "aug", "adv"):
        with route(model, r):
            outs[r] = model(x)
    assert not torch.allclose(outs["clean"], outs["adv"]) and not torch.allclose(outs["aug"], outs["adv"])


def test_state_dict_keeps_all_routes_and_drop_routes_exports_one():
    plain = small_net(norm=None)
    model = small_net()
    keys = model.state_dict().keys()
    assert any(".bns.clean." in k for k in keys) and any(".bns.adv." in k for k in keys)
    model.train()
    with route(model, "adv"):
        model(torch.rand(8, 1, 8, 8))
    model.eval()
    x = torch.rand(4, 1, 8, 8)
    for keep in ("clean", "adv"):
        exported = drop_routes(model, keep=keep)
        assert not any(isinstance(m, MixtureBatchNorm) for m in exported.modules())
        assert exported.state_dict().keys() == plain.state_dict().keys()  # the unconverted layout
        assert rl.nn.count_parameters(exported) == rl.nn.count_parameters(plain)
        with route(model, keep):
            assert torch.equal(exported(x), model(x))
    assert any(isinstance(m, MixtureBatchNorm) for m in model.modules())  # the original is untouched
    with pytest.raises(ValueError, match="keep must be one of"):
        drop_routes(model, keep="aux")


def test_checkpoint_roundtrip_keeps_routes(tmp_path):
    model = small_net().train()
    with route(model, "adv"):
        model(torch.rand(8, 1, 8, 8))
    rl.models.save_model(model, tmp_path / "m")
    loaded = rl.models.load_model(tmp_path / "m")
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    for r in ("clean", "adv"):
        with route(model, r), route(loaded, r):
            assert torch.equal(model(x), loaded(x))


def test_use_running_stats_in_train_mode():
    model = small_net(norm=None).train()
    for _ in range(3):
        model(torch.rand(16, 1, 8, 8))
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 8, 8)
    use_running_stats(model)
    train_out = model(x)
    assert model.training
    model.eval()
    assert torch.allclose(train_out, model(x))
    model.train()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshot.items())  # statistics not updated
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    model(x).sum().backward()
    assert bn.weight.grad is not None  # γ still trains
    use_running_stats(model, enabled=False)
    model(x)
    key = "net.stages.0.0.bn.running_mean"
    assert not torch.equal(snapshot[key], model.state_dict()[key])


def test_bn_finetune_parameters_freezes_everything_else():
    model = small_net(norm=None).train()
    params = rl.nn.bn_finetune_parameters(model, reset_stats=True)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert float(bn.running_mean.abs().sum()) == 0
    assert {id(p) for p in params} == {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
                                       for p in m.parameters()}
    before = {n: p.clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.1)
    torch.nn.functional.cross_entropy(model(torch.rand(8, 1, 8, 8)), torch.randint(0, 10, (8,))).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".bn." in n for n in changed)


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:efficientnet_b0", "tv:resnet18"])
def test_group_norm_conversion(name):
    model = rl.models.create_model(name, 10, norm="gn").eval()
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(m.num_channels % m.num_groups == 0 for m in norms)
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_group_count_falls_back_to_a_divisor():
    gn = rl.nn.group_norm_like(nn.BatchNorm2d(24))
    assert (gn.num_groups, gn.num_channels) == (24, 24)
    assert rl.nn.group_norm_like(nn.BatchNorm2d(96)).num_groups == 32
    assert rl.nn.group_norm_like(nn.BatchNorm2d(40), groups=32).num_groups == 20


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:efficientnet_b0", "tv:resnet18"])
def test_mbn_conversion_preserves_outputs_per_route(name):
    torch.manual_seed(0)
    model = rl.models.create_model(name, 10).eval()
    mbn = rl.nn.convert_norm(model, "mbn", routes=("clean", "adv", "aug")).eval()
    x = torch.rand(2, 3, 64, 64)
    ref = model(x)
    for r in ("clean", "adv", "aug"):
        with route(mbn, r):
            assert torch.allclose(mbn(x), ref, atol=1e-6)
    if name == "timm:efficientnet_b0":  # timm's BatchNormAct2d keeps one shared activation
        layer = next(m for m in mbn.modules() if isinstance(m, MixtureBatchNorm))
        assert layer.bns["clean"].act is layer.bns["adv"].act
