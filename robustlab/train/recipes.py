"""Training recipes: how one batch becomes a loss (thesis ch. 4–7).

A recipe works in two phases, so the one training loop can run any of them
on one device or under DistributedDataParallel:

1. :meth:`Recipe.prepare` makes the training images — the clean batch, its
   adversarial counterpart (made by the attack core, through the BN route and
   BN statistics the recipe names), augmented copies. No parameter gradient.
2. :meth:`Recipe.loss` runs the forward passes and returns the loss. The loop
   calls it inside one module forward (DDP needs a single forward per
   backward, whatever the number of BN routes).

Registry (:func:`create`): ``vanilla``, ``madry`` (§4.5), ``fast`` (PGD-1,
§5.3.1), ``mixed`` (eq. 6.1 with a clean ratio, Fig. 6.1), ``alp`` (§6.4.1),
``mbn`` (§6.4.2), ``advprop`` (Algorithm 2) and ``advprop_finegrained``
(§7.5.4). SAT (§5.4) is any recipe on a model built with a smooth ``act``;
the backward-only controls of Table 5.1 are the ``smooth_backward`` option.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._checks import check_number
from robustlab.attacks import presets
from robustlab.attacks.base import Attack
from robustlab.data.augment import create_augment
from robustlab.nn.activations import PSOFTPLUS_ALPHA, smooth_relu_backward
from robustlab.nn.norm import DEFAULT_ROUTES, drop_routes, route, route_names
from robustlab.units import from_255

Batch = dict[str, Tensor]
Logs = dict[str, Tensor]

#: §7.5.1: AdvProp's PGD attacker, ε = 4 and n = ε + 1 = 5 iterations (α = 1).
ADVPROP_EPS, ADVPROP_STEPS = from_255(4), 5
#: §5.3.1: fast adversarial training, PGD-1 with ε = 4 (step β = ε).
FAST_EPS = from_255(4)
#: §7.5.4: fine-grained AdvProp's routes (main, augmented, adversarial).
_FINE_ROUTES = ("clean", "aug", "adv")

SMOOTH_BACKWARD = (None, "attacker", "optimizer", "both")
ATTACKERS = ("pgd", "ifgsm", "gd", "fgsm")


class Recipe:
    """Vanilla training: cross-entropy on the clean batch (eq. 7.1).

    The training loop sets ``label_smoothing`` (a training option, §4.5: 0.1).

    Args:
        smooth_backward: Table 5.1's controls on a ReLU network — ReLU forward,
            parametric-softplus backward (α = ``smooth_alpha``) for the
            ``"attacker"`` (inner maximization), the ``"optimizer"`` (outer
            minimization) or ``"both"``.
        smooth_alpha: α of eq. (5.3), 10 in §5.3.2.
    """

    name = "vanilla"
    routes: tuple[str, ...] = ()  # BN routes the model must have

    label_smoothing: float = 0.0

    def __init__(self, *, smooth_backward: str | None = None, smooth_alpha: float = PSOFTPLUS_ALPHA) -> None:
        if smooth_backward not in SMOOTH_BACKWARD:
            raise ValueError(f"smooth_backward must be one of {SMOOTH_BACKWARD}; got {smooth_backward!r}")
        self.smooth_backward = smooth_backward
        self.smooth_alpha = check_number(smooth_alpha, "smooth_alpha", low=0.0, low_open=True)

    # -- the two phases --------------------------------------------------
    def prepare(self, model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Batch:
        """The tensors :meth:`loss` needs. ``seed`` seeds this step's draws."""
        return {"x": x, "y": y}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Logs]:
        logits = model(batch["x"])
        loss = self.ce(logits, batch["y"])
        return loss, {"loss": loss.detach(), "acc": _acc(logits, batch["y"])}

    # -- helpers -----------------------------------------------------------
    def ce(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def optimizer_backward(self) -> contextlib.AbstractContextManager:
        """Context for the forward pass whose backward updates the weights."""
        if self.smooth_backward in ("optimizer", "both"):
            return smooth_relu_backward(self.smooth_alpha)
        return contextlib.nullcontext()

    def check_model(self, model: nn.Module) -> None:
        """Raise if ``model`` lacks the BN routes this recipe trains."""
        have = route_names(model)
        missing = [r for r in self.routes if r not in have]
        if missing:
            raise ValueError(
                f"recipe {self.name!r} needs a model whose batch norms have routes {self.routes} "
                f"(create_model(..., norm='mbn', routes={self.routes})); the model has {have or 'none'}"
            )

    def export(self, model: nn.Module) -> nn.Module:
        """The model to evaluate and ship (AdvProp drops its auxiliary BNs)."""
        return model

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "smooth_backward": self.smooth_backward, "smooth_alpha": self.smooth_alpha}


class AdversarialRecipe(Recipe):
    """Madry adversarial training, 100% adversarial (§4.5, eq. 5.1/7.2).

    The attacker is a preset of the attack core. Defaults are §4.5's: PGD with
    ε = 16, α = 1, 30 iterations, a random target class (§4.6: "targeted
    attacks are also used in our adversarial training"), and 20% of batches
    starting from the clean image, 80% from a random point of the ε-ball.

    Args:
        attack: ``pgd``, ``ifgsm`` (no random start), ``gd`` (no projection,
            Table 7.7) or ``fgsm``.
        norm: ``linf`` (the thesis) or ``l2``.
        eps, step_size: in [0, 1] pixel units (configs take 0–255 notation,
            or pixels as ``0.5px`` for L2).
        steps: attack iterations n.
        targeted: attack towards a uniformly random wrong class.
        random_start, clean_init_prob: PGD's initialization (§4.5).
        bn_stats: BN statistics during the attack. ``running`` (default):
            every BN in testing mode — it normalizes with its running
            statistics and updates none — and the optimizer step then trains
            on the adversarial batch in training mode. This is how the
            authors' releases make the adversarial examples of §4.5 and §5.3
            (FAIR's and SAT's ``adv_model.py``: ``argscope(BatchNorm,
            training=False)``, "we use the testing mode of it during attack").
            ``batch``: the training graph's batch
            statistics with the running statistics frozen. Either way the
            attack updates no running statistic and leaves every module in
            the train/eval mode it found.
        attack_route: the BN route the attack runs through (mixture-BN
            models); None keeps the model's current route. With ``running``
            the attack uses that route's own running statistics: MBN_adv's
            for mixture BN (§6.4.2), the auxiliary BNs' for AdvProp
            (Algorithm 2, line 3).
    """

    name = "madry"

    def __init__(self, *, attack: str = "pgd", norm: str = "linf", eps: float = presets.EPS_PGD,
                 steps: int = presets.PGD_STEPS, step_size: float = presets.ALPHA, targeted: bool = True,
                 random_start: bool | None = None, clean_init_prob: float | None = presets.CLEAN_INIT_PROB,
                 bn_stats: str = "running", attack_route: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        if attack not in ATTACKERS:
            raise ValueError(f"attack must be one of {ATTACKERS}; got {attack!r}")
        opts: dict[str, Any] = {"eps": eps, "norm": norm, "targeted": bool(targeted), "bn_stats": bn_stats}
        if attack != "fgsm":
            opts.update(steps=steps, step_size=step_size)
        if attack in ("pgd", "gd") and random_start is not None:
            opts["random_start"] = bool(random_start)
        if attack == "pgd" and clean_init_prob is not None:
            opts["clean_init_prob"] = clean_init_prob
        if self.smooth_backward in ("attacker", "both"):
            opts["smooth_grad"] = self.smooth_alpha
        self.attack_name = attack
        self.attack: Attack = presets.create(attack, **opts)
        self.attack_route = attack_route

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        self.attack.reseed(seed)
        with _route(model, self.attack_route):
            return self.attack(model, x, y)

    def prepare(self, model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Batch:
        return {"x_adv": self.adversarial(model, x, y, seed), "y": y}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Logs]:
        logits = model(batch["x_adv"])
        loss = self.ce(logits, batch["y"])
        return loss, {"loss": loss.detach(), "acc_adv": _acc(logits, batch["y"])}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "attack": self.attack.config() if hasattr(self.attack, "config") else
                self.attack_name, "bn_stats": self.attack.bn_stats, "attack_route": self.attack_route}


class MixedRecipe(AdversarialRecipe):
    """Clean + adversarial images, eq. (6.1):
    J = α·J(θ, x_clean, y) + (1 − α)·J(θ, x_adv, y), α = 0.5 (after Goodfellow et al.).

    Args:
        alpha: α of eq. (6.1).
        clean_ratio: fraction of each batch's clean images kept (Fig. 6.1:
            100% adv + {100, 80, …, 0}% clean); 0 is Madry training.
        alp_weight: λ of adversarial logit pairing (§6.4.1, Kannan et al.):
            + λ·mean((z_clean − z_adv)²) over the kept pairs; 0 turns it off.
        routes: None feeds clean and adversarial images through the same BNs
            in *one* forward pass, so BN estimates statistics on the mixture
            (the failure §6.4.2 diagnoses). ``("clean", "adv")`` is mixture BN:
            clean images through MBN_clean, adversarial ones (and the attack)
            through MBN_adv.
    """

    name = "mixed"

    def __init__(self, *, alpha: float = 0.5, clean_ratio: float = 1.0, alp_weight: float = 0.0,
                 routes: tuple[str, str] | None = None, **kw: Any) -> None:
        if routes is not None:
            routes = tuple(routes)
            if len(routes) != 2:
                raise ValueError(f"routes must name the clean and the adversarial route; got {routes}")
            kw.setdefault("attack_route", routes[1])
        super().__init__(**kw)
        self.alpha = check_number(alpha, "alpha", low=0.0, high=1.0)
        self.clean_ratio = check_number(clean_ratio, "clean_ratio", low=0.0, high=1.0)
        self.alp_weight = check_number(alp_weight, "alp_weight", low=0.0)
        if self.alp_weight and not self.clean_ratio:
            raise ValueError("alp_weight needs clean images to pair with: set clean_ratio > 0")
        self.routes = routes or ()

    def prepare(self, model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Batch:
        k = round(self.clean_ratio * len(x))  # the batch is shuffled: its first k images are a random subset
        return {"x": x[:k], "x_adv": self.adversarial(model, x, y, seed), "y": y}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Logs]:
        xc, xa, y = batch["x"], batch["x_adv"], batch["y"]
        k = len(xc)
        if self.routes:
            with route(model, self.routes[0]):
                zc = model(xc) if k else None
            with route(model, self.routes[1]):
                za = model(xa)
        else:
            z = model(torch.cat([xc, xa]))
            zc, za = (z[:k] if k else None), z[k:]
        loss_adv = self.ce(za, y)
        logs: Logs = {"loss_adv": loss_adv.detach(), "acc_adv": _acc(za, y)}
        if zc is None:
            loss = loss_adv
        else:
            loss_clean = self.ce(zc, y[:k])
            loss = self.alpha * loss_clean + (1 - self.alpha) * loss_adv
            logs.update(loss_clean=loss_clean.detach(), acc_clean=_acc(zc, y[:k]))
            if self.alp_weight:
                pairing = F.mse_loss(zc.float(), za[:k].float())
                loss = loss + self.alp_weight * pairing
                logs["loss_alp"] = pairing.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha, "clean_ratio": self.clean_ratio,
                "alp_weight": self.alp_weight, "routes": list(self.routes) or None}


class AdvPropRecipe(AdversarialRecipe):
    """AdvProp, Algorithm 2: the adversarial batch is made through the
    auxiliary BNs (by default in testing mode, on their own running
    statistics: see ``bn_stats``); loss = L_c(clean, main BNs) +
    L_a(adversarial, auxiliary BNs); the auxiliary BNs are dropped in the
    exported model (§7.4.3).

    Defaults are §7.5.1's attacker: PGD, ε = 4, n = ε + 1 = 5, α = 1,
    untargeted. ``attack`` may be ``ifgsm`` or ``gd`` (Table 7.7).

    Args:
        routes: (main, auxiliary) BN routes.
        augment: fine-grained AdvProp (§7.5.4): the name of an augmentation
            (``autoaugment``); augmented clean images get their own auxiliary
            route and the adversarial images are made from them. ``routes``
            is then (main, augmented, adversarial).
    """

    name = "advprop"

    def __init__(self, *, eps: float = ADVPROP_EPS, steps: int = ADVPROP_STEPS, step_size: float = presets.ALPHA,
                 targeted: bool = False,
                 clean_init_prob: float | None = 0.0, routes: tuple[str, ...] | None = None,
                 augment: str | None = None, **kw: Any) -> None:
        fine = augment is not None
        routes = tuple(routes) if routes is not None else (_FINE_ROUTES if fine else DEFAULT_ROUTES)
        if len(routes) != (3 if fine else 2):
            raise ValueError(f"routes must be (main, {'augmented, ' if fine else ''}auxiliary); got {routes}")
        super().__init__(eps=eps, steps=steps, step_size=step_size, targeted=targeted,
                         clean_init_prob=clean_init_prob, attack_route=routes[-1], **kw)
        self.routes = routes
        self.augment_name = augment
        self.augment = create_augment(augment) if fine else None
        if fine:
            self.name = "advprop_finegrained"

    def prepare(self, model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Batch:
        batch = {"x": x, "y": y}
        source = x
        if self.augment is not None:
            gen = torch.Generator().manual_seed(seed)
            source = batch["x_aug"] = self.augment(x, gen)
        batch["x_adv"] = self.adversarial(model, source, y, seed)
        return batch

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Logs]:
        y = batch["y"]
        keys = ("x", "x_aug", "x_adv") if self.augment is not None else ("x", "x_adv")
        total: Tensor | None = None
        logs: Logs = {}
        for key, name in zip(keys, self.routes):
            with route(model, name):
                z = model(batch[key])
            part = self.ce(z, y)
            total = part if total is None else total + part
            tag = key[2:] if key != "x" else "clean"
            logs[f"loss_{tag}"], logs[f"acc_{tag}"] = part.detach(), _acc(z, y)
        logs["loss"] = total.detach()
        return total, logs

    def export(self, model: nn.Module) -> nn.Module:
        exported = drop_routes(model, keep=self.routes[0])
        spec = getattr(model, "robustlab_spec", None)
        if spec is not None:  # it now rebuilds as the plain-BN architecture
            exported.robustlab_spec = {**spec, "norm": "bn" if spec.get("norm") == "mbn" else spec.get("norm")}
        return exported

    def config(self) -> dict[str, Any]:
        return {**super().config(), "routes": list(self.routes), "augment": self.augment_name}


@contextlib.contextmanager
def _route(model: nn.Module, name: str | None) -> Iterator[None]:
    if name is None:
        yield
    else:
        with route(model, name):
            yield


def _acc(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.detach().argmax(1) == y).float().mean()


# -- registry -------------------------------------------------------------
def _fast(**kw: Any) -> AdversarialRecipe:
    """Fast adversarial training, single-step PGD-1 with a random start
    (§5.3.1: ε = 4, step β = 4, untargeted)."""
    kw = {"eps": FAST_EPS, "steps": 1, "targeted": False, "clean_init_prob": 0.0, **kw}
    kw.setdefault("step_size", kw["eps"])
    recipe = AdversarialRecipe(**kw)
    recipe.name = "fast"
    return recipe


def _alp(**kw: Any) -> MixedRecipe:
    """ALP (§6.4.1): 100% adv + 100% clean with logit pairing, λ = 0.5."""
    recipe = MixedRecipe(**{"alp_weight": 0.5, **kw})
    recipe.name = "alp"
    return recipe


def _mbn(**kw: Any) -> MixedRecipe:
    """Mixture BN (§6.4.2): clean images through MBN_clean, adversarial
    images through MBN_adv; evaluate with either route."""
    recipe = MixedRecipe(**{"routes": DEFAULT_ROUTES, **kw})
    recipe.name = "mbn"
    return recipe


def _finegrained(**kw: Any) -> AdvPropRecipe:
    """Fine-grained AdvProp (§7.5.4): a third route for AutoAugment images."""
    return AdvPropRecipe(**{"augment": "autoaugment", **kw})


_REGISTRY: dict[str, Callable[..., Recipe]] = {
    "vanilla": Recipe,
    "madry": AdversarialRecipe,
    "fast": _fast,
    "mixed": MixedRecipe,
    "alp": _alp,
    "mbn": _mbn,
    "advprop": AdvPropRecipe,
    "advprop_finegrained": _finegrained,
}


def names() -> list[str]:
    return list(_REGISTRY)


def create(name: str, **options: Any) -> Recipe:
    """A recipe by name; options not given take the thesis defaults.

    ``create("madry", eps=8/255, steps=7)``, ``create("advprop", attack="gd")``.
    Budgets are in [0, 1] pixel units."""
    key = _key(name)
    accepted = accepted_options(key)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"recipe {key} got unknown option(s) {unknown}; accepted: {', '.join(sorted(accepted))}")
    return _REGISTRY[key](**options)


def _key(name: str) -> str:
    key = str(name).lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"recipe must be one of {names()}; got {name!r}")
    return key


def accepted_options(name: str) -> set[str]:
    """The keyword options :func:`create` accepts for recipe ``name``."""
    key = _key(name)
    cls = {"vanilla": Recipe, "madry": AdversarialRecipe, "fast": AdversarialRecipe}.get(key)
    if cls is None:
        cls = AdvPropRecipe if key.startswith("advprop") else MixedRecipe
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        accepted |= {p for p, v in inspect.signature(klass.__init__).parameters.items()
                     if p != "self" and v.kind is v.KEYWORD_ONLY}
    return accepted
