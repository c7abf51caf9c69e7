"""What every attack shares: the result type, input checks, model-state care,
seeded randomness.

An attack never changes the model. It runs with BN in inference
mode, restores the train/eval mode of every module it found, and leaves BN
running statistics and parameter ``.grad`` untouched (gradients are taken with
``torch.autograd.grad`` with respect to the input only).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._checks import channel_mismatch, check_batch, check_label_range, check_labels
from robustlab.attacks.losses import random_other_class
from robustlab.nn.state import batch_stats_state, float32_io, inference_state
from robustlab.units import to_255

# How batch norms behave while an attack runs: "running" (inference mode, the
# default of every evaluation) or "batch" (the batch's own statistics, running
# statistics frozen; adversarial training, see nn.state.batch_stats_state).
BN_STATS = ("running", "batch")


@dataclass
class AttackResult:
    """Outcome of an attack on a batch.

    Attributes:
        x_adv: (N, C, H, W) adversarial images in [0, 1].
        success: (N,) bool, the goal met by ``x_adv`` (misclassified, or the
            target reached for targeted attacks).
        steps: (N,) long, gradient iterations spent on each sample (fewer than
            the budget when early stopping retired it).
        labels: (N,) the labels attacked (given, or the model's predictions).
        target: (N,) target classes of a targeted attack, else None.
        linf, l2: (N,) perturbation norms in [0, 1] pixel units, measured
            against ``x`` on first access (or given as ``norms``).
    """

    x_adv: Tensor
    success: Tensor
    steps: Tensor
    labels: Tensor
    target: Tensor | None
    x: Tensor | None = field(default=None, repr=False)
    norms: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @classmethod
    def measure(
        cls, x: Tensor, x_adv: Tensor, success: Tensor, steps: Tensor, labels: Tensor, target: Tensor | None
    ) -> AttackResult:
        return cls(x_adv, success, steps, labels, target, x=x)

    def _norms(self) -> tuple[Tensor, Tensor]:
        if self.norms is None:
            if self.x is None:
                raise ValueError("AttackResult has neither the clean images nor the norms")
            delta = (self.x_adv - self.x).flatten(1)
            self.norms = (delta.abs().amax(dim=1), delta.norm(dim=1))
        return self.norms

    @property
    def linf(self) -> Tensor:
        return self._norms()[0]

    @property
    def l2(self) -> Tensor:
        return self._norms()[1]

    def summary(self) -> dict[str, float]:
        """Audit figures (STYLE.md 14): success rate, norms, steps, pixel range, NaNs."""
        xa, n = self.x_adv, int(self.success.shape[0])
        if n == 0:
            return {"n": 0}
        return {
            "n": n,
            "success_rate": float(self.success.float().mean()),
            "linf_mean_255": to_255(float(self.linf.mean())),
            "linf_max_255": to_255(float(self.linf.max())),
            "l2_mean": float(self.l2.mean()),
            "l2_max": float(self.l2.max()),
            "steps_mean": float(self.steps.float().mean()),
            # The audit needs the images; a record that dropped them reports None.
            "pixel_min": float(xa.min()) if xa.numel() else None,
            "pixel_max": float(xa.max()) if xa.numel() else None,
            "nan_count": int(torch.isnan(xa).sum()) if xa.numel() else None,
        }


class Attack(ABC):
    """An attack: ``x_adv = atk(model, x, y)``; ``atk.run(...)`` for the full result.

    ``y`` may be omitted: the model's own clean predictions are attacked, as the
    original DI²-FGSM release does. Targeted attacks take ``target=`` or draw a
    uniformly random wrong class per sample.

    ``bn_stats="batch"`` runs the attack with batch norms on batch statistics
    (running statistics untouched), as adversarial training may (the
    recipes' ``bn_stats="batch"``; their default is ``running``); per-sample
    early stopping and micro-batching then change the statistics a sample
    sees, so training leaves both off.
    """

    name: str = "attack"
    targeted: bool = False

    def __init__(self, seed: int | None = None, micro_batch: int | None = None,
                 shape_bucket: int | None = None, bn_stats: str = "running") -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None; got {seed!r}")
        for key, value in (("micro_batch", micro_batch), ("shape_bucket", shape_bucket)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a positive integer or None; got {value!r}")
        if bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {BN_STATS}; got {bn_stats!r}")
        self.bn_stats = bn_stats
        self.seed = seed
        self.micro_batch = micro_batch
        self.shape_bucket = shape_bucket
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The attack's own RNG on ``device`` when seeded (it advances across
        calls, so a seeded evaluation over many batches is reproducible);
        torch's global RNG otherwise."""
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def reseed(self, seed: int | None = None) -> None:
        """Restart the attack's random stream (from ``seed`` if given)."""
        if seed is not None:
            self.seed = seed
        self._generators.clear()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor | None = None, *, target: Tensor | None = None) -> Tensor:
        """Adversarial images (N, C, H, W) in [0, 1] for ``x`` of the same shape."""
        return self._run(model, x, y, target, evaluate=False).x_adv

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor | None = None, *, target: Tensor | None = None
    ) -> AttackResult:
        """Attack and report success, iterations and norms per sample."""
        return self._run(model, x, y, target, evaluate=True)

    def _run(
        self, model: nn.Module, x: Tensor, y: Tensor | None, target: Tensor | None, evaluate: bool
    ) -> AttackResult:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if target is not None and not self.targeted:
            raise ValueError(f"target was given but {self.name} is untargeted; create it with targeted=True")
        if isinstance(x, Tensor):
            y, target = (t.to(x.device) if isinstance(t, Tensor) else t for t in (y, target))
        # One device sync validates pixels and labels; the largest label is kept
        # for the class-count check at the first forward pass.
        maxima = check_batch(x, {"y": y, "target": target})
        y, target = (t.long() if isinstance(t, Tensor) and t.dtype != torch.long else t for t in (y, target))
        if x.dtype != torch.float32:  # half-precision images: attacked (and returned) in float32
            x = x.float()
        model = float32_io(model)  # a float64 or half model computes in its precision on the images cast to it
        state = inference_state(model) if self.bn_stats == "running" else batch_stats_state(model)
        with state, torch.enable_grad():  # also under a caller's torch.no_grad()
            try:
                return self._attack(model, x.detach(), y, target, evaluate, maxima)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError:  # the model failed on x: say so when the channels are why
                hint = channel_mismatch(model, x)
                if hint is None:
                    raise
                raise ValueError(hint) from None

    def _labels(
        self, model: nn.Module, x: Tensor, y: Tensor | None, target: Tensor | None, gen: torch.Generator | None,
        maxima: dict[str, int],
    ) -> tuple[Tensor, Tensor]:
        """(true labels, labels the objective uses). Without y the model's own
        clean predictions are attacked; targeted attacks without ``target``
        draw a uniformly random wrong class per sample."""
        if y is None or (self.targeted and target is None):
            logits = self.logits(model, x)
            y = resolve_labels(logits, y, "y", maxima.get("y"))
            if self.targeted and target is None:
                if logits.shape[1] < 2:
                    raise ValueError("a targeted attack needs a model with at least 2 classes")
                target = random_other_class(y, logits.shape[1], gen)
        return y, (target if self.targeted else y)

    def forward(self, model: nn.Module, x: Tensor) -> Tensor:
        """model(x) with the batch padded up to a multiple of ``shape_bucket``
        (default: 32 on CUDA, none on CPU) and the padding's logits dropped.

        Early stopping and per-sample diversity change the batch size at every
        step; cuDNN builds a new convolution plan for every new shape, at about
        a millisecond per layer, which would cost more than the attack saves.
        Padding rows are detached copies of the first image: in inference mode
        they change neither the other rows' logits nor their gradients."""
        n = x.shape[0]
        bucket = self.shape_bucket or (32 if x.is_cuda else 1)
        if self.bn_stats == "batch":
            bucket = 1  # padding rows would join the batch statistics
        if bucket <= 1 or n % bucket == 0:
            return model(x)
        pad = x[:1].detach().expand(bucket - n % bucket, *x.shape[1:])
        return model(torch.cat([x, pad]))[:n]

    def _label_check(self, maxima: dict[str, int]) -> tuple[str, int] | None:
        """(name, largest index) of the labels the objective takes, when the user
        gave them: checked against the class count at the first forward pass.
        Labels made by the attack (predictions, random targets) fit by construction."""
        if "target" in maxima:
            return "target", maxima["target"]
        if "y" in maxima and not self.targeted:
            return "y", maxima["y"]
        return None

    @torch.no_grad()
    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """model(x) without gradients, ``micro_batch`` images at a time."""
        mb = self.micro_batch
        if mb is None or x.shape[0] <= mb:
            return self.forward(model, x)
        return torch.cat([self.forward(model, x[s: s + mb]) for s in range(0, x.shape[0], mb)])

    @abstractmethod
    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor | None, target: Tensor | None, evaluate: bool,
        maxima: dict[str, int],
    ) -> AttackResult:
        """Attack checked inputs; the model is already in inference state.
        ``maxima`` holds the largest given label of ``y`` / ``target``."""


def input_gradient(loss: Tensor, x: Tensor) -> Tensor:
    """∂loss/∂x, zero where the loss does not depend on ``x``: a model that
    detaches its input, or computes under ``no_grad``, is gradient masking in
    its plainest form, and a zero gradient lets the attack run on (and the
    masking checks flag it) instead of failing inside autograd."""
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def check_logits(logits: Any, n: int | None = None) -> Tensor:
    """The model's output must be a tensor of logits of shape (N, num_classes)
    (``n``: N, when the caller knows how many images it gave)."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"model must return a logits tensor (N, num_classes); got {type(logits).__name__} (wrap a "
                        "model that returns a tuple or dict so it returns the logits)")
    if logits.dim() != 2 or (n is not None and logits.shape[0] != n):
        raise ValueError(f"model must return logits of shape (N, num_classes); got shape {tuple(logits.shape)}"
                         + (f" for {n} images" if n is not None else ""))
    return logits


def resolve_labels(logits: Tensor, y: Tensor | None, name: str = "y", high: int | None = None) -> Tensor:
    """Labels to attack: ``y`` checked against the model's class count, or the
    predictions ``logits.argmax(1)`` when ``y`` is None. ``high``, the largest
    label if already known, spares a device sync."""
    check_logits(logits)
    if y is None:
        return logits.argmax(dim=1)
    if high is None:
        check_labels(y, logits.shape[0], name, num_classes=logits.shape[1])
    else:
        check_label_range(name, 0, high, logits.shape[1])
    return y
