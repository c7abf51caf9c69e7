"""Bottleneck ResNets of any depth at ImageNet shape (§5.5.1, §6.5): He et
al.'s depths match torchvision's networks parameter for parameter, any
3n+2 depth builds, the surgeries of the other builders apply, and a model
saves and loads through its spec."""
from __future__ import annotations

import pytest
import torch
import torchvision

import robustlab as rl
from robustlab.models import create_model, load_model, save_model
from robustlab.models.resnet import BOTTLENECK_LAYERS, bottleneck_layers
from robustlab.nn.norm import MixtureBatchNorm, mixture_layers, route

IMAGENET_MEAN = [0.485, 0.456, 0.406]


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_he_et_al_depths_have_torchvisions_parameter_count(depth):
    ours = create_model("resnet", 1000, depth=depth)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert _params(ours) == _params(reference)
    assert _params(create_model(f"resnet{depth}", 1000)) == _params(reference)  # the name form
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in ours.net.state_dict().items()} == shapes  # the same tree, tensor for tensor


def test_resnet200_is_timms():
    timm = pytest.importorskip("timm")
    assert bottleneck_layers(200) == (3, 24, 36, 3)
    assert _params(create_model("resnet", 1000, depth=200)) == _params(timm.create_model("resnet200"))


@pytest.mark.parametrize(("depth", "layers"), [
    (50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3)), (200, (3, 24, 36, 3)),
    (338, (3, 24, 82, 3)), (638, (3, 24, 182, 3)), (53, (3, 4, 7, 3)), (170, (3, 8, 42, 3)),
])
def test_any_depth_is_three_convolutions_per_block_plus_two(depth, layers):
    assert bottleneck_layers(depth) == layers and 3 * sum(layers) + 2 == depth


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"depth": 49}, "depth 3·"), ({"depth": 51}, "depth 3·"), ({"depth": 35}, "depth 3·"),
    ({"depth": True}, "must be an integer"), ({"depth": "101"}, "must be an integer"),
    ({"layers": [3, 4, 6]}, "four block counts"), ({"layers": [3, 0, 6, 3]}, "four block counts"),
    ({"depth": 101, "layers": [3, 4, 6, 3]}, "make ResNet-50, not depth 101"),
    ({"depth": 50, "width": 2}, r"unknown option\(s\) \['width'\]"),
])
def test_bad_depth_or_layers_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("resnet", 10, **kwargs)


def test_takes_pixels_in_0_1_and_trains(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet", 5, layers=[1, 1, 1, 1])  # ResNet-14, quick
    assert model.robustlab_spec["mean"] == IMAGENET_MEAN and isinstance(model.normalize, rl.models.Normalize)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5)
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # an attack's gradient reaches the pixels
    assert all(p.grad is not None for p in model.parameters())
    gray = create_model("resnet", 3, layers=[1, 1, 1, 1], in_channels=1, mean=[0.5], std=[0.25])
    assert gray(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_mixture_bn_groupnorm_activation_and_denoise_surgery_apply():
    torch.manual_seed(0)
    mbn = create_model("resnet", 4, layers=[1, 1, 1, 1], norm="mbn", act="silu")
    bns = mixture_layers(mbn)
    assert len(bns) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in create_model(
        "resnet", 4, layers=[1, 1, 1, 1]).modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in mbn.modules())
    x = torch.rand(2, 3, 32, 32)
    mbn.train()
    first = bns[0]
    assert isinstance(first, MixtureBatchNorm) and first.routes == ("clean", "adv")
    with route(mbn, "adv"):
        mbn(x)
    assert first.bns["adv"].num_batches_tracked == 1 and first.bns["clean"].num_batches_tracked == 0
    gn = create_model("resnet", 4, layers=[1, 1, 1, 1], norm="gn")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gn.modules())
    assert gn(x).shape == (2, 4)
    den = create_model("resnet", 4, layers=[1, 1, 1, 1], denoise="mean")
    assert len(den.robustlab_surgery) >= 1 and den(x).shape == (2, 4)


def test_save_load_round_trip_keeps_the_architecture_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet", 6, layers=[1, 2, 2, 1], groups=2, width_per_group=32, norm="mbn").eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.robustlab_spec == model.robustlab_spec
    assert loaded.robustlab_spec["kwargs"] == {"layers": [1, 2, 2, 1], "groups": 2, "width_per_group": 32}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    deep = create_model("resnet338", 3)
    assert _params(deep) > _params(create_model("resnet200", 3))
    assert len(deep.net.layer3) == 82 and set(BOTTLENECK_LAYERS) == {50, 101, 152, 200}
