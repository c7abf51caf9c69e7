"""Weights files as training scripts write them (rl.models.load_state_dict,
load_weights): DataParallel/DDP, torch.compile, Lightning, timm's and
torchvision's train scripts, MadryLab's robustness library, old BatchNorm
state; a pickled whole model is refused with the way to re-save it."""
from __future__ import annotations

import argparse
import logging

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import robustlab as rl
from robustlab.app.cli import main


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).eval()


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def _same_weights(model, net):
    mine, theirs = model.net.state_dict(), net.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def _optimizer_state(net):
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return opt.state_dict()


def _layouts(net):
    sd = net.state_dict()
    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=90, data_path="/data/imagenet")
    return {
        "plain": sd,
        "ddp": _prefixed(sd, "module."),
        "compiled": torch.compile(net).state_dict(),
        "timm_train": {"epoch": 3, "arch": "resnet18", "state_dict": sd, "optimizer": _optimizer_state(net),
                       "version": 2, "args": args, "metric": 69.7},
        "torchvision_references": {"model": sd, "optimizer": _optimizer_state(net), "lr_scheduler": {"last_epoch": 3},
                                   "epoch": 3, "args": args},
        "lightning": {"epoch": 4, "global_step": 100, "pytorch-lightning_version": "2.4.0",
                      "state_dict": _prefixed(sd, "model."), "hyper_parameters": {"lr": 0.1}},
        "tutorial": {"epoch": 5, "model_state_dict": sd, "optimizer_state_dict": _optimizer_state(net), "loss": 0.3},
        "old_batchnorm": {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    }


@pytest.mark.parametrize("layout", ["plain", "ddp", "compiled", "timm_train", "torchvision_references", "lightning",
                                    "tutorial", "old_batchnorm"])
def test_a_checkpoint_as_training_scripts_save_it_loads_the_same_weights(tmp_path, net, layout):
    path = tmp_path / f"{layout}.pth"
    torch.save(_layouts(net)[layout], path)
    model = rl.models.create_model("tv:resnet18", 3, weights=path)
    assert _same_weights(model, net)


def test_the_robustness_library_checkpoint_loads_the_model_not_its_attacker_copy(tmp_path, net, caplog):
    """MadryLab's robustness library saves an AttackerModel under DataParallel:
    the classifier twice (``module.model.`` and ``module.attacker.model.``) and
    the normalizer's mean and std."""
    sd = net.state_dict()
    # the attacker's copy is made different here, to see which one is loaded
    attacker = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    norm = {"new_mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
            "new_std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)}
    state = {**_prefixed(norm, "module.normalizer."), **_prefixed(sd, "module.model."),
             **_prefixed(norm, "module.attacker.normalize."), **_prefixed(attacker, "module.attacker.model.")}
    path = tmp_path / "imagenet_l2_3_0.pt"
    torch.save({"model": state, "optimizer": _optimizer_state(net), "schedule": None, "epoch": 90}, path)
    with caplog.at_level(logging.WARNING, logger="robustlab"):
        model = rl.models.create_model("tv:resnet18", 3, weights=path)
    assert _same_weights(model, net)
    assert "under 'module.model.'" in caplog.text and "module.attacker" in caplog.text
    assert "module.normalizer" in caplog.text


def test_a_prefix_that_fits_only_part_of_the_model_is_not_guessed(tmp_path, net):
    sd = net.state_dict()
    partial = _prefixed({k: v for k, v in sd.items() if not k.startswith("fc.")}, "module.")
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"weights: .*partial.pt does not fit tv:resnet18 \(under the prefix "
                                         r"'module.', which holds the most of its names\): 2 missing: fc.weight, "
                                         r"fc.bias$"):
        rl.models.create_model("tv:resnet18", 3, weights=tmp_path / "partial.pt")


def test_another_number_of_classes_is_named_by_its_shapes(tmp_path, net):
    torch.save(net.state_dict(), tmp_path / "three.pt")
    with pytest.raises(ValueError, match=r"three.pt does not fit tv:resnet18: 2 mis-shaped: fc.weight \(3, 512\) "
                                         r"in the file, \(10, 512\) in the model, fc.bias"):
        rl.models.create_model("tv:resnet18", 10, weights=tmp_path / "three.pt")


def test_a_safetensors_export_with_a_prefix_loads(tmp_path, net):
    save_file({k: v.contiguous() for k, v in _prefixed(net.state_dict(), "model.").items()},
              str(tmp_path / "model.safetensors"))
    assert _same_weights(rl.models.create_model("tv:resnet18", 3, weights=tmp_path / "model.safetensors"), net)


def test_a_pickled_whole_model_is_refused_naming_its_class_and_the_fix(tmp_path, net, capsys):
    torch.save({"model": net, "epoch": 1}, tmp_path / "whole.pth")
    with pytest.raises(ValueError, match=r"whole.pth holds a pickled torchvision.models.resnet.ResNet, not only "
                                         r"tensors.*torch.save\(model.state_dict\(\)"):
        rl.models.load_state_dict(tmp_path / "whole.pth")
    out = tmp_path / "run"
    code = main(["eval", "--model", "tv:resnet18", "--weights", str(tmp_path / "whole.pth"), "--data", "digits",
                 "--eps", "8/255", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "holds a pickled torchvision.models.resnet.ResNet" in err and not out.exists()
    assert "Traceback" not in err and "weights_only` set to `False`" not in err and "\x1b" not in err


def test_a_checkpoint_without_tensors_names_the_keys_it_has(tmp_path):
    torch.save({"epoch": 3, "weights": [1.0, 2.0]}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"odd.pt does not hold a state dict .*its keys: epoch, weights"):
        rl.models.load_state_dict(tmp_path / "odd.pt")


def test_weights_for_another_class_count_say_where_the_model_s_count_came_from(tmp_path):
    """A 10-class checkpoint on a 3-class folder blamed the weights alone; the model's head size comes from the
    data's classes, and the message says so."""
    from safetensors.torch import save_file

    import robustlab as rl

    ten = rl.models.create_model("smallcnn", 10, in_channels=1, width=4)
    save_file({k: v.contiguous() for k, v in ten.state_dict().items()}, str(tmp_path / "ten.safetensors"))
    with pytest.raises(ValueError, match="mis-shaped.*built with 3 outputs, one per class of the data"):
        rl.models.resolve_model("smallcnn", weights=tmp_path / "ten.safetensors", num_classes=3, in_channels=1,
                                width=4)
    assert rl.models.resolve_model("smallcnn", weights=tmp_path / "ten.safetensors", num_classes=10,
                                   in_channels=1, width=4) is not None
