"""``create_model``: built-in nets, timm and torchvision models by name.

Built-in: ``smallcnn`` (width/depth knobs), ``resnet18_cifar``,
``resnet34_cifar`` and ``resnet{6n+2}_cifar`` (20, 32, 56, 110, ... for the
"going deeper" study of §6.5; a ``width`` knob); bottleneck ResNets of any
depth at ImageNet shape, ``resnet`` with ``depth=`` (50, 101, 152, 200, 338,
638, ...) or ``layers=[3, 4, 23, 3]``, also named ``resnet{depth}``
(:mod:`robustlab.models.resnet`; §5.5.1, §6.5). External:
``timm:NAME`` and ``tv:NAME`` (torchvision). Weights come from a local file
(``weights=PATH``) or, for external models, from the library's own pretrained
weights and cache (``pretrained=True``; ``weights="DEFAULT"`` for torchvision;
:mod:`robustlab.models.pretrained`). Every model takes [0, 1] pixels: the
mean/std normalization is its first layer.
"""
from __future__ import annotations

import logging
import pickle  # its error type only: nothing is ever unpickled
import re
from collections.abc import Callable, Sequence
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from robustlab._io import finite_state, sha256_file
from robustlab.models.normalize import NormalizedModel
from robustlab.models.pretrained import (
    PretrainedUnavailableError,
    timm_pretrained,
    torchvision_pretrained,
    torchvision_weights,
)
from robustlab.models.resnet import bottleneck_resnet, is_bottleneck_depth
from robustlab.models.small import CifarResNet, SmallCNN
from robustlab.nn.norm import DEFAULT_ROUTES

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

__all__ = ["PretrainedUnavailableError", "create_model", "load_state_dict", "load_weights", "model_names"]
_logger = logging.getLogger(__name__)
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _resnet_cifar(depth: int, in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """ResNet-18/34 (4 stages, 64–512 channels) or the 3-stage ResNet-(6n+2)
    of He et al. (16–64 channels) for 32×32 inputs; ``width`` scales channels."""
    if depth in (18, 34):
        blocks, widths = ((2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3)), (64, 128, 256, 512)
    elif depth >= 8 and (depth - 2) % 6 == 0:
        blocks, widths = ((depth - 2) // 6,) * 3, (16, 32, 64)
    else:
        raise ValueError(f"CIFAR ResNet depth must be 18, 34 or 6n+2 (20, 32, 44, 56, 110, ...); got {depth}")
    widths = tuple(max(1, int(round(w * width))) for w in widths)
    return CifarResNet(blocks, widths, in_channels, num_classes)


def _builtin(name: str) -> Callable[..., nn.Module] | None:
    if name == "smallcnn":
        return lambda in_channels, num_classes, **kw: SmallCNN(in_channels, num_classes, **kw)
    m = re.fullmatch(r"resnet(\d+)_cifar", name)
    if m:
        depth = int(m.group(1))
        return lambda in_channels, num_classes, **kw: _resnet_cifar(depth, in_channels, num_classes, **kw)
    if name == "resnet":
        return lambda in_channels, num_classes, **kw: bottleneck_resnet(in_channels=in_channels,
                                                                       num_classes=num_classes, **kw)
    m = re.fullmatch(r"resnet(\d+)", name)
    if m and is_bottleneck_depth(int(m.group(1))):  # resnet101, resnet638 (resnet9000 is not 3n+2)
        depth = int(m.group(1))
        return lambda in_channels, num_classes, **kw: bottleneck_resnet(depth, in_channels=in_channels,
                                                                       num_classes=num_classes, **kw)
    return None


def _imagenet_shaped(name: str) -> bool:
    """Built-in nets made for ImageNet: without mean/std they normalize with ImageNet's statistics."""
    return re.fullmatch(r"resnet\d*", name) is not None


def model_names() -> list[str]:
    """Built-in names (any ``resnet{6n+2}_cifar`` depth works, and any
    bottleneck ``resnet{3n+2}`` from 50 up: ``resnet338``); external models
    are ``timm:NAME`` or ``tv:NAME``."""
    return ["resnet18_cifar", "resnet20_cifar", "resnet34_cifar", "resnet56_cifar", "resnet110_cifar", "smallcnn",
            "resnet", "resnet50", "resnet101", "resnet152", "resnet200"]


def create_model(
    name: str,
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights: str | Path | WeightsEnum | None = None,
    pretrained: bool = False,
    act: str | None = None,
    act_options: dict[str, float] | None = None,
    norm: str | None = None,
    denoise: str | None = None,
    denoise_where: str = "stages",
    denoise_options: dict[str, Any] | None = None,
    routes: Sequence[str] = DEFAULT_ROUTES,
    **kwargs: Any,
) -> nn.Module:
    """A classifier for [0, 1] inputs: ``Normalize(mean, std)`` then the network.

    Args:
        name: a built-in name (:func:`model_names`), ``timm:NAME`` or ``tv:NAME``.
        num_classes: output logits.
        in_channels: input channels (built-in nets).
        mean, std: per-channel input statistics; timm models default to their
            pretrained config, torchvision models to ImageNet's, others to the
            identity.
        weights: a local state-dict file (.safetensors, .pt/.pth: an existing
            path, or a name with one of these suffixes) for the network as
            built, loaded before any surgery; for ``tv:`` models also
            torchvision's weights by name: ``"DEFAULT"``, an entry such as
            ``"IMAGENET1K_V2"``, ``"ResNet50_Weights.IMAGENET1K_V2"`` or the
            enum member. These are downloaded into torch hub's cache
            (``torch.hub.get_dir()/checkpoints``) with their hash checked and
            read with ``weights_only=True``. If ``num_classes`` differs from
            the weights' categories, the classifier (the net's last
            ``nn.Linear``: ``fc``, ``classifier[-1]``, ...) is replaced by a
            freshly initialized one; a net without one is refused.
        pretrained: load the library's pretrained weights: timm's (through
            its Hugging Face hub or torch hub cache, or a local file given as
            ``pretrained_cfg_overlay={"file": PATH}``; timm resets the
            classifier itself for another ``num_classes``), or torchvision's
            ``DEFAULT`` weights for a ``tv:`` model. Offline with nothing
            cached: :class:`PretrainedUnavailableError`, naming the cache and
            the local alternatives.
        act: swap every activation (``rl.nn.swap_activation``; ch. 5).
        act_options: the activation's options, e.g. ``{"alpha": 2.0}`` for
            ELU/CELU (Fig. 5.4) or psoftplus.
        norm: ``"bn"`` (as built), ``"mbn"`` (MixtureBatchNorm with ``routes``,
            ch. 6–7) or ``"gn"`` (GroupNorm, §6.4.2).
        denoise: add denoising blocks of this op (``rl.nn.add_denoise_blocks``,
            ch. 4) at ``denoise_where`` (``stages`` or ``all``); ``bottleneck``
            adds standard bottleneck blocks there instead (§4.6.1's capacity
            control).
        denoise_options: the blocks' options (Table 4.1's ``conv: false``,
            ``residual: false``; ``subsample: true`` for all-blocks, §4.6.2).
        kwargs: passed to the network's constructor (``width``/``depth`` for
            smallcnn, ``width`` for the CIFAR ResNets; ``timm.create_model``'s
            options such as ``pretrained_cfg_overlay`` for timm).

    The model's ``robustlab_spec["pretrained"]`` records what was loaded
    (``source``: timm, torchvision or file; ``name``, ``tag``/``weights``,
    the local ``file`` and its ``sha256``), or None for a random init;
    :func:`~robustlab.models.load_model` rebuilds the architecture from the
    spec without loading these again (the checkpoint holds the weights).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (the number of logits); got {num_classes!r}")
    key = str(name)
    builder = _builtin(key)
    file, library = _weights_source(key, builder is not None, weights, pretrained)
    record = None
    try:
        if builder is not None:
            net = builder(in_channels=in_channels, num_classes=num_classes, **kwargs)
        elif key.startswith("timm:"):
            net, mean, std, record = _timm(key[5:], num_classes, mean, std, library is not None, **kwargs)
        elif key.startswith(("tv:", "torchvision:")):
            net, record = _torchvision(key.split(":", 1)[1], num_classes, library, **kwargs)
            if mean is None:  # torchvision's ImageNet statistics
                mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        elif str(name).lower().endswith((".pt", ".pth", ".bin", ".ckpt", ".safetensors")):
            raise ValueError(f"unknown model {name!r}: a weights file is no architecture; name the network and "
                             f"pass the file as its weights: resolve_model('tv:resnet50', weights={name!r}) "
                             f"(CLI: --model tv:resnet50 --weights {name}), or your own file.py:factory")
        else:
            raise ValueError(
                f"unknown model {name!r}; built-in: {', '.join(model_names())}; or timm:NAME / tv:NAME"
            )
    except TypeError as err:  # an option the network's constructor does not take
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if bad is not None and bad.group(1) in kwargs:
            raise ValueError(f"model option {bad.group(1)!r} is not one {key} takes (its constructor refused it); "
                             f"in a config remove model.{bad.group(1)} or set it to null") from None
        if not kwargs:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ValueError(f"model options {given}: {key}'s constructor refused them ({err})") from None
    if file is not None:
        load_weights(net, file, key)
        record = {"source": "file", "name": key, "file": str(file.resolve()), "sha256": sha256_file(file)}
    net = _surgery(net, act=act, act_options=act_options or {}, norm=norm, denoise=denoise,
                   denoise_where=denoise_where, denoise_options=denoise_options or {}, routes=routes)
    channels = in_channels if builder is not None else 3
    if mean is None and std is None and _imagenet_shaped(key) and channels == 3:
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    model = NormalizedModel(net, mean, std)
    model.robustlab_surgery = getattr(net, "robustlab_surgery", [])
    model.robustlab_spec = {  # what load_model needs to rebuild it
        "name": key, "num_classes": num_classes, "in_channels": in_channels,
        "mean": list(mean), "std": list(std), "act": act, "act_options": act_options, "norm": norm, "denoise": denoise,
        "denoise_where": denoise_where, "denoise_options": denoise_options or None, "routes": list(routes),
        "kwargs": kwargs, "pretrained": record,
    }
    return model


def _surgery(net: nn.Module, *, act: str | None, act_options: dict[str, float], norm: str | None,
             denoise: str | None, denoise_where: str, denoise_options: dict[str, Any],
             routes: Sequence[str]) -> nn.Module:
    """Denoising blocks first (their BN is converted with the rest), then
    activations, then normalization."""
    from robustlab.nn.surgery import add_denoise_blocks, convert_norm, swap_activation

    if denoise is not None:
        net = add_denoise_blocks(net, denoise, denoise_where, inplace=True, **denoise_options)
    if act is not None:
        net = swap_activation(net, act, inplace=True, **act_options)
    elif act_options:
        raise ValueError(f"act_options {act_options} need an activation to swap in (act=...)")
    if norm is not None and norm != "bn":
        net = convert_norm(net, norm, routes=routes, inplace=True)
    return net


def _weights_source(key: str, builtin: bool, weights: object, pretrained: bool) -> tuple[Path | None, Any]:
    """(the local state-dict file, the library's weights to load) that
    ``weights`` and ``pretrained`` ask for: a Path, or a string naming an
    existing file or ending in a weights suffix, is a file; ``pretrained``
    asks for timm's weights (True) or torchvision's ``"DEFAULT"``; any other
    ``weights`` is a torchvision weights name (checked against the model's
    enum later)."""
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained must be true or false; got {pretrained!r}")
    is_file = isinstance(weights, Path) or (
        isinstance(weights, str) and (Path(weights).is_file() or weights.endswith(_WEIGHT_SUFFIXES)))
    if is_file and pretrained:
        raise ValueError(f"give either pretrained=True or weights={str(weights)!r} (a local file), not both")
    if is_file:
        return Path(weights), None
    tv = key.startswith(("tv:", "torchvision:"))
    if weights is not None and not tv:
        raise ValueError(f"weights: {weights!r} is not a state-dict file (an existing path, or one ending in "
                         f"{'/'.join(_WEIGHT_SUFFIXES)}); torchvision weights names (DEFAULT, IMAGENET1K_V1, "
                         "...) are for tv: models" + ("" if builtin else "; timm's own weights: pretrained=True"))
    if pretrained and builtin:
        raise ValueError(f"pretrained: {key} has no pretrained weights; give weights=PATH (a state-dict file)")
    if not pretrained:
        return None, weights
    return None, "DEFAULT" if tv else True


def _timm(name: str, num_classes: int, mean, std, pretrained: bool, **kwargs: Any):  # noqa: ANN001, ANN202
    try:
        import timm
    except ImportError:
        raise ImportError("timm models need the timm package: pip install 'robustlab[timm]'") from None
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}")
    record = None
    if pretrained:
        net, record = timm_pretrained(name, num_classes, **kwargs)
    else:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    if mean is None:
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    return net, mean, std, record


def _torchvision(tv_name: str, num_classes: int, weights: Any, **kwargs: Any
                 ) -> tuple[nn.Module, dict[str, Any] | None]:
    """``tv_name`` with random weights, or with torchvision's ``weights``
    (a name or enum member, see :func:`~robustlab.models.pretrained.torchvision_weights`)."""
    import torchvision

    if tv_name not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision model {tv_name!r}")
    if weights is None:
        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs), None
    return torchvision_pretrained(tv_name, torchvision_weights(tv_name, weights), num_classes, **kwargs)


#: Where a training script's checkpoint dict keeps the model's weights, tried in this order:
#: Lightning, timm's train.py and RobustBench (``state_dict``), torchvision's reference scripts,
#: DeiT and MadryLab's robustness library (``model``), the PyTorch tutorials (``model_state_dict``).
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` or ``.pt``/``.pth``/``.bin``
    file, with every weight finite. A ``.pt`` file is read with
    ``weights_only=True`` (tensors, numbers, strings and containers; the
    ``argparse.Namespace`` of the hyper-parameters timm's and torchvision's
    training scripts save beside the weights is read as plain data): no
    pickled code runs. A training checkpoint's weights are taken from its
    first entry of :data:`CHECKPOINT_KEYS` that holds tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors" or _is_safetensors(path):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            import argparse
            import warnings

            with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's note on a plain pickle's protocol: we say what it is
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file, or a pickle naming more than tensors (refused by weights_only)
        raise ValueError(_unreadable(path, err)) from None
    if isinstance(state, dict) and not _is_state(state):
        state = next((state[k] for k in CHECKPOINT_KEYS if isinstance(state.get(k), dict) and _is_state(state[k])),
                     state)
    if not isinstance(state, dict) or not _is_state(state):
        keys = f"; its keys: {', '.join(map(str, list(state)[:8]))}" if isinstance(state, dict) else ""
        raise ValueError(f"{path} does not hold a state dict (names → tensors), nor one under "
                         f"{', '.join(CHECKPOINT_KEYS)}{keys}")
    return finite_state(state, path)


def _is_safetensors(path: Path) -> bool:
    """Whether the file is safetensors whatever its name: an 8-byte header size, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(10)
    return len(head) == 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < path.stat().st_size


def _is_state(d: dict[Any, Any]) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


_RESAVE = ("Re-save the weights where the file was made: torch.save(model.state_dict(), 'weights.pth') or "
           "safetensors.torch.save_file")


def _unreadable(path: Path, err: Exception) -> str:
    """The error for a weights file torch or safetensors cannot read: a
    pickled object (a whole model, an optimizer class) is named, with how to
    re-save the weights alone."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"{path} holds a pickled {found.group(1)}, not only tensors; robustlab never unpickles objects "
                f"(loading them runs code). {_RESAVE}")
    import zipfile

    with open(path, "rb") as f:
        plain_pickle = f.read(1) == b"\x80" and not zipfile.is_zipfile(path)
    if plain_pickle and isinstance(err, pickle.UnpicklingError):  # pickle.dump of objects, not torch.save
        return (f"{path} is a plain Python pickle of objects, not tensors saved by torch.save or safetensors; "
                f"robustlab never unpickles objects (loading them runs code). {_RESAVE}")
    if "Weights only load failed" in text:  # torch's own advice is to unpickle it: its cause is what we say
        text = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
    first = next((line.strip() for line in text.strip().splitlines() if line.strip()), "")
    why = f" ({type(err).__name__}: {first[:200]})" if first else ""
    return (f"{path} is not a readable weights file: neither safetensors nor a tensors-only PyTorch file "
            f"(.pt/.pth/.bin){why}")


def fit_state(state: dict[str, torch.Tensor], model: nn.Module, where: Any) -> dict[str, torch.Tensor]:
    """``state`` as ``model.load_state_dict`` wants it: unchanged when its
    names are the model's, else the tensors under the one name prefix that
    gives exactly the model's names (``module.`` of DataParallel and DDP,
    ``_orig_mod.`` of torch.compile, ``model.`` of Lightning,
    ``module.model.`` of the robustness library, whose attacker copy and
    normalizer are then left out, with a warning). BatchNorm's
    ``num_batches_tracked`` may be absent (checkpoints older than PyTorch
    0.4.1). Anything else is returned unchanged for ``load_state_dict`` to
    report."""
    want = set(model.state_dict())
    core = {k for k in want if not k.endswith("num_batches_tracked")}
    if not core or core <= set(state) <= want:
        return state
    anchor = min(core)
    prefixes = {k[: -len(anchor)] for k in state if k.endswith("." + anchor)}
    fits = []
    for p in sorted(prefixes, key=len):
        sub = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        if core <= set(sub) <= want:
            fits.append((p, sub))
    if not fits:
        return state
    prefix, sub = fits[0]
    left = sorted({".".join(k.split(".")[:2]) for k in state if not k.startswith(prefix)})
    if left:
        shown = ", ".join(left[:6]) + (" ..." if len(left) > 6 else "")
        _logger.warning("weights: %s: the model's %d tensors are those under %r; %d others are ignored (%s)", where,
                        len(sub), prefix, len(state) - len(sub), shown)
    else:
        _logger.info("weights: %s: the model's tensors, under the prefix %r", where, prefix)
    return sub


def load_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Load the weights file ``path`` into ``model`` (:func:`load_state_dict`,
    then :func:`fit_state`); a ValueError naming ``name`` when they do not fit."""
    state = fit_state(load_state_dict(path), model, path)
    mine = model.state_dict()
    prefix, sub = _closest(state, mine)
    missing = [k for k in mine if k not in sub and not k.endswith("num_batches_tracked")]
    extra = [k for k in sub if k not in mine]
    shapes = [f"{k} {tuple(sub[k].shape)} in the file, {tuple(mine[k].shape)} in the model"
              for k in mine if k in sub and sub[k].shape != mine[k].shape]
    if missing or extra or shapes:
        where = f" (under the prefix {prefix!r}, which holds the most of its names)" if prefix else ""
        parts = [f"{len(v)} {what}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}"
                 for what, v in (("missing", missing), ("unexpected", extra), ("mis-shaped", shapes)) if v]
        raise ValueError(f"weights: {path} does not fit {name}{where}: " + "; ".join(parts))
    model.load_state_dict(state)


def _closest(state: dict[str, torch.Tensor], mine: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The name prefix of ``state`` under which most of ``mine``'s names are
    found ('' when none beats the names as they are), and the tensors under it."""
    best, sub = "", state
    count = len(set(state) & set(mine))
    for p in {k[: len(k) - len(m)] for m in mine for k in state if k.endswith("." + m)}:
        cand = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        n = len(set(cand) & set(mine))
        if n > count or (n == count and p and len(p) < len(best)):
            best, sub, count = p, cand, n
    return best, sub
