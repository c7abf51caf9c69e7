"""Dense Adversary Generation (DAG, thesis ch. 2, Algorithm 1).

Every recognition target t_n (a pixel in segmentation, a proposal in
detection) gets its original label l_n and an adversarial label
l'_n = π(l_n), π a random derangement of the classes drawn per image. With
the *active* targets T_m = {t_n : argmax_c f_c(X_m, t_n) = l_n} (recomputed at
every iteration over all targets, as Algorithm 1 states),

    r_m  = Σ_{t_n ∈ T_m} [∇_X f_{l'_n}(X_m, t_n) − ∇_X f_{l_n}(X_m, t_n)]   (eq. 2.2)
    r'_m = γ / ‖r_m‖_∞ · r_m                                             (eq. 2.3)
    X_{m+1} = X_m + r'_m,   r = Σ_m r'_m,

until no target is active or M_0 iterations (200 for segmentation, 150 for
detection). γ = 0.5 on the 0–255 scale is γ = 0.5/255 in robustlab's [0, 1]
pixels. As in the thesis the iterate is not clipped; the returned adversarial
image is Trunc(X + r), clipped to [0, 1]. Each image of a batch is its own
problem: its own derangement, its own step normalization, its own stop.

This module holds the algorithm over a generic per-target logit function and
the segmentation adapter :func:`dag_segmentation` (every pixel a target); the
detection adapter (dense RPN proposals of a torchvision Faster R-CNN) is
:func:`robustlab.attacks.detection.dag_detection`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_number
from robustlab._progress import progress as progress_bar
from robustlab.attacks.base import input_gradient
from robustlab.nn.state import inference_state

GAMMA = 0.5 / 255  # eq. (2.3): γ = 0.5 on the 0-255 scale
SEGMENTATION_ITERS, DETECTION_ITERS = 200, 150


@dataclass
class DAGResult:
    """``perturbation`` r (N, C, H, W); ``x_adv`` = clip(X + r, 0, 1);
    ``active`` the number of active targets per image before each iteration
    (Fig. 2.4), one list per image; ``iterations`` per image."""

    perturbation: Tensor
    x_adv: Tensor
    active: list[list[int]] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)


def derangement(num_classes: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
                ) -> Tensor:
    """A uniformly random permutation π of {0..C−1} with no fixed point
    (π(c) ≠ c), drawn by rejection (about e ≈ 2.7 draws on average)."""
    if num_classes < 2:
        raise ValueError(f"a derangement needs at least 2 classes; got {num_classes}")
    ar = torch.arange(num_classes, device="cpu")
    while True:
        p = torch.randperm(num_classes, generator=generator)
        if not bool((p == ar).any()):
            return p.to(device)


def normalized_step(r: Tensor, gamma: float = GAMMA) -> Tensor:
    """Eq. (2.3): r' = γ / ‖r‖_∞ · r, per image (a zero r stays zero)."""
    peak = r.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(r.dtype).tiny)
    return r * (gamma / peak).view(-1, *([1] * (r.dim() - 1)))


TargetLogits = Callable[[Tensor], Tensor]  # (1, C, H, W) image → (T, num_classes) logits of its targets


@torch.enable_grad()  # also under a caller's torch.no_grad()
def dag_single(
    target_logits: TargetLogits,
    x: Tensor,
    labels: Tensor,
    adv_labels: Tensor,
    *,
    mask: Tensor | None = None,
    gamma: float = GAMMA,
    max_iter: int = SEGMENTATION_ITERS,
    min_active: int = 0,
    targeted: bool = False,
) -> tuple[Tensor, list[int]]:
    """Algorithm 1 for one image ``x`` (1, C, H, W): returns (r, active counts).

    ``labels``/``adv_labels`` (T,) are l and l'; ``mask`` (T,) bool marks the
    targets that take part (background left alone, footnote 1 of §2.3.3).
    Stops when at most ``min_active`` targets are active.

    ``targeted`` (fooling images, §2.3.4): a target is active until it is
    predicted as l'_n, and l_n is its currently winning class, so each step
    pushes l'_n above whatever still beats it."""
    check_number(gamma, "gamma", low=0.0, low_open=True)  # γ <= 0 would step away from l' (eq. 2.3)
    r = torch.zeros_like(x)
    counts: list[int] = []
    keep = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask
    for _ in range(max_iter):
        xm = (x + r).detach().requires_grad_(True)
        z = target_logits(xm)
        pred = z.argmax(1)
        if targeted:
            labels = pred
            active = (pred != adv_labels) & keep
        else:
            active = (pred == labels) & keep
        n_active = int(active.sum())
        counts.append(n_active)
        if n_active <= min_active:
            break
        za = z[active]
        # Minimizing eq. (2.1) over the active targets: the gradient of Σ (f_{l'} − f_l) is r_m (eq. 2.2).
        gain = (za.gather(1, adv_labels[active, None]) - za.gather(1, labels[active, None])).sum()
        grad = input_gradient(gain, xm)
        r = r + normalized_step(grad, gamma)
    else:
        with torch.no_grad():
            pred = target_logits(x + r).argmax(1)
            counts.append(int((((pred != adv_labels) if targeted else (pred == labels)) & keep).sum()))
    return r.detach(), counts


def _pixel_logits(model: nn.Module) -> TargetLogits:
    def f(x: Tensor) -> Tensor:
        out = model(x)
        if isinstance(out, dict):  # torchvision FCN / DeepLabV3 / LRASPP
            out = out["out"]
        if out.dim() != 4:
            raise ValueError(f"a segmentation model must return (N, classes, H, W) logits; got {tuple(out.shape)}")
        return out[0].flatten(1).t()  # (H·W, classes): every pixel a target
    return f


def dag_segmentation(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    target: Tensor | None = None,
    *,
    gamma: float = GAMMA,
    max_iter: int = SEGMENTATION_ITERS,
    ignore_background: bool = False,
    background: int = 0,
    ignore_index: int = 255,
    stop_fraction: float = 0.0,
    seed: int | None = 0,
    progress: bool = False,
) -> DAGResult:
    """DAG on a segmentation network (every pixel a target, §2.3.2).

    Args:
        model: returns per-pixel logits (N, C, H, W) or a dict with ``"out"``
            (torchvision FCN / DeepLabV3 / LRASPP).
        x: (N, 3 or 1, H, W) images in [0, 1].
        labels: (N, H, W) original labels l; default the model's own clean
            predictions. Pixels equal to ``ignore_index`` are never targets.
        target: (N, H, W) adversarial labels l' for a targeted attack (fooling
            images, §2.3.4: paint any label map). Every pixel of the map is a
            target (``ignore_index`` pixels of the map excepted), background
            included. Default: l' = π(l), a random derangement π per image.
        ignore_background: untargeted only: leave targets whose label is
            ``background`` alone (footnote 1 of §2.3.3).
        stop_fraction: stop once at most this fraction of the targets is
            active (the release stops below 1%: 0.01); 0 is Algorithm 1.
        progress: report the images attacked (:mod:`robustlab._progress`).
    """
    check_images(x, "x")
    check_number(gamma, "gamma", low=0.0, low_open=True)
    if not 0 <= stop_fraction < 1:
        raise ValueError(f"stop_fraction must be in [0, 1); got {stop_fraction}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    f = _pixel_logits(model)
    rs, counts, iters = [], [], []
    with inference_state(model), progress_bar(x.shape[0], "DAG segmentation", "image", enabled=progress) as bar:
        with torch.no_grad():
            out = model(x)
            out = out["out"] if isinstance(out, dict) else out
        num_classes = out.shape[1]
        if labels is None:
            labels = out.argmax(1)
        _check_map(labels, x, "labels", num_classes, ignore_index)
        if target is not None:
            _check_map(target, x, "target", num_classes, None)
        for i in range(x.shape[0]):
            lab = labels[i].flatten().to(x.device)
            if target is not None:  # a fooling image paints its whole map, background included (§2.3.4)
                adv = target[i].flatten().to(x.device)
                valid = adv != ignore_index
                safe = torch.where(lab != ignore_index, lab, torch.zeros_like(lab))
            else:
                valid = lab != ignore_index
                if ignore_background:
                    valid &= lab != background
                safe = torch.where(valid, lab, torch.zeros_like(lab))
                adv = derangement(num_classes, gen, x.device)[safe]
            min_active = int(stop_fraction * int(valid.sum()))
            r, c = dag_single(f, x[i: i + 1], safe, adv, mask=valid, gamma=gamma, max_iter=max_iter,
                              min_active=min_active, targeted=target is not None)
            rs.append(r)
            counts.append(c)
            iters.append(len(c) - 1)
            bar.update(1)
            bar.set_postfix(iterations=len(c) - 1)
    r = torch.cat(rs)
    return DAGResult(r, (x + r).clamp(0, 1), counts, iters)


def _check_map(m: Tensor, x: Tensor, name: str, num_classes: int, ignore_index: int | None) -> None:
    if m.shape != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(f"{name} must be a label map (N, H, W) = {(x.shape[0], x.shape[2], x.shape[3])}; "
                         f"got {tuple(m.shape)}")
    if m.dtype.is_floating_point:
        raise ValueError(f"{name} must hold integer class indices; got {m.dtype}")
    vals = m[m != ignore_index] if ignore_index is not None else m
    if vals.numel() and (int(vals.min()) < 0 or int(vals.max()) >= num_classes):
        raise ValueError(f"{name} must hold classes in [0, {num_classes - 1}]"
                         f"{f' or {ignore_index}' if ignore_index is not None else ''}; got values in "
                         f"[{int(vals.min())}, {int(vals.max())}]")
