"""What every attack shares: the result type, input checks, model-state care,
seeded randomness.

DESIGN.md: an attack never changes the model. It runs with BN in inference
mode, restores the train/eval mode of every module it found, and leaves BN
running statistics and parameter ``.grad`` untouched (gradients are taken with
``torch.autograd.grad`` with respect to the input only).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_labels
from robustlab.attacks.losses import random_other_class
from robustlab.nn.state import inference_state
from robustlab.units import to_255


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
        linf, l2: (N,) perturbation norms in [0, 1] pixel units.
    """

    x_adv: Tensor
    success: Tensor
    steps: Tensor
    labels: Tensor
    target: Tensor | None
    linf: Tensor
    l2: Tensor

    @classmethod
    def measure(
        cls, x: Tensor, x_adv: Tensor, success: Tensor, steps: Tensor, labels: Tensor, target: Tensor | None
    ) -> AttackResult:
        delta = (x_adv - x).flatten(1)
        return cls(x_adv, success, steps, labels, target, delta.abs().amax(dim=1), delta.norm(dim=1))

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
    """

    name: str = "attack"
    targeted: bool = False

    def __init__(self, seed: int | None = None, micro_batch: int | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None; got {seed!r}")
        if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                        or micro_batch < 1):
            raise ValueError(f"micro_batch must be a positive integer or None; got {micro_batch!r}")
        self.seed = seed
        self.micro_batch = micro_batch
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
        x = check_images(x).detach()
        if y is not None:
            y = check_labels(y, x.shape[0], "y").to(x.device)
        if target is not None:
            if not self.targeted:
                raise ValueError(f"target was given but {self.name} is untargeted; create it with targeted=True")
            target = check_labels(target, x.shape[0], "target").to(x.device)
        with inference_state(model):
            return self._attack(model, x, y, target, evaluate)

    def _labels(
        self, model: nn.Module, x: Tensor, y: Tensor | None, target: Tensor | None, gen: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """(true labels, labels the objective uses). Without y the model's own
        clean predictions are attacked; targeted attacks without ``target``
        draw a uniformly random wrong class per sample."""
        if y is None or (self.targeted and target is None):
            logits = self.logits(model, x)
            y = resolve_labels(logits, y)
            if self.targeted and target is None:
                if logits.shape[1] < 2:
                    raise ValueError("a targeted attack needs a model with at least 2 classes")
                target = random_other_class(y, logits.shape[1], gen)
        return y, (target if self.targeted else y)

    @torch.no_grad()
    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """model(x) without gradients, ``micro_batch`` images at a time."""
        mb = self.micro_batch
        if mb is None or x.shape[0] <= mb:
            return model(x)
        return torch.cat([model(x[s: s + mb]) for s in range(0, x.shape[0], mb)])

    @abstractmethod
    def _attack(
        self, model: nn.Module, x: Tensor, y: Tensor | None, target: Tensor | None, evaluate: bool
    ) -> AttackResult:
        """Attack checked inputs; the model is already in inference state."""


def resolve_labels(logits: Tensor, y: Tensor | None, name: str = "y") -> Tensor:
    """Labels to attack: ``y`` checked against the model's class count, or the
    predictions ``logits.argmax(1)`` when ``y`` is None."""
    if logits.dim() != 2:
        raise ValueError(f"model must return logits of shape (N, num_classes); got shape {tuple(logits.shape)}")
    if y is None:
        return logits.argmax(dim=1)
    check_labels(y, logits.shape[0], name, num_classes=logits.shape[1])
    return y
