"""Model surgery on timm, torchvision and built-in nets."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.nn import add_denoise_blocks, convert_norm, find_stages, swap_activation

EXTERNAL = ["timm:resnet18", "timm:efficientnet_b0", "tv:resnet18", "tv:efficientnet_b0", "timm:resnext26ts"]


def make(name, **kw):
    torch.manual_seed(0)
    return rl.models.create_model(name, 10, **kw).eval()


def act_types(model):
    return {type(m) for m in model.modules() if isinstance(m, rl.nn.surgery.ACTIVATION_TYPES)}


@pytest.mark.parametrize("name", EXTERNAL + ["resnet18_cifar", "smallcnn"])
def test_swap_activation_everywhere_and_pure(name):
    model = make(name, in_channels=3) if name == "smallcnn" else make(name)
    before = act_types(model)
    swapped = swap_activation(model, "smoothrelu")
    assert act_types(swapped) == {rl.nn.SmoothReLU}
    assert act_types(model) == before  # the input model is untouched
    report = swapped.robustlab_surgery[-1]
    n = sum(report["replaced"].values())
    assert report["op"] == "swap_activation" and n == sum(1 for m in swapped.modules()
                                                          if isinstance(m, rl.nn.SmoothReLU))
    assert report["params_added"] == n  # one learnable α per SmoothReLU
    # squeeze-excitation gates stay sigmoids
    assert sum(isinstance(m, nn.Sigmoid) for m in swapped.modules()) == sum(
        isinstance(m, nn.Sigmoid) for m in model.modules())
    assert swapped(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_swapping_relu_for_relu_changes_nothing():
    model = make("tv:resnet18")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(swap_activation(model, "relu")(x), model(x))
    assert swap_activation(model, "relu", inplace=True) is model


@pytest.mark.parametrize("name,stages", [("timm:resnet18", 4), ("tv:resnet18", 4), ("timm:resnext26ts", 4),
                                         ("timm:efficientnet_b0", 7), ("tv:efficientnet_b0", 7),
                                         ("resnet18_cifar", 4), ("resnet20_cifar", 3)])
@pytest.mark.parametrize("op", ["nonlocal_gaussian", "mean"])
def test_denoise_blocks_are_identity_when_fresh(name, stages, op):
    model = make(name)
    x = torch.rand(2, 3, 32, 32)
    ref = model(x)
    denoised = add_denoise_blocks(model, op=op, where="stages")
    blocks = [m for m in denoised.modules() if isinstance(m, rl.nn.DenoiseBlock)]
    assert len(blocks) == stages == len(find_stages(model))
    assert torch.allclose(denoised(x), ref, atol=1e-6)
    assert denoised.robustlab_surgery[-1]["blocks"] == stages


@pytest.mark.parametrize("name", ["tv:resnet18", "resnet20_cifar", "smallcnn"])
def test_denoise_after_every_block(name):
    model = make(name, in_channels=3) if name == "smallcnn" else make(name)
    n_blocks = sum(1 for s in find_stages(model) for c in s if next(c.children(), None) is not None)
    x = torch.rand(2, 3, 32, 32)
    denoised = add_denoise_blocks(model, op="nonlocal_gaussian", where="all", subsample=True)
    assert sum(isinstance(m, rl.nn.DenoiseBlock) for m in denoised.modules()) == n_blocks
    assert torch.allclose(denoised(x), model(x), atol=1e-6)


def test_parameter_counts_of_denoising_variants():
    """§4.6.1: null, dot product, mean, median and bilateral-dot blocks add the
    same parameters (a 1×1 conv and its BN); Gaussian adds the embeddings."""
    base = make("resnet18_cifar")
    added = {op: add_denoise_blocks(base, op=op).robustlab_surgery[-1]["params_added"]
             for op in rl.nn.DENOISE_OPS}
    assert added["null"] == added["nonlocal_dot"] == added["mean"] == added["median"] == added["bilateral_dot"]
    # 1×1 conv C×C plus BN (2C) for C = 64, 128, 256, 512.
    assert added["null"] == sum(c * c + 2 * c for c in (64, 128, 256, 512))
    # Gaussian: θ and φ embed C → C/2 (with bias) in each block.
    assert added["nonlocal_gaussian"] - added["null"] == sum(2 * (c * (c // 2) + c // 2) for c in (64, 128, 256, 512))


def test_denoised_model_trains_and_leaves_identity():
    model = make("resnet20_cifar", denoise="nonlocal_dot").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    block = next(m for m in model.modules() if isinstance(m, rl.nn.DenoiseBlock))
    assert float(block.bn.weight.detach().abs().sum()) > 0


def test_create_model_with_all_three_and_checkpoint(tmp_path):
    model = make("resnet20_cifar", act="silu", norm="mbn", denoise="nonlocal_gaussian")
    ops = [r["op"] for r in model.robustlab_surgery]
    assert ops == ["add_denoise_blocks", "swap_activation", "convert_norm"]
    # the denoising blocks' BNs are mixture BNs too
    block = next(m for m in model.modules() if isinstance(m, rl.nn.DenoiseBlock))
    assert any(isinstance(m, rl.nn.MixtureBatchNorm) for m in block.modules())
    rl.models.save_model(model, tmp_path / "m")
    loaded = rl.models.load_model(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    with rl.nn.route(model, "adv"), rl.nn.route(loaded, "adv"):
        assert torch.equal(model(x), loaded(x))


def test_surgery_errors():
    model = make("resnet20_cifar")
    with pytest.raises(ValueError, match="unknown activation"):
        swap_activation(model, "tanhh")
    with pytest.raises(ValueError, match="op must be one of"):
        add_denoise_blocks(model, op="gaussian_blur")
    with pytest.raises(ValueError, match="where must be 'stages' or 'all'"):
        add_denoise_blocks(model, where="everywhere")
    with pytest.raises(ValueError, match="kind must be one of"):
        convert_norm(model, "ln")
    with pytest.raises(ValueError, match="already has MixtureBatchNorm"):
        convert_norm(convert_norm(model, "mbn"), "mbn")
    with pytest.raises(ValueError, match="cannot find the residual stages"):
        add_denoise_blocks(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="no activation modules"):
        swap_activation(nn.Linear(2, 2), "silu")
