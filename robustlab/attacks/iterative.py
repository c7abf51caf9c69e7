"""The one iterative gradient loop behind every gradient-sign attack.

FGSM (eq. 3.2), I-FGSM (3.3), MI-FGSM (3.4), DI²-FGSM (3.5–3.6), M-DI²-FGSM
(3.7), PGD (§4.5) and GD (§7.5.4) are presets of :class:`IterativeAttack`, so
the relations of §3.3.4 (p = 0, μ = 0, N = 1) hold by construction:

    g_{n+1} = μ·g_n + ∇/‖∇‖₁            ∇ = ∇_X L(T(X_n; p), y)
    X_{n+1} = Proj_ε{ X_n + α·dir(g_{n+1}) }

with dir = sign for L∞ and ∇/‖∇‖₂ for L2. Dividing by the per-sample L1 norm
(taken as the mean absolute value, which differs by a constant) only changes
the magnitude the momentum accumulates, never the sign of a plain step.

Per-sample early stopping retires samples that already meet the goal (DAG's
active set applied to classification). Random draws are always made for the
whole batch and then indexed, so the samples that remain follow exactly the
trajectory they follow without early stopping.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from robustlab._checks import check_number, error_line
from robustlab.attacks.base import Attack, AttackResult, check_logits, input_gradient, resolve_labels
from robustlab.attacks.diversity import DiversityDraw, InputDiversity
from robustlab.attacks.losses import LossFn, get_loss, goal_met
from robustlab.attacks.losses import targeted as targeted_loss
from robustlab.attacks.threat import ThreatModel, check_pixel_budget, create_threat
from robustlab.nn.activations import smooth_relu_backward
from robustlab.units import to_255

_AUTOCAST = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class IterativeAttack(Attack):
    """The gradient-sign family as one loop with knobs.

    Args:
        eps: radius of the threat ball in [0, 1] pixel units (16/255 = thesis ε 16).
        steps: number of iterations N (0 returns the starting point).
        step_size: α in pixel units (for L2: the length of each step).
        norm: ``linf`` (the thesis) or ``l2``.
        mu: momentum decay μ (eq. 3.4); 0 gives I-FGSM.
        p: input-diversity probability (eq. 3.6); 0 gives no transform.
        diversity: an :class:`InputDiversity` with non-default options
            (interpolation, pad value, per-batch draws, resize back); its ``p``
            is used. Give ``p`` or ``diversity``, not both.
        random_start: start from a uniform point of the ball (PGD, Madry et al.).
        clean_init_prob: with random_start, probability that a batch starts
            from the clean image instead (§4.5: 0.2 in training).
        project: project onto the ε-ball after each step; False is GD (§7.5.4).
            Pixels are always kept in [0, 1].
        loss: ``ce`` (eq. 3.1), ``cw`` (margin) or a callable
            ``(logits, y) -> (N,)`` to maximize.
        targeted: move towards a target class (given as ``target=`` or drawn
            uniformly among the wrong classes).
        early_stop: retire each sample as soon as it meets the goal.
        stop_on: what retires a sample (and what ``success`` reports):
            ``"goal"`` (the attack's goal: the target class, or any wrong
            class) or ``"misclassified"`` (prediction ≠ true label — what
            robust accuracy counts, also for targeted attacks).
        smooth_grad: if set, the α of the parametric-softplus derivative that
            replaces ReLU's in the attacker's backward pass (§5.3.2, α = 10).
        autocast: ``"bf16"`` or ``"fp16"`` runs the model's forward pass under
            ``torch.autocast`` (mixed precision, for GPUs); the image, the step
            and the projection stay in the input's precision.
        micro_batch: run the model on at most this many images at a time; the
            attack itself holds the whole batch. With early stopping this keeps
            every model call full while the active set shrinks, so a large pool
            costs what its hard samples cost.
        shape_bucket: pad every model call to a multiple of this many images
            (default 32 on CUDA, none on CPU) so varying batch sizes reuse a
            few cuDNN plans; see :meth:`Attack.forward`.
        seed: seed of the attack's own random stream.
        bn_stats: ``"running"`` (inference-mode batch norms, the default) or
            ``"batch"`` (batch statistics, running statistics frozen: an
            option of adversarial training, see :class:`Attack`).
    """

    def __init__(
        self,
        *,
        eps: float,
        steps: int,
        step_size: float,
        norm: str = "linf",
        mu: float = 0.0,
        p: float = 0.0,
        diversity: InputDiversity | None = None,
        random_start: bool = False,
        clean_init_prob: float = 0.0,
        project: bool = True,
        loss: str | LossFn = "ce",
        targeted: bool = False,
        early_stop: bool = False,
        stop_on: str = "goal",
        smooth_grad: float | None = None,
        autocast: str | None = None,
        micro_batch: int | None = None,
        shape_bucket: int | None = None,
        seed: int | None = None,
        bn_stats: str = "running",
        name: str = "iterative",
    ) -> None:
        super().__init__(seed, micro_batch, shape_bucket, bn_stats)
        self.name = name
        self.threat: ThreatModel = create_threat(norm, eps)
        self.steps = int(check_number(steps, "steps", low=0, integer=True))
        self.step_size = check_number(step_size, "step_size", low=0.0, low_open=True)
        if self.threat.name == "linf":
            check_pixel_budget(self.step_size, "step_size")
        self.mu = check_number(mu, "mu", low=0.0)
        p = check_number(p, "p", low=0.0, high=1.0)
        if diversity is not None and p:
            raise ValueError("give the diversity probability either as p or inside diversity, not both")
        self.diversity = diversity if diversity is not None else (InputDiversity(p) if p else None)
        if self.diversity is not None and self.diversity.p == 0:
            self.diversity = None
        self.random_start = bool(random_start)
        self.clean_init_prob = check_number(clean_init_prob, "clean_init_prob", low=0.0, high=1.0)
        self.project = bool(project)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        base_loss = get_loss(loss)
        self.targeted = bool(targeted)
        self.objective: LossFn = targeted_loss(base_loss) if self.targeted else base_loss
        self.early_stop = bool(early_stop)
        if stop_on not in ("goal", "misclassified"):
            raise ValueError(f"stop_on must be 'goal' or 'misclassified'; got {stop_on!r}")
        self.stop_on = stop_on
        self.smooth_grad = None if smooth_grad is None else check_number(
            smooth_grad, "smooth_grad", low=0.0, low_open=True
        )
        if autocast not in _AUTOCAST:
            raise ValueError(f"autocast must be 'bf16', 'fp16' or None; got {autocast!r}")
        self.autocast = autocast

    @property
    def eps(self) -> float:
        return self.threat.eps

    @property
    def p(self) -> float:
        return self.diversity.p if self.diversity is not None else 0.0

    def config(self) -> dict:
        """The attack's knobs, with budgets also in the thesis's 0–255 units."""
        return {
            "name": self.name,
            "norm": self.threat.name,
            "eps": self.eps,
            "eps_255": to_255(self.eps),
            "steps": self.steps,
            "step_size": self.step_size,
            "step_size_255": to_255(self.step_size),
            "mu": self.mu,
            "p": self.p,
            "diversity": repr(self.diversity) if self.diversity is not None else None,
            "random_start": self.random_start,
            "clean_init_prob": self.clean_init_prob,
            "project": self.project,
            "loss": self.loss_name,
            "targeted": self.targeted,
            "early_stop": self.early_stop,
            "stop_on": self.stop_on,
            "smooth_grad": self.smooth_grad,
            "autocast": self.autocast,
            "micro_batch": self.micro_batch,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        c = self.config()
        keys = ("norm", "eps_255", "steps", "step_size_255", "mu", "p", "random_start", "project", "loss", "targeted")
        return f"{type(self).__name__}[{self.name}](" + ", ".join(f"{k}={c[k]}" for k in keys) + ")"

    # -- the loop ---------------------------------------------------------

    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor | None, target: Tensor | None, evaluate: bool,
        maxima: dict[str, int],
    ) -> AttackResult:
        gen = self.generator(x.device)
        n = x.shape[0]
        check = self._label_check(maxima)
        y, labels = self._labels(model, x, y, target, gen, maxima)
        target = labels if self.targeted else None
        box = self.threat.box(x) if self.project else None
        x_adv = self._start(x, box, gen)
        g = torch.zeros_like(x) if self.mu else None  # momentum buffer (eq. 3.4)
        steps = torch.full((n,), self.steps, dtype=torch.long, device=x.device)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        out = x_adv.clone() if self.early_stop else None
        idx = torch.arange(n, device=x.device)  # active samples (early stop)
        xs = x
        # What retires a sample: the attack's goal, or leaving the true class.
        crit, crit_targeted = (labels, self.targeted) if self.stop_on == "goal" else (y, False)
        for it in range(self.steps):
            draw = self._draw(n, x, gen, idx)
            grad, logits = self._gradient(model, x_adv, labels, draw, check if it == 0 else None, first=it == 0)
            if self.early_stop:
                done = self._done(model, x_adv, logits, crit, crit_targeted, draw)
                if bool(done.any()):
                    fin = idx[done]
                    out[fin], steps[fin], success[fin] = x_adv.detach()[done], it, True
                    keep = ~done
                    if not bool(keep.any()):
                        return AttackResult.measure(x, out, success, steps, y, target)
                    idx, xs, x_adv, grad, labels, crit = (t[keep] for t in (idx, xs, x_adv, grad, labels, crit))
                    g = None if g is None else g[keep]
                    box = None if box is None else (box[0][keep], box[1][keep])
            x_adv, g = self._step(x_adv, grad, g, xs, box)
        if self.early_stop:
            out[idx] = x_adv
        else:
            out = x_adv
        if self.early_stop or evaluate:
            logits = self.logits(model, x_adv)
            if self.steps == 0 and check is not None:
                resolve_labels(logits, labels, *check)
            success[idx] = goal_met(logits, crit, crit_targeted)
        return AttackResult.measure(x, out, success, steps, y, target)

    def _start(self, x: Tensor, box: tuple[Tensor, Tensor] | None, gen: torch.Generator | None) -> Tensor:
        if not self.random_start:
            return x.clone()
        if self.clean_init_prob > 0:
            # §4.5: one coin per batch, as the thesis's training code draws it.
            coin = torch.rand((), generator=gen, device=x.device)
            if float(coin) < self.clean_init_prob:
                return x.clone()
        return self._project(x + self.threat.random_delta(x, gen), x, box)

    def _project(self, x_adv: Tensor, x: Tensor, box: tuple[Tensor, Tensor] | None) -> Tensor:
        if box is None:
            return x_adv.clamp_(0, 1)
        return self.threat.project(x_adv, x, box)

    def _draw(self, n: int, x: Tensor, gen: torch.Generator | None, idx: Tensor) -> DiversityDraw | None:
        if self.diversity is None:
            return None
        draw = self.diversity.draw(n, x.shape[-2], x.shape[-1], gen, x.device)
        return draw if idx.shape[0] == n else draw.subset(idx)

    def _gradient(
        self, model: nn.Module, x_adv: Tensor, labels: Tensor, draw: DiversityDraw | None,
        check: tuple[str, int] | None = None, first: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """∇_X L(T(X; p), labels) summed over the batch (so each sample's gradient
        is independent of the others), and the logits it came from; in chunks
        of ``micro_batch`` images when set. On the ``first`` iteration the
        logits are checked to be finite."""
        n, mb = x_adv.shape[0], self.micro_batch
        if mb is None or n <= mb:
            return self._chunk_gradient(model, x_adv, labels, draw, check, first)
        parts = []
        for s in range(0, n, mb):
            sub = None if draw is None else draw.subset(torch.arange(s, min(s + mb, n), device=x_adv.device))
            parts.append(self._chunk_gradient(model, x_adv[s: s + mb], labels[s: s + mb], sub,
                                              check if s == 0 else None, first))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _chunk_gradient(
        self, model: nn.Module, x_adv: Tensor, labels: Tensor, draw: DiversityDraw | None,
        check: tuple[str, int] | None, first: bool = False,
    ) -> tuple[Tensor, Tensor]:
        x_adv = x_adv.detach().requires_grad_(True)
        with contextlib.ExitStack() as stack:
            if self.smooth_grad:
                stack.enter_context(smooth_relu_backward(self.smooth_grad))
            if self.autocast:
                stack.enter_context(torch.autocast(x_adv.device.type, dtype=_AUTOCAST[self.autocast]))
            logits = diverse_logits(partial(self.forward, model), x_adv, draw, self.diversity)
            if self.autocast:
                logits = logits.float()
            check_logits(logits)
            if check is not None:  # given labels against the class count, before any loss is taken
                resolve_labels(logits, labels, *check)
            if first and not bool(torch.isfinite(logits).all()):
                raise ValueError("the model returned NaN or infinite logits: an attack on them would report "
                                 "meaningless successes")
            loss = self.objective(logits, labels).sum()
            grad = input_gradient(loss, x_adv)
        return grad, logits.detach()

    def _done(
        self, model: nn.Module, x_adv: Tensor, logits: Tensor, labels: Tensor, targeted: bool,
        draw: DiversityDraw | None,
    ) -> Tensor:
        """Stop criterion met by the current iterate, judged on the untransformed image."""
        if draw is not None:
            logits = self.logits(model, x_adv.detach())
        return goal_met(logits, labels, targeted)

    @torch.no_grad()
    def _step(
        self, x_adv: Tensor, grad: Tensor, g: Tensor | None, x: Tensor, box: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor | None]:
        # With μ = 0 the momentum update is ∇/‖∇‖₁, a positive rescaling of ∇
        # per sample: neither its sign (L∞) nor its direction (L2) changes, so
        # the division is skipped (test_momentum_update checks the identity).
        direction = grad if g is None else momentum_update(g, grad, self.mu)
        x_adv = x_adv.detach().add_(self.threat.direction(direction), alpha=self.step_size)
        return self._project(x_adv, x, box), g


def momentum_update(g: Tensor, grad: Tensor, mu: float) -> Tensor:
    """Eq. (3.4)/(3.7), in place on ``g``: g ← μ·g + ∇/‖∇‖₁.

    The per-sample L1 norm is taken as the mean |∇| over (C, H, W), as the
    original release does (a constant factor apart, it changes nothing); the
    clamp only guards an all-zero gradient against 0/0."""
    reduce = tuple(range(1, grad.dim()))
    l1 = grad.abs().mean(dim=reduce, keepdim=True).clamp_min_(torch.finfo(grad.dtype).tiny)
    return g.mul_(mu).addcdiv_(grad, l1)


def diverse_logits(
    model: Callable[[Tensor], Tensor], x: Tensor, draw: DiversityDraw | None, diversity: InputDiversity | None
) -> Tensor:
    """model(T(x; p)) for a batch whose per-sample coins may differ.

    Without ``resize_back`` transformed images are larger than the others, so
    the batch runs as two groups (inference-mode BN makes that exact) and the
    logits are put back in order."""
    if draw is None or diversity is None:
        return model(x)
    apply, size = draw.apply, (x.shape[-2], x.shape[-1])
    if diversity.resize_back:
        return model(torch.where(apply.view(-1, 1, 1, 1), diversity.transform(x, draw), x))  # the input size
    n_apply = int(apply.sum())  # the one sync per step: group sizes must be known
    if n_apply == 0:
        return model(x)
    if n_apply == x.shape[0]:
        return _transformed_forward(model, diversity.transform(x, draw), size)
    order = torch.argsort((~apply).to(torch.uint8), stable=True)  # transformed first
    ia, ib = order[:n_apply], order[n_apply:]
    la = _transformed_forward(model, diversity.transform(x[ia], draw.subset(ia)), size)
    lb = model(x[ib])
    return torch.cat([la, lb])[order.argsort()]


def _transformed_forward(model: Callable[[Tensor], Tensor], xt: Tensor, size: tuple[int, int]) -> Tensor:
    """model(T(x)) for the padded images ``xt`` of ``size`` inputs; a model
    that takes one input size only is a ValueError saying how to attack it."""
    try:
        return model(xt)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AssertionError) as err:  # timm's ViTs assert their input size
        h, w = xt.shape[-2:]
        raise ValueError(
            f"model: it fails on the {h}×{w} images input diversity makes of {size[0]}×{size[1]} ones (§3.4.1 "
            "pads beyond the input size, which a model with global pooling takes). For a model of one input "
            "size (a ViT, a flatten head), resize them back: diversity=InputDiversity(p, resize_back=True), "
            f"or --resize-back on the command line. The model's error: {error_line(err, default='')}"
        ) from None
