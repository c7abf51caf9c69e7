"""The gradient-masking checklist, run with every robustness evaluation.

A robustness number is only as good as the attack behind it. Gradient
masking (shattered, vanishing or random gradients) makes a gradient attack
fail while the model stays breakable; these checks catch its symptoms
(after Carlini et al., "On Evaluating Adversarial Robustness", and the
AutoAttack report's own checks):

1. ``eps_monotone``: accuracy does not rise as ε grows.
2. ``steps_monotone``: accuracy does not rise with more iterations.
3. ``unbounded``: an attack with ε = 1 (the whole pixel range) reaches ~0%.
4. ``blackbox``: a gradient-free attack (random search over the ε-ball's
   vertices, the core of Square Attack) or a transfer attack from a surrogate
   is not stronger than the white-box gradient attack.
5. ``noise``: random noise in the ε-ball is not stronger than PGD.
6. ``loss_increases``: the loss grows along the attack's iterations.

Each violation becomes a :class:`SanityWarning`; none means the checks saw no
symptom, not a proof of robustness.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.cascade import Stage, model_forward, run_batch
from robustlab.attacks.iterative import IterativeAttack
from robustlab.attacks.threat import create_threat
from robustlab.eval.metrics import predict
from robustlab.nn.state import inference_state


@dataclass
class SanityWarning:
    check: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


@dataclass
class SanityReport:
    measurements: dict[str, Any]
    warnings: list[SanityWarning]

    def as_dict(self) -> dict[str, Any]:
        return {"measurements": self.measurements, "warnings": [asdict(w) for w in self.warnings]}


PREDICT_BATCH = 512  # images per clean-prediction call when no batch size is given


def _pgd(eps: float, steps: int, step_size: float | None = None, seed: int = 0, random_start: bool = True,
         norm: str = "linf", batch_size: int | None = None) -> IterativeAttack:
    """The checklist's PGD: an image leaves once misclassified (the checks
    compare accuracies, counted on any iterate), so a model that breaks
    easily costs a step or two, not the full budget."""
    alpha = step_size if step_size is not None else max(eps / 4, 2.5 * eps / max(steps, 1))
    if norm == "linf":
        alpha = min(alpha, 1.0)  # a step past the whole pixel range moves nothing more (ε ≥ 0.4 px)
    return IterativeAttack(eps=eps, steps=steps, step_size=alpha, random_start=random_start, seed=seed, name="pgd",
                           norm=norm, early_stop=True, stop_on="misclassified", micro_batch=batch_size)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int | None = None) -> float:
    return float((predict(model, x, batch_size or PREDICT_BATCH) == y).float().mean()) if len(y) else 0.0


def random_search(model: nn.Module, x: Tensor, y: Tensor, eps: float, queries: int = 200, seed: int = 0,
                  norm: str = "linf", batch_size: int | None = None) -> Tensor:
    """A gradient-free attack: Square Attack's random search over the ε-ball
    (Andriushchenko et al.; :mod:`robustlab.attacks.cascade`), ``queries``
    model evaluations per image, stopping on each image once misclassified;
    at most ``batch_size`` images per model call (default: all)."""
    with inference_state(model):
        out = run_batch(model_forward(model), x, y, [Stage("square", "square", queries)], eps=eps, norm=norm,
                        seed=seed, capacity=batch_size)
    return out.x_adv


@torch.no_grad()
def _mean_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int | None = None) -> float:
    size = batch_size or PREDICT_BATCH
    with inference_state(model):
        total = sum(float(F.cross_entropy(model(x[i: i + size]), y[i: i + size], reduction="sum"))
                    for i in range(0, len(y), size))
    return total / len(y)


def run_sanity_checks(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    eps: float,
    steps: int = 20,
    surrogate: nn.Module | None = None,
    queries: int = 200,
    noise_draws: int = 5,
    tolerance: float = 0.02,
    unbounded_max_accuracy: float = 0.05,
    limit: int | None = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    norm: str = "linf",
    sweeps: bool = True,
    batch_size: int | None = None,
) -> SanityReport:
    """Measure the checklist on up to ``limit`` images; see the module docstring.

    ``tolerance`` is how much accuracy an inequality may be violated by (one
    image in 50 by default) before it is reported. ``sweeps=False`` skips the
    two monotonicity sweeps (checks 1 and 2) and keeps the checks that reveal
    masked gradients (3-6): what :func:`robustlab.eval.evaluate` runs first to
    decide on its gradient-free fallback. ``batch_size``: the most images one
    model call takes (default: all ``limit`` at once)."""
    if eps <= 0:
        raise ValueError(f"eps must be > 0; got {eps}")
    device = device if device is not None else next(model.parameters()).device
    x, y = _first(loader, limit)
    x, y = x.to(device), y.to(device)
    model = model.to(device)
    bs = batch_size

    def pgd(e: float, k: int, alpha: float | None = None) -> IterativeAttack:
        return _pgd(e, k, alpha, seed=seed, norm=norm, batch_size=bs)

    def acc(images: Tensor) -> float:
        return _accuracy(model, images, y, bs)

    m: dict[str, Any] = {"n": len(y), "eps": eps, "steps": steps, "clean": acc(x)}
    warn: list[SanityWarning] = []

    eps_grid = [eps / 4, eps / 2, eps, 2 * eps] if sweeps else [eps]
    adv = {e: pgd(e, steps)(model, x, y) for e in eps_grid}
    m["eps_curve"] = {f"{e:.6g}": acc(xa) for e, xa in adv.items()}
    accs = list(m["eps_curve"].values())
    if any(b > a + tolerance for a, b in zip(accs, accs[1:])):
        warn.append(SanityWarning("eps_monotone", f"accuracy rises with ε: {m['eps_curve']}", m["eps_curve"]))
    if sweeps:
        alpha = eps / 4
        m["steps_curve"] = {str(k): acc(pgd(eps, k, alpha)(model, x, y))
                            for k in (1, max(2, steps // 4), steps)}
        accs = list(m["steps_curve"].values())
        if any(b > a + tolerance for a, b in zip(accs, accs[1:])):
            warn.append(SanityWarning("steps_monotone", f"accuracy rises with iterations: {m['steps_curve']}",
                                      m["steps_curve"]))
    pgd_acc = m["eps_curve"][f"{eps:.6g}"]
    m["pgd"] = pgd_acc
    # ε = 1 covers the whole pixel box in L∞; in L2 the box's diameter is √(C·H·W).
    big = 1.0 if norm == "linf" else float(x[0].numel()) ** 0.5
    m["unbounded"] = acc(pgd(big, max(steps, 20), big / 10)(model, x, y))
    if m["unbounded"] > unbounded_max_accuracy:
        warn.append(SanityWarning("unbounded", f"an attack with ε = 1 leaves accuracy at {m['unbounded']:.3f} "
                                  f"(expected ≤ {unbounded_max_accuracy}): gradients may be masked",
                                  {"accuracy": m["unbounded"]}))
    black = {}
    # A black-box attack cannot beat a white-box one that already leaves nothing standing.
    m["random_search"] = (acc(random_search(model, x, y, eps, queries, seed, norm, bs))
                          if pgd_acc > tolerance else None)
    if m["random_search"] is not None:
        black["random_search"] = m["random_search"]
    if surrogate is not None:
        surrogate = surrogate.to(device)
        m["transfer"] = black["transfer"] = acc(pgd(eps, steps)(surrogate, x, y))
    for name, black_acc in black.items():
        if black_acc < pgd_acc - tolerance:
            warn.append(SanityWarning("blackbox", f"black-box {name} ({black_acc:.3f}) is stronger than white-box "
                                      f"PGD ({pgd_acc:.3f})", {"blackbox": black_acc, "whitebox": pgd_acc}))
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noisy_right = torch.ones_like(y, dtype=torch.bool)
    for _ in range(noise_draws):
        noise = create_threat(norm, eps).random_delta(x, gen)
        noisy_right &= predict(model, (x + noise).clamp(0, 1), bs or PREDICT_BATCH) == y
    m["noise"] = float(noisy_right.float().mean())
    if m["noise"] < pgd_acc - tolerance:
        warn.append(SanityWarning("noise", f"random noise ({m['noise']:.3f}) is stronger than PGD ({pgd_acc:.3f})",
                                  {"noise": m["noise"], "pgd": pgd_acc}))
    # The loss at the attack's random start and at its end (the ε run of the curve above).
    start = _mean_loss(model, pgd(eps, 0)(model, x, y), y, bs)
    end = _mean_loss(model, adv[eps], y, bs)
    m["loss_start"], m["loss_end"] = start, end
    if not end > start:
        warn.append(SanityWarning("loss_increases", f"the loss does not grow along the attack ({start:.4f} → "
                                  f"{end:.4f})", {"start": start, "end": end}))
    return SanityReport(m, warn)


def _first(loader: Iterable[tuple[Tensor, Tensor]], limit: int | None) -> tuple[Tensor, Tensor]:
    """The first ``limit`` images of ``loader``, reading no further batch than needed."""
    xs, ys, held = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        held += len(y)
        if limit is not None and held >= limit:
            break
    if not xs:
        raise ValueError("loader yielded no images")
    return torch.cat(xs)[:limit], torch.cat(ys)[:limit]


def sanity_check(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], *, eps: float, **kw: Any
                 ) -> list[SanityWarning]:
    """The checklist's violations (empty when no symptom of masking was seen)."""
    return run_sanity_checks(model, loader, eps=eps, **kw).warnings


def format_warnings(warnings: Sequence[SanityWarning]) -> str:
    return "\n".join(str(w) for w in warnings) if warnings else "no gradient-masking symptom found"
