"""White-box robustness curves: accuracy against PGD with 10 … 2000 iterations
(Fig. 4.6, Fig. 6.2/6.3), in one pass.

Robust accuracy at N iterations counts an image as broken when any of the
iterates x_0 … x_N is misclassified (an attacker keeps its best iterate; this
is what makes the curve non-increasing). With a fixed step size the PGD
trajectory does not depend on N, and in inference mode one image's trajectory
does not depend on the others, so a single run of max(N) iterations with
per-sample early stopping gives every point of the curve exactly: an image
retired at iteration n is broken for every N ≥ n, and the images still
running cost what they cost. Restarts (fresh random starts) and several
attacks combine per image: broken if any of them breaks it (worst case).

Protocols (:data:`PROTOCOLS`):

* ``ch4`` (§4.6.1): targeted (random wrong class), ε = 16, α = 1, random start.
* ``ch5`` (§5.3.1): untargeted, ε = 4, β = 1, PGD-200.
* ``ch6`` (§6.3): targeted, ε = 16, α = 1, random start, up to PGD-2000.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._progress import duration
from robustlab.attacks.iterative import IterativeAttack
from robustlab.eval.metrics import pooled_batches
from robustlab.units import from_255

_logger = logging.getLogger(__name__)

DEFAULT_STEPS = (10, 20, 50, 100, 200, 500, 1000, 2000)

PROTOCOLS: dict[str, dict[str, Any]] = {
    "ch4": {"eps": from_255(16), "step_size": from_255(1), "targeted": True, "steps": DEFAULT_STEPS},
    "ch5": {"eps": from_255(4), "step_size": from_255(1), "targeted": False, "steps": (1, 10, 50, 100, 200)},
    "ch6": {"eps": from_255(16), "step_size": from_255(1), "targeted": True, "steps": DEFAULT_STEPS},
}


@dataclass
class RobustnessCurve:
    """Accuracy per number of PGD iterations, and the per-image record behind it.

    ``broken_at[i]`` is the first iteration at which image i was misclassified
    (0: already on the clean image or the random start; ``inf``: never within
    ``max(steps)``)."""

    steps: list[int]
    accuracy: list[float]
    broken_at: Tensor
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    iterations_run: int = 0  # model gradient evaluations over all images, restarts and attacks

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "accuracy": self.accuracy, "config": self.config,
                "seconds": round(self.seconds, 3), "n": int(self.broken_at.numel()),
                "iterations_run": self.iterations_run,
                "iterations_fixed_step": int(self.broken_at.numel()) * max(self.steps) * self.config.get("runs", 1)}


def pgd_for_curve(eps: float, step_size: float, steps: int, *, targeted: bool = False, random_start: bool = True,
                  norm: str = "linf", seed: int = 0, **kw: Any) -> IterativeAttack:
    """The PGD run behind a curve: fixed step, early stop on misclassification."""
    return IterativeAttack(eps=eps, steps=steps, step_size=step_size, norm=norm, random_start=random_start,
                           targeted=targeted, early_stop=True, stop_on="misclassified", seed=seed, name="pgd", **kw)


def _broken_at(attack: IterativeAttack, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, int]:
    res = attack.run(model, x, y)
    at = res.steps.double().cpu()
    at[~res.success.cpu()] = float("inf")
    return at, int(res.steps.sum())


def robustness_curve(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    steps: Sequence[int] = DEFAULT_STEPS,
    eps: float = from_255(16),
    step_size: float = from_255(1),
    targeted: bool = False,
    random_start: bool = True,
    restarts: int = 1,
    norm: str = "linf",
    seed: int = 0,
    device: str | torch.device | None = None,
    pool: int | None = None,
    micro_batch: int | None = None,
    loss: str = "ce",
) -> RobustnessCurve:
    """Robust accuracy of ``model`` for each number of PGD iterations in ``steps``.

    Args:
        loader: (x, y) batches; x (N, C, H, W) in [0, 1].
        steps: the curve's iteration counts (one run of ``max(steps)`` serves all).
        eps, step_size: pixel units (16/255, 1/255: §4.6.1, §6.3).
        targeted: towards a uniformly random wrong class (§4.6.1, §6.3);
            accuracy still counts the true label.
        restarts: independent random starts; an image is broken if any breaks it.
        loss: ``ce`` (eq. 3.1) or ``cw`` (the logit margin, which does not
            saturate where softmax does; a worst case over both is stronger).
        pool: attack this many images at a time (default: each batch);
            with ``micro_batch`` the model sees full batches while the hard
            images are the only ones left.
    """
    steps = sorted({int(s) for s in steps})
    if not steps or steps[0] < 0:
        raise ValueError(f"steps must be non-negative iteration counts; got {steps}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1; got {restarts}")
    if device is None:
        device = next(model.parameters()).device
    model = model.to(device)
    start = time.perf_counter()
    broken: list[Tensor] = []
    total_iters = 0
    for xb, yb in pooled_batches(loader, pool):
        xb, yb = xb.to(device), yb.to(device)
        at = torch.full((len(yb),), float("inf"), dtype=torch.double)
        for r in range(restarts):
            atk = pgd_for_curve(eps, step_size, steps[-1], targeted=targeted, random_start=random_start, norm=norm,
                                seed=seed + r, micro_batch=micro_batch, loss=loss)
            b, iters = _broken_at(atk, model, xb, yb)
            at, total_iters = torch.minimum(at, b), total_iters + iters
        broken.append(at)
    broken_at = torch.cat(broken) if broken else torch.zeros(0, dtype=torch.double)
    cfg = {"eps": eps, "step_size": step_size, "targeted": targeted, "random_start": random_start,
           "restarts": restarts, "norm": norm, "seed": seed, "runs": restarts, "loss": loss}
    return RobustnessCurve(steps, accuracy_at(broken_at, steps), broken_at, cfg, time.perf_counter() - start,
                           total_iters)


def accuracy_at(broken_at: Tensor, steps: Sequence[int]) -> list[float]:
    """Fraction of images not broken by iteration N, for each N."""
    n = max(int(broken_at.numel()), 1)
    return [float((broken_at > s).sum()) / n for s in steps]


def worst_case(curves: Sequence[RobustnessCurve]) -> RobustnessCurve:
    """Per image, the worst over several curves on the same images (an image
    survives only if every attack fails): the robust accuracy of the ensemble
    of attackers."""
    if not curves:
        raise ValueError("worst_case needs at least one curve")
    steps = curves[0].steps
    if any(c.steps != steps or c.broken_at.shape != curves[0].broken_at.shape for c in curves):
        raise ValueError("curves must share their steps and images")
    at = torch.stack([c.broken_at for c in curves]).amin(dim=0)
    cfg = {"worst_case_of": [c.config for c in curves], "runs": sum(c.config.get("runs", 1) for c in curves)}
    return RobustnessCurve(steps, accuracy_at(at, steps), at, cfg, sum(c.seconds for c in curves),
                           sum(c.iterations_run for c in curves))


def whitebox_protocol(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    steps: Sequence[int],
    eps: float,
    step_size: float,
    losses: Sequence[str] = ("ce",),
    targeted: Sequence[bool] = (False,),
    restarts: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    checklist: bool = True,
    norm: str = "linf",
) -> dict[str, Any]:
    """The ``whitebox`` protocol: a robustness curve for each loss × (untargeted,
    targeted) run under the ``norm`` ball, their per-image worst case, and the masking checklist on
    the first 100 images (``rl.eval.protocols``; used by ``robustlab eval``
    and studies alike).

    Returns ``{"curves": {name: RobustnessCurve}, "worst": RobustnessCurve,
    "sanity": SanityReport | None}``; names read ``PGD untargeted``,
    ``PGD targeted (C&W margin)``, ..."""
    from robustlab.eval.sanity import run_sanity_checks

    curves = {}
    for loss in losses:
        for t in targeted:
            name = f"PGD {'targeted' if t else 'untargeted'}" + (" (C&W margin)" if loss == "cw" else "")
            curves[name] = robustness_curve(model, loader, steps=steps, eps=eps, step_size=step_size, targeted=t,
                                            restarts=restarts, seed=seed, device=device, loss=loss, norm=norm)
            c = curves[name]
            _logger.info("whitebox %s: accuracy %.1f%% after %d steps (%s)", name, 100 * c.accuracy[-1],
                         c.steps[-1], duration(c.seconds))
    worst = worst_case(list(curves.values())) if len(curves) > 1 else next(iter(curves.values()))
    sanity = (run_sanity_checks(model, loader, eps=eps, steps=10, queries=100, noise_draws=2, limit=100, seed=seed,
                                device=device, norm=norm) if checklist else None)
    return {"curves": curves, "worst": worst, "sanity": sanity}
