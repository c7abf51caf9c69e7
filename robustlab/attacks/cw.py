"""C&W L2 and D-C&W (§3.4.2).

Carlini & Wagner's L2 attack: minimize ‖X' − X‖²₂ + c·f(X') over X' =
(tanh(w) + 1)/2 with Adam, where f = max(z_y − max_{i≠y} z_i, −κ) untargeted
(max_{i≠t} z_i − z_t targeted), with a per-sample binary search over c and
per-sample tracking of the smallest successful perturbation. D-C&W evaluates
f on T(X'; p), the input-diversity transform (§3.3.3); the distance and the
success of the returned image are judged without the transform.

Defaults: the thesis's settings (250 iterations, lr 0.01, confidence 10) and,
for what the thesis leaves out, cleverhans' (which §3.3 says was used):
5 binary-search steps from c = 1e-2, early abort when the loss stalls.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from robustlab._checks import check_number
from robustlab.attacks.base import Attack, AttackResult, check_logits, resolve_labels
from robustlab.attacks.diversity import InputDiversity
from robustlab.attacks.iterative import diverse_logits
from robustlab.attacks.losses import cw_margin, goal_met

_UPPER_INIT = 1e10


class CarliniWagnerL2(Attack):
    """C&W L2 (D-C&W when ``p > 0`` or ``diversity`` is given).

    Args:
        steps: Adam iterations per binary-search step (§3.4.2: 250).
        lr: Adam learning rate (§3.4.2: 0.01).
        confidence: κ, the margin a success must reach (§3.4.2: 10).
        binary_search_steps: rounds of the search over c (cleverhans: 5);
            1 runs a single round at ``initial_const``.
        initial_const: the first c (cleverhans: 1e-2).
        abort_early: stop a round when the total loss has not fallen by 0.01%
            over the last tenth of the iterations.
        targeted, p, diversity, shape_bucket, seed: as for :class:`IterativeAttack`.
    """

    def __init__(
        self,
        *,
        steps: int = 250,
        lr: float = 0.01,
        confidence: float = 10.0,
        binary_search_steps: int = 5,
        initial_const: float = 1e-2,
        abort_early: bool = True,
        targeted: bool = False,
        p: float = 0.0,
        diversity: InputDiversity | None = None,
        shape_bucket: int | None = None,
        seed: int | None = None,
        name: str = "cw",
    ) -> None:
        super().__init__(seed, shape_bucket=shape_bucket)
        self.name = name
        self.steps = int(check_number(steps, "steps", low=1, integer=True))
        self.lr = check_number(lr, "lr", low=0.0, low_open=True)
        self.confidence = check_number(confidence, "confidence", low=0.0)
        self.binary_search_steps = int(check_number(binary_search_steps, "binary_search_steps", low=1, integer=True))
        self.initial_const = check_number(initial_const, "initial_const", low=0.0, low_open=True)
        self.abort_early = bool(abort_early)
        self.targeted = bool(targeted)
        p = check_number(p, "p", low=0.0, high=1.0)
        if diversity is not None and p:
            raise ValueError("give the diversity probability either as p or inside diversity, not both")
        self.diversity = diversity if diversity is not None else (InputDiversity(p) if p else None)

    def config(self) -> dict:
        return {
            "name": self.name,
            "norm": "l2",
            "steps": self.steps,
            "lr": self.lr,
            "confidence": self.confidence,
            "binary_search_steps": self.binary_search_steps,
            "initial_const": self.initial_const,
            "abort_early": self.abort_early,
            "targeted": self.targeted,
            "p": self.diversity.p if self.diversity is not None else 0.0,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}[{self.name}](" + ", ".join(f"{k}={v}" for k, v in self.config().items()) + ")"

    def _margin(self, logits: Tensor, labels: Tensor) -> Tensor:
        """How far past the decision boundary the goal is: > 0 once met."""
        m = cw_margin(logits, labels)
        return -m if self.targeted else m

    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor | None, target: Tensor | None, evaluate: bool,
        maxima: dict[str, int],
    ) -> AttackResult:
        gen = self.generator(x.device)
        check = self._label_check(maxima)
        y, labels = self._labels(model, x, y, target, gen, maxima)
        target = labels if self.targeted else None
        n = x.shape[0]
        # tanh-space start at the clean image; the 1 − 1e-6 keeps atanh finite at 0 and 1.
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        lower = torch.zeros(n, device=x.device, dtype=x.dtype)
        upper = torch.full_like(lower, _UPPER_INIT)
        const = torch.full_like(lower, self.initial_const)
        best = x.clone()
        best_l2 = torch.full_like(lower, float("inf"))
        used = 0
        for _ in range(self.binary_search_steps):
            found, iters = self._round(model, x, w0, labels, const, best, best_l2, gen, check if used == 0 else None)
            used += iters
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < _UPPER_INIT / 10, (lower + upper) / 2, const * 10)
        steps = torch.full((n,), used, dtype=torch.long, device=x.device)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        if evaluate:
            success = goal_met(self.logits(model, best), labels, self.targeted)
        return AttackResult.measure(x, best, success, steps, y, target)

    def _round(
        self,
        model: nn.Module,
        x: Tensor,
        w0: Tensor,
        labels: Tensor,
        const: Tensor,
        best: Tensor,
        best_l2: Tensor,
        gen: torch.Generator | None,
        check: tuple[str, int] | None,
    ) -> tuple[Tensor, int]:
        """One Adam run at fixed c; updates ``best``/``best_l2`` in place and
        returns which samples reached the confident goal, and the iterations run."""
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        prev = float("inf")
        check_every = max(self.steps // 10, 1)
        for it in range(self.steps):
            x_adv = (torch.tanh(w) + 1) / 2
            draw = None if self.diversity is None else self.diversity.draw(
                x.shape[0], x.shape[-2], x.shape[-1], gen, x.device
            )
            logits = diverse_logits(partial(self.forward, model), x_adv, draw, self.diversity)
            check_logits(logits)
            if check is not None and it == 0:
                resolve_labels(logits, labels, *check)
            dist = (x_adv - x).flatten(1).pow(2).sum(dim=1)
            loss = dist + const * (-self._margin(logits, labels)).clamp_min(-self.confidence)
            with torch.no_grad():
                clean = logits if draw is None else self.forward(model, x_adv)
                ok = (self._margin(clean, labels) >= self.confidence) & goal_met(clean, labels, self.targeted)
                better = ok & (dist < best_l2)
                best_l2.copy_(torch.where(better, dist, best_l2))
                best.copy_(torch.where(better.view(-1, 1, 1, 1), x_adv, best))
                found |= ok
            total = loss.sum()
            (w.grad,) = torch.autograd.grad(total, w)
            opt.step()
            if self.abort_early and it % check_every == 0:
                value = float(total.detach())
                if value > prev * 0.9999:
                    return found, it + 1
                prev = value
        return found, self.steps
