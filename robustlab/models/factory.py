"""``create_model``: built-in nets, timm and torchvision models by name.

Built-in: ``smallcnn``, ``resnet18_cifar``, ``resnet20_cifar``. External:
``timm:NAME`` and ``tv:NAME`` (torchvision). Weights come from a local file
(``weights=``); nothing is downloaded. Every model takes [0, 1] pixels: the
mean/std normalization is its first layer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.models.normalize import NormalizedModel
from robustlab.models.small import CifarResNet, SmallCNN

_BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": lambda in_channels, num_classes, **kw: SmallCNN(in_channels, num_classes, **kw),
    "resnet18_cifar": lambda in_channels, num_classes, **kw: CifarResNet(
        (2, 2, 2, 2), (64, 128, 256, 512), in_channels, num_classes, **kw
    ),
    "resnet20_cifar": lambda in_channels, num_classes, **kw: CifarResNet(
        (3, 3, 3), (16, 32, 64), in_channels, num_classes, **kw
    ),
}
_PREFIXES = ("timm:", "tv:", "torchvision:")


def model_names() -> list[str]:
    """Built-in names; external models are ``timm:NAME`` or ``tv:NAME``."""
    return sorted(_BUILTIN)


def create_model(
    name: str,
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A classifier for [0, 1] inputs: ``Normalize(mean, std)`` then the network.

    Args:
        name: a built-in name (:func:`model_names`), ``timm:NAME`` or ``tv:NAME``.
        num_classes: output logits.
        in_channels: input channels (built-in nets).
        mean, std: per-channel input statistics; timm models default to their
            pretrained config, others to the identity.
        weights: a local state-dict file (.safetensors, .pt/.pth) for the network.
        kwargs: passed to the network's constructor (e.g. ``width`` for smallcnn).
    """
    key = str(name)
    if key in _BUILTIN:
        net = _BUILTIN[key](in_channels=in_channels, num_classes=num_classes, **kwargs)
    elif key.startswith("timm:"):
        net, mean, std = _timm(key[5:], num_classes, mean, std, **kwargs)
    elif key.startswith(("tv:", "torchvision:")):
        import torchvision

        tv_name = key.split(":", 1)[1]
        if tv_name not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {tv_name!r}")
        net = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
        if mean is None:  # torchvision's ImageNet statistics
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    else:
        raise ValueError(
            f"unknown model {name!r}; built-in: {', '.join(model_names())}; or timm:NAME / tv:NAME"
        )
    if weights is not None:
        net.load_state_dict(load_state_dict(weights))
    channels = in_channels if key in _BUILTIN else 3
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    model = NormalizedModel(net, mean, std)
    model.robustlab_spec = {  # what load_model needs to rebuild it
        "name": key, "num_classes": num_classes, "in_channels": in_channels,
        "mean": list(mean), "std": list(std), "kwargs": kwargs,
    }
    return model


def _timm(name: str, num_classes: int, mean, std, **kwargs: Any):  # noqa: ANN001, ANN202
    try:
        import timm
    except ImportError:
        raise ImportError("timm models need the timm package: pip install 'robustlab[timm]'") from None
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}")
    net = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    if mean is None:
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    return net, mean, std


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` or ``.pt``/``.pth`` file (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def resolve_model(spec: str | Path, *, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A model from a user's string: a checkpoint directory (or its model.json),
    a built-in name, or ``timm:NAME`` / ``tv:NAME``, with optional local weights.
    ``kwargs`` go to :func:`create_model` (``num_classes``, ``in_channels``,
    ``mean``, ``std``: the dataset's statistics, used by built-in nets only;
    external models keep their own)."""
    from robustlab.models.checkpoint import META, load_model

    path = Path(spec)
    if path.is_dir() or path.suffix == ".json":
        if weights is not None:
            raise ValueError("weights: a checkpoint directory carries its own weights; drop --weights")
        if not (path / META).is_file() and not path.is_file():
            raise FileNotFoundError(f"model: {path} holds no {META}")
        return load_model(path)
    key = str(spec)
    if key not in _BUILTIN:
        kwargs.pop("mean", None)
        kwargs.pop("std", None)
    return create_model(key, weights=weights, **kwargs)
