"""Normalization for adversarial training (ch. 6, 7).

* :class:`MixtureBatchNorm`: K batch norms behind one layer, one active at a
  time — MBN_clean / MBN_adv (§6.4.2) and AdvProp's main / auxiliary BNs
  (§7.4.2), with as many routes as data sources (fine-grained AdvProp, §7.5.4).
  The route is chosen explicitly (``with route(model, "adv"):``), never by
  splitting a batch at a fixed index, so an attack can run through the
  auxiliary BNs in inference mode (which timm's SplitBatchNorm2d cannot).
* :func:`drop_routes`: the exported model keeps one BN per layer (AdvProp drops
  the auxiliary BNs at test time, §7.4.3).
* :func:`group_norm_like`: the GroupNorm replacement of §6.4.2.
* :func:`use_running_stats`: train with the running statistics (§6.4.3).
* :func:`bn_finetune_parameters`: re-finetune only BN parameters (§6.4.4).
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

DEFAULT_ROUTES = ("clean", "adv")


class MixtureBatchNorm(nn.Module):
    """K batch norms sharing nothing but the surrounding layers (§6.4.2, §7.4.2).

    Args:
        bn: the batch norm to replicate (any ``_BatchNorm`` subclass, e.g.
            timm's ``BatchNormAct2d``); every route starts as a copy of it, so a
            pretrained model's statistics seed every route. Submodules of the BN
            that are not batch norms (timm's ``act``/``drop``) stay shared.
        routes: route names; the first is the main route, active by default.
    """

    def __init__(self, bn: _BatchNorm, routes: Sequence[str] = DEFAULT_ROUTES) -> None:
        super().__init__()
        routes = tuple(str(r) for r in routes)
        if len(routes) < 1 or len(set(routes)) != len(routes):
            raise ValueError(f"routes must be distinct names; got {routes}")
        if not isinstance(bn, _BatchNorm):
            raise TypeError(f"bn must be a batch norm module; got {type(bn).__name__}")
        self.routes = routes
        self.bns = nn.ModuleDict({r: _copy_sharing_children(bn) for r in routes})
        self.active = routes[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.bns[self.active](x)

    def extra_repr(self) -> str:
        return f"routes={self.routes}, active={self.active!r}"


def _copy_sharing_children(bn: _BatchNorm) -> _BatchNorm:
    twin = copy.deepcopy(bn)
    for name, child in bn.named_children():
        setattr(twin, name, child)  # e.g. timm's act/drop: one module for all routes
    return twin


def mixture_layers(model: nn.Module) -> list[MixtureBatchNorm]:
    return [m for m in model.modules() if isinstance(m, MixtureBatchNorm)]


def _check_route(layers: list[MixtureBatchNorm], name: str, arg: str = "route") -> None:
    if not layers:
        raise ValueError("model has no MixtureBatchNorm layers; convert it with convert_norm(model, 'mbn') first")
    routes = layers[0].routes
    if any(m.routes != routes for m in layers):
        raise ValueError("the model's MixtureBatchNorm layers disagree on their routes")
    if name not in routes:
        raise ValueError(f"{arg} must be one of the model's routes {routes}; got {name!r}")


@contextlib.contextmanager
def route(model: nn.Module, name: str | None) -> Iterator[nn.Module]:
    """Within the block every MixtureBatchNorm of ``model`` uses route ``name``;
    the previous routes are restored afterwards, even on an error. ``name=None``
    changes nothing (any model), so callers need not branch on "no route"."""
    if name is None:
        yield model
        return
    layers = mixture_layers(model)
    _check_route(layers, name)
    previous = [m.active for m in layers]
    for m in layers:
        m.active = name
    try:
        yield model
    finally:
        for m, p in zip(layers, previous):
            m.active = p


def route_names(model: nn.Module) -> tuple[str, ...]:
    """The routes of a model's MixtureBatchNorm layers (empty if it has none)."""
    layers = mixture_layers(model)
    return layers[0].routes if layers else ()


def drop_routes(model: nn.Module, keep: str = "clean", *, inplace: bool = False) -> nn.Module:
    """Replace every MixtureBatchNorm by its ``keep`` batch norm: a model with one
    BN per layer whose state dict matches the unconverted architecture
    (AdvProp's test-time model, §7.4.3). Copies the model unless ``inplace``."""
    _check_route(mixture_layers(model), keep, "keep")
    model = model if inplace else copy.deepcopy(model)
    replace_modules(model, lambda m: m.bns[keep] if isinstance(m, MixtureBatchNorm) else None)
    return model


def replace_modules(model: nn.Module, fn) -> int:  # noqa: ANN001
    """Replace, depth first, every submodule ``m`` for which ``fn(m)`` returns a
    module; returns how many were replaced. The root itself is not replaced."""
    count = 0
    for name, child in list(model.named_children()):
        new = fn(child)
        if new is not None:
            setattr(model, name, new)
            count += 1
        else:
            count += replace_modules(child, fn)
    return count


def group_norm_like(bn: _BatchNorm, groups: int = 32) -> nn.Module:
    """A GroupNorm (Wu & He; §6.4.2) for the channels of ``bn``, with its affine
    parameters copied. Groups: ``groups``, or the largest divisor of the channel
    count below it. timm's BatchNormAct2d keeps its activation and dropout."""
    c = bn.num_features
    g = max(d for d in range(1, min(groups, c) + 1) if c % d == 0)
    gn = nn.GroupNorm(g, c, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
    extra = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(gn, *extra) if extra else gn


def _running_stats_pre(module: nn.Module, args: tuple) -> None:
    if module.training and getattr(module, "_rl_running_stats", False):
        module._rl_was_training = True
        module.training = False


def _running_stats_post(module: nn.Module, args: tuple, out: Tensor) -> None:
    if getattr(module, "_rl_was_training", False):
        module.training = True
        module._rl_was_training = False


def use_running_stats(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Make every batch norm normalize with its running statistics, and leave
    them unchanged, even in train mode (§6.4.3: "applying pre-computed running
    statistics for model training during the last 10 epochs"); γ and β still
    train. ``enabled=False`` switches back. Works in place; returns the model."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            if not hasattr(m, "_rl_running_stats"):
                m.register_forward_pre_hook(_running_stats_pre)
                m.register_forward_hook(_running_stats_post)
            m._rl_running_stats = bool(enabled)
    return model


def bn_finetune_parameters(model: nn.Module, *, reset_stats: bool = False) -> list[nn.Parameter]:
    """Freeze every parameter but the batch norms' γ and β and return those
    (§6.4.4: finetune only the BNs of an adversarially trained model on clean
    images). ``reset_stats`` restarts the running statistics as well."""
    bn_params = set()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            bn_params.update(id(p) for p in m.parameters(recurse=False))
            if reset_stats:
                m.reset_running_stats()
    params = []
    for p in model.parameters():
        keep = id(p) in bn_params
        p.requires_grad_(keep)
        if keep:
            params.append(p)
    if not params:
        raise ValueError("model has no batch-norm parameters to finetune")
    return params
