"""What a model does inside: BN statistics per route (Fig. 6.5/6.6), feature
maps of clean and adversarial images around a denoising op (Fig. 4.1–4.3),
and the perceptibility of a perturbation (§2.3.5).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustlab.nn.norm import MixtureBatchNorm, mixture_layers


def perceptibility(r: Tensor) -> Tensor:
    """§2.3.5 (after Szegedy et al., Moosavi-Dezfooli et al.):
    p = ( (1/K) Σ_k ‖r_k‖₂² )^{1/2}, K pixels, r_k the colour vector of pixel k
    in [0, 1] units. ``r``: (N, C, H, W) or (C, H, W); returns one p per image."""
    if r.dim() == 3:
        r = r[None]
    if r.dim() != 4:
        raise ValueError(f"r must be (N, C, H, W) or (C, H, W); got shape {tuple(r.shape)}")
    return r.float().pow(2).sum(dim=1).mean(dim=(1, 2)).sqrt()


def bn_statistics(model: nn.Module, channels: int | None = 20, seed: int = 0) -> dict[str, Any]:
    """Running mean and variance of every batch norm, per route for mixture BN
    (Fig. 6.5: MBN_clean vs MBN_adv on 20 random channels of a block).

    Returns ``{layer: {route: {"mean": [...], "var": [...]}, "channels": [...]}}``;
    a plain BN appears under route ``"bn"``. ``channels`` random channels per
    layer (all if None)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    inside = {id(bn) for m in mixture_layers(model) for bn in m.bns.values()}
    for name, m in model.named_modules():
        if isinstance(m, MixtureBatchNorm):
            bns = dict(m.bns.items())
        elif isinstance(m, _BatchNorm) and id(m) not in inside and m.running_mean is not None:
            bns = {"bn": m}
        else:
            continue
        c = next(iter(bns.values())).num_features
        pick = torch.randperm(c, generator=gen)[:channels].sort().values if channels else torch.arange(c)
        out[name] = {"channels": pick.tolist(),
                     **{r: {"mean": bn.running_mean[pick].tolist(), "var": bn.running_var[pick].tolist()}
                        for r, bn in bns.items()}}
    return out


@torch.no_grad()
def batch_statistics(model: nn.Module, x: Tensor, layers: list[str]) -> dict[str, dict[str, Tensor]]:
    """The per-channel mean and (biased) variance of the input a batch ``x``
    induces at each of ``layers`` (batch norms or mixture batch norms, by
    module name): ``{layer: {"mean": (C,), "var": (C,)}}``, from one forward
    pass in eval mode (through the active BN route); nothing is updated."""
    modules = dict(model.named_modules())
    bad = [n for n in layers if not isinstance(modules.get(n), (_BatchNorm, MixtureBatchNorm))]
    if bad:
        raise ValueError(f"layers must name batch norms of the model; got {bad}")
    seen: dict[str, Tensor] = {}
    handles = [modules[n].register_forward_pre_hook(lambda mod, args, n=n: seen.setdefault(n, args[0].detach()))
               for n in layers]
    was = model.training
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out = {}
    for n in layers:
        feat = seen[n].float()
        dims = [d for d in range(feat.dim()) if d != 1]
        out[n] = {"mean": feat.mean(dims), "var": feat.var(dims, unbiased=False)}
    return out


@torch.no_grad()
def batch_vs_running(model: nn.Module, x: Tensor, layer: str, channels: int | None = 20, seed: int = 0
                     ) -> dict[str, list]:
    """Fig. 6.6: the batch statistics a batch ``x`` induces at batch norm
    ``layer`` (its input's per-channel mean and variance) beside the layer's
    running statistics. The model is run in eval mode; nothing is updated."""
    modules = dict(model.named_modules())
    if layer not in modules or not isinstance(modules[layer], _BatchNorm):
        raise ValueError(f"layer must name a batch norm of the model; got {layer!r}")
    bn = modules[layer]
    seen: dict[str, Tensor] = {}
    handle = bn.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach()))
    was = model.training
    try:
        model.eval()
        model(x)
    finally:
        handle.remove()
        model.train(was)
    feat = seen["x"].float()
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(bn.num_features, generator=gen)[:channels].sort().values if channels else \
        torch.arange(bn.num_features)
    dims = [d for d in range(feat.dim()) if d != 1]
    return {"channels": pick.tolist(),
            "batch_mean": feat.mean(dims)[pick].tolist(), "batch_var": feat.var(dims, unbiased=False)[pick].tolist(),
            "running_mean": bn.running_mean[pick].tolist(), "running_var": bn.running_var[pick].tolist()}


@torch.no_grad()
def feature_maps(model: nn.Module, x: Tensor, x_adv: Tensor, module: str | nn.Module) -> dict[str, Tensor]:
    """Fig. 4.1–4.3: the feature maps entering and leaving ``module`` (e.g. a
    denoising block's op) for clean and adversarial images, channel-averaged
    magnitude per image: ``{"clean_in", "clean_out", "adv_in", "adv_out"}``
    each (N, H, W)."""
    target = dict(model.named_modules()).get(module) if isinstance(module, str) else module
    if not isinstance(target, nn.Module):
        raise ValueError(f"module must name a submodule of the model; got {module!r}")
    seen: dict[str, Tensor] = {}

    def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
        seen["in"], seen["out"] = args[0].detach(), out.detach()

    handle = target.register_forward_hook(hook)
    was = model.training
    result = {}
    try:
        model.eval()
        for tag, images in (("clean", x), ("adv", x_adv)):
            model(images)
            result[f"{tag}_in"] = seen["in"].abs().mean(1)
            result[f"{tag}_out"] = seen["out"].abs().mean(1)
    finally:
        handle.remove()
        model.train(was)
    return result


def feature_noise(maps: dict[str, Tensor]) -> dict[str, float]:
    """How much the adversarial perturbation moves the features before and after
    the op, relative to the clean features' magnitude (the thesis's "noise in
    the features" that denoising removes): mean |adv − clean| / mean |clean|."""
    def rel(tag: str) -> float:
        return float((maps[f"adv_{tag}"] - maps[f"clean_{tag}"]).abs().mean() / maps[f"clean_{tag}"].abs().mean()
                     .clamp_min(1e-12))
    return {"before": rel("in"), "after": rel("out")}
