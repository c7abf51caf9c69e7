"""Model surgery: pure functions over nn.Module trees.

``swap_activation``, ``add_denoise_blocks`` and ``convert_norm`` take a model —
built-in, timm or torchvision (ResNet, ResNeXt, EfficientNet) — and return a
changed copy (``inplace=True`` changes it in place). They never monkey-patch
``torch.nn.functional``; activations called as functions inside a model's
``forward`` cannot be swapped (the report counts modules only). Each call
appends a record of what it changed, with the parameter count before and
after, to ``model.robustlab_surgery`` and logs it.

Load pretrained weights before surgery: inserted and converted layers change
state-dict keys (``drop_routes`` restores the original keys of a converted
model).
"""
from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustlab.nn.activations import ReLUSoftplusBackward, SmoothReLU, create_activation
from robustlab.nn.norm import DEFAULT_ROUTES, MixtureBatchNorm, group_norm_like, replace_modules

_logger = logging.getLogger(__name__)

#: Module types that are activations in the sense of ch. 5 (gates such as the
#: sigmoid of squeeze-excitation are not).
ACTIVATION_TYPES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.ELU, nn.CELU, nn.Softplus, nn.Mish, nn.Hardswish,
    SmoothReLU, ReLUSoftplusBackward,
)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _record(model: nn.Module, op: str, before: int, **details: object) -> None:
    entry = {"op": op, **details, "params_before": before, "params_after": count_parameters(model)}
    entry["params_added"] = entry["params_after"] - before
    history = list(getattr(model, "robustlab_surgery", []))
    history.append(entry)
    model.robustlab_surgery = history
    _logger.debug("surgery %s", entry)


def _target(model: nn.Module, inplace: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    return model if inplace else copy.deepcopy(model)


def swap_activation(model: nn.Module, name: str, *, inplace: bool = False, **kwargs: float) -> nn.Module:
    """Replace every activation module by ``create_activation(name, **kwargs)``
    (§5.4: SAT swaps ReLU for a smooth function everywhere, each module its
    own instance, so a learnable SmoothReLU α is per layer).

    Names: relu, softplus, psoftplus, silu, gelu, elu, celu, smoothrelu,
    relu_softplus_backward."""
    create_activation(name, **kwargs)  # validate before copying anything
    model = _target(model, inplace)
    before = count_parameters(model)
    replaced: Counter[str] = Counter()

    def swap(m: nn.Module) -> nn.Module | None:
        if isinstance(m, ACTIVATION_TYPES):
            replaced[type(m).__name__] += 1
            return create_activation(name, **kwargs)
        return None

    replace_modules(model, swap)
    if not replaced:
        raise ValueError("model has no activation modules to swap (functional activations cannot be swapped)")
    _record(model, "swap_activation", before, to=name, options=kwargs, replaced=dict(replaced))
    return model


def convert_norm(
    model: nn.Module,
    kind: str,
    *,
    routes: Sequence[str] = DEFAULT_ROUTES,
    groups: int = 32,
    inplace: bool = False,
) -> nn.Module:
    """Convert every batch norm: ``"mbn"`` → MixtureBatchNorm with ``routes``
    (§6.4.2, §7.4.2), ``"gn"`` → GroupNorm with up to ``groups`` groups (§6.4.2),
    ``"bn"`` → unchanged."""
    kinds = ("bn", "mbn", "gn")
    if kind not in kinds:
        raise ValueError(f"kind must be one of {kinds}; got {kind!r}")
    if kind == "mbn":
        MixtureBatchNorm(nn.BatchNorm2d(1), routes)  # validate the routes before copying
    model = _target(model, inplace)
    if kind == "bn":
        return model
    before = count_parameters(model)

    def convert(m: nn.Module) -> nn.Module | None:
        if isinstance(m, MixtureBatchNorm):
            raise ValueError("model already has MixtureBatchNorm layers; drop_routes first")
        if isinstance(m, _BatchNorm):
            return MixtureBatchNorm(m, routes) if kind == "mbn" else group_norm_like(m, groups)
        return None

    n = replace_modules(model, convert)
    if n == 0:
        raise ValueError("model has no batch-norm layers to convert")
    details = {"routes": tuple(routes)} if kind == "mbn" else {"groups": groups}
    _record(model, "convert_norm", before, kind=kind, converted=n, **details)
    return model


# -- denoising blocks ------------------------------------------------------------

def _is_block(m: nn.Module) -> bool:
    """A block is a composite module (a residual block, a conv-BN-act unit), not
    a bare layer such as a pooling or an activation."""
    return next(m.children(), None) is not None


def _is_stage(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and any(_is_block(c) and not isinstance(c, nn.Sequential) for c in m)


def find_stages(model: nn.Module) -> list[nn.Sequential]:
    """The residual stages of a network, in order (res2..res5 for a ResNet):
    ``layer1..layer4`` (torchvision / timm ResNet, ResNeXt), ``blocks`` (timm
    EfficientNet), ``features`` (torchvision EfficientNet), ``stages`` or
    ``layers`` (timm's other nets, robustlab's built-in nets). A stage is a
    Sequential holding blocks (composite modules)."""
    for m in model.modules():
        if all(isinstance(getattr(m, f"layer{i}", None), nn.Sequential) for i in (1, 2, 3, 4)):
            return [getattr(m, f"layer{i}") for i in (1, 2, 3, 4)]
    for m in model.modules():
        for attr in ("stages", "blocks", "layers", "features"):
            seq = getattr(m, attr, None)
            if isinstance(seq, nn.Sequential):
                stages = [c for c in seq if _is_stage(c)]
                if stages:
                    return stages
    raise ValueError(
        f"cannot find the residual stages of {type(model).__name__}; "
        "insert robustlab.nn.DenoiseBlock modules by hand"
    )


def output_channels(module: nn.Module) -> int:
    """Channels a block emits: those of its last batch norm, else its last conv."""
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    if bns:
        return bns[-1].num_features
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"cannot tell how many channels {type(module).__name__} emits")
    return convs[-1].out_channels


def add_denoise_blocks(
    model: nn.Module,
    op: str = "nonlocal_gaussian",
    where: str = "stages",
    *,
    inplace: bool = False,
    **block_kwargs: object,
) -> nn.Module:
    """Add feature-denoising blocks (§4.4) to a network.

    ``where="stages"``: one block after the last residual block of every stage
    (the thesis's 4 blocks after res2..res5, §4.6.1); ``where="all"``: one after
    every residual block (§4.6.2, with ``subsample=True`` there). Fresh blocks
    are the identity, so the network's outputs do not change until it trains.
    ``block_kwargs`` go to :class:`DenoiseBlock` (``conv``, ``residual``,
    ``subsample``, ``embed_channels``)."""
    from robustlab.nn.denoise import BLOCK_OPS, DenoiseBlock

    if op not in BLOCK_OPS:
        raise ValueError(f"op must be one of {BLOCK_OPS}; got {op!r}")
    if where not in ("stages", "all"):
        raise ValueError(f"where must be 'stages' or 'all'; got {where!r}")
    model = _target(model, inplace)
    before = count_parameters(model)
    added = 0
    for stage in find_stages(model):
        children = list(stage.children())
        blocks = [c for c in children if _is_block(c)]
        after = blocks if where == "all" else blocks[-1:]
        new = []
        for b in children:
            new.append(b)
            if any(b is a for a in after):
                new.append(DenoiseBlock(output_channels(b), op, **block_kwargs))
                added += 1
        # Rebuild the stage in place so its parent keeps the same object.
        for key in list(stage._modules):
            del stage._modules[key]
        for i, b in enumerate(new):
            stage.add_module(str(i), b)
    _record(model, "add_denoise_blocks", before, denoise_op=op, where=where, blocks=added)
    return model
