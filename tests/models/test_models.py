"""Model factory, input normalization and checkpoints."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.models import Normalize, create_model, load_model, resolve_model, save_model


@pytest.mark.parametrize("name,channels,size", [("smallcnn", 1, 8), ("smallcnn", 1, 28), ("smallcnn", 3, 32),
                                                ("resnet20_cifar", 3, 32), ("resnet18_cifar", 3, 32)])
def test_builtin_models(name, channels, size):
    m = create_model(name, 7, in_channels=channels).eval()
    assert m(torch.rand(2, channels, size, size)).shape == (2, 7)
    # Global pooling: a larger (diversity-padded) input works too.
    assert m(torch.rand(2, channels, size + 3, size + 3)).shape == (2, 7)


def test_normalize_is_the_first_layer():
    m = create_model("smallcnn", 10, in_channels=1, mean=(0.5,), std=(0.25,))
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(m.normalize(x), (x - 0.5) / 0.25)
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize((0.5,), (0.0,))


def test_normalize_refuses_0_255_statistics_and_another_channel_count():
    """mean=[77.9], std=[95.9] was taken (clean accuracy fell from 0.906 to 0.156); a 2-value mean on 1-channel
    images broadcast them to 2 channels and failed later as 'mat1 and mat2 shapes cannot be multiplied'."""
    with pytest.raises(ValueError, match="statistics of \\[0, 1\\] pixels .* divide 0-255 values by 255"):
        rl.models.NormalizedModel(torch.nn.Identity(), [77.9], [95.9])
    with pytest.raises(ValueError, match="mean and std of 2 channels but the images have 1"):
        Normalize((0.5, 0.5), (0.2, 0.2))(torch.rand(2, 1, 4, 4))
    assert Normalize((0.5,), (0.2,))(torch.rand(2, 3, 4, 4)).shape == (2, 3, 4, 4)  # one value: every channel


@pytest.mark.parametrize("name", ["timm:resnet18", "tv:resnet18"])
def test_external_models_without_download(name):
    m = create_model(name, 10).eval()
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    assert m.normalize.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_resolve_model_applies_the_statistics_it_is_given_and_the_datasets_to_built_in_nets_only(tmp_path,
                                                                                                  trained_model):
    """mean/std given to resolve_model were dropped for torchvision and timm models; the dataset's statistics
    (what the CLI passes) stay for built-in nets only, and a checkpoint or factory is refused given ones."""
    data = ((0.2, 0.3, 0.4), (0.1, 0.2, 0.3))
    mine = resolve_model("tv:resnet18", num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert mine.normalize.mean.flatten().tolist() == [0.5] * 3 and mine.normalize.std.flatten().tolist() == [0.25] * 3
    tv = resolve_model("tv:resnet18", num_classes=3, data_stats=data)
    assert tv.normalize.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    small = resolve_model("smallcnn", num_classes=3, data_stats=data)
    assert small.normalize.mean.flatten().tolist() == pytest.approx(data[0])
    save_model(trained_model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"mean, std: .*ckpt is built with its own input statistics.*normalized"):
        resolve_model(tmp_path / "ckpt", mean=(0.5,), std=(0.25,))
    wrapped = rl.models.normalized(load_model(tmp_path / "ckpt"), (0.5,), (0.25,))  # what the message says
    assert wrapped(torch.full((1, 1, 8, 8), 0.75)).shape[-1] == 10


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        create_model("resnet9000")
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model("timm:not_a_model")


def test_checkpoint_roundtrip(tmp_path, trained_model, batch):
    x, _ = batch
    save_model(trained_model, tmp_path / "ckpt", meta={"note": "digits"})
    loaded = load_model(tmp_path / "ckpt")
    assert torch.equal(loaded(x), trained_model(x))
    assert torch.equal(resolve_model(tmp_path / "ckpt")(x), trained_model(x))
    assert not any(p.name.startswith(".") for p in (tmp_path / "ckpt").iterdir())  # no temp files left


def test_weights_file_for_named_model(tmp_path, trained_model, batch):
    x, _ = batch
    torch.save(trained_model.net.state_dict(), tmp_path / "w.pt")
    m = create_model("smallcnn", 10, in_channels=1, mean=(0.3054,), std=(0.3759,), width=16,
                     weights=tmp_path / "w.pt").eval()
    assert torch.allclose(m(x), trained_model(x))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_model("smallcnn", weights=tmp_path / "missing.pt")


def test_corrupted_checkpoint(tmp_path, trained_model):
    save_model(trained_model, tmp_path / "c")
    w = tmp_path / "c" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load_model(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nothing")


def test_save_needs_a_factory_model(tmp_path):
    with pytest.raises(ValueError, match="create_model"):
        save_model(torch.nn.Linear(2, 2), tmp_path)
    assert "smallcnn" in rl.models.model_names() and "resnet20_cifar" in rl.models.model_names()


@pytest.mark.parametrize("depth,blocks", [(20, 9), (32, 15), (56, 27), (18, 8), (34, 16)])
def test_cifar_resnet_depths(depth, blocks):
    """§6.5 "going deeper" in miniature: ResNet-(6n+2) has 3n basic blocks."""
    m = create_model(f"resnet{depth}_cifar", 10, width=0.25)
    assert sum(isinstance(x, rl.models.BasicBlock) for x in m.modules()) == blocks
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_depth_and_width_knobs():
    with pytest.raises(ValueError, match="depth must be 18, 34 or 6n\\+2"):
        create_model("resnet21_cifar")
    deep = create_model("smallcnn", 10, in_channels=1, depth=3, width=8)
    assert sum(isinstance(x, torch.nn.Conv2d) for x in deep.modules()) == 9
    assert create_model("resnet20_cifar", width=2.0).net.fc.in_features == 128
