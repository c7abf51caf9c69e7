"""Named attacks: presets of the one iterative loop, plus C&W; a registry by name.

Every default is the thesis's, with the section it comes from:

============  ===============================================================
fgsm          eq. (3.2): one step of size ε. ε = 15 (§3.4.1).
ifgsm         eq. (3.3): α = 1, N = min(ε + 4, 1.25ε) in 0–255 units (§3.4.1).
mifgsm        eq. (3.4): as ifgsm with μ = 1 (§3.4.1).
di2fgsm       eq. (3.5): as ifgsm with p = 0.5 (§3.4.1).
mdi2fgsm      eq. (3.7): as ifgsm with μ = 1, p = 0.5 (§3.4.1).
pgd           the evaluation PGD (Madry et al.; §6.3): a random start always,
              no clean-start coin, α = 2.5·ε/N unless given, N = 20, ε = 16.
pgd_train     §4.5, the attacker of adversarial training: ε = 16, α = 1,
              N = 30, random start, 20% of batches from the clean image;
              α = max(1, ε/N) in 0–255 units when N is given (PGD-10 with
              ε = 16 steps by ε/10; the FAIR release rule).
gd            §7.5.4: PGD without projection, ε = 4 (random start), N = 5, α = 1.
cw, dcw       §3.4.2: C&W L2, 250 iterations, lr 0.01, confidence 10; D-C&W
              adds input diversity p = 0.5. C&W minimizes ‖δ‖₂ and has no
              ε-ball: an ``eps`` given (as studies give every attack) is
              recorded and not used.
============  ===============================================================

Every preset takes ``eps`` (refused above 1 for L∞: budgets are in pixel
units, ``16/255``), ``steps``, ``step_size``, ``norm`` and ``seed``; FGSM is
one step of size ε by definition and refuses any other ``steps`` or
``step_size`` with an error.

The thesis works in L∞ only. For ``norm="l2"`` the defaults are not the
thesis's: N = 10 for the ch. 3 family (the others keep their N) and
α = 2.5·ε/N for every preset (Madry et al.'s rule).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from robustlab._checks import check_number
from robustlab.attacks.base import Attack
from robustlab.attacks.cw import CarliniWagnerL2
from robustlab.attacks.iterative import IterativeAttack
from robustlab.units import from_255, to_255

#: §3.4.1: "the maximum perturbation of each pixel to be ε = 15".
EPS_CH3 = from_255(15)
#: §4.5 / §6.3: "the maximum perturbation for each pixel ε = 16".
EPS_PGD = from_255(16)
#: §4.5 / §6.3: "the attack step size α = 1".
ALPHA = from_255(1)
#: §4.5 / §6.3: "the number of attack iterations n = 30" (training).
PGD_STEPS = 30
#: §3.4.1: "decay factor μ is set to be 1"; "the probability p is set to be 0.5".
MU, P = 1.0, 0.5
#: §7.5.4: GD with "ε = 4 (if applicable), n = 5, α = 1.0".
EPS_GD, GD_STEPS = from_255(4), 5
#: §4.5: "20% of training batches use clean images to initialize PGD".
CLEAN_INIT_PROB = 0.2
L2_STEPS = 10
#: The evaluation PGD's iterations (the ``quick`` protocol's PGD-20).
EVAL_PGD_STEPS = 20


def ifgsm_steps(eps: float) -> int:
    """N = min(ε + 4, 1.25ε) in 0–255 units, rounded down, at least 1 (§3.4.1, after Kurakin et al.)."""
    e = to_255(eps)
    return max(1, int(min(e + 4, 1.25 * e)))


def pgd_step_size(eps: float, steps: int) -> float:
    """α = max(1, ε/N) in 0–255 units, so N steps can cross the ball (§4.5, FAIR code)."""
    return max(ALPHA, eps / max(steps, 1))


def _is_linf(norm: str) -> bool:
    return str(norm).lower() in ("linf", "inf")


def _l2_step(eps: float, steps: int) -> float:
    """α = 2.5·ε/N for L2 (Madry et al.; the thesis has no L2 setting)."""
    return 2.5 * check_number(eps, "eps", low=0.0) / max(int(steps), 1)


def _family(
    name: str, *, eps: float, norm: str, steps: int | None, step_size: float | None, **kw: Any
) -> IterativeAttack:
    """Shared defaults of the ch. 3 family: N and α from §3.4.1 (L∞)."""
    eps = check_number(eps, "eps", low=0.0)
    if steps is None:
        steps = ifgsm_steps(eps) if _is_linf(norm) else L2_STEPS
    if step_size is None:
        step_size = ALPHA if _is_linf(norm) else _l2_step(eps, steps)
    return IterativeAttack(eps=eps, steps=steps, step_size=step_size, norm=norm, name=name, **kw)


def fgsm(*, eps: float = EPS_CH3, norm: str = "linf", steps: int | None = None, step_size: float | None = None,
         **kw: Any) -> IterativeAttack:
    """FGSM, eq. (3.2): X + ε·sign(∇) — the N = 1, α = ε member of the family.
    ``steps`` other than 1 or a ``step_size`` other than ε are refused (use ifgsm)."""
    if steps is not None and steps != 1:
        raise ValueError(f"steps: fgsm is a single step of size ε (eq. 3.2); got steps={steps!r}; "
                         "use ifgsm for N steps")
    if step_size is not None and step_size != eps:
        raise ValueError(f"step_size: fgsm steps by ε (eq. 3.2); got step_size={step_size!r}; use ifgsm for α ≠ ε")
    return IterativeAttack(eps=eps, steps=1, step_size=max(eps, 1e-12), norm=norm, name="fgsm", **kw)


def ifgsm(*, eps: float = EPS_CH3, steps: int | None = None, step_size: float | None = None,
          norm: str = "linf", **kw: Any) -> IterativeAttack:
    """I-FGSM, eq. (3.3)."""
    return _family("ifgsm", eps=eps, norm=norm, steps=steps, step_size=step_size, **kw)


def mifgsm(*, eps: float = EPS_CH3, mu: float = MU, steps: int | None = None, step_size: float | None = None,
           norm: str = "linf", **kw: Any) -> IterativeAttack:
    """MI-FGSM, eq. (3.4)."""
    return _family("mifgsm", eps=eps, norm=norm, steps=steps, step_size=step_size, mu=mu, **kw)


def _p(p: float | None, kw: dict[str, Any]) -> float:
    """The diversity probability: the thesis's 0.5 unless an InputDiversity is given."""
    if p is None:
        return 0.0 if kw.get("diversity") is not None else P
    return p


def di2fgsm(*, eps: float = EPS_CH3, p: float | None = None, steps: int | None = None, step_size: float | None = None,
            norm: str = "linf", **kw: Any) -> IterativeAttack:
    """DI²-FGSM, eq. (3.5)–(3.6)."""
    return _family("di2fgsm", eps=eps, norm=norm, steps=steps, step_size=step_size, p=_p(p, kw), **kw)


def mdi2fgsm(*, eps: float = EPS_CH3, mu: float = MU, p: float | None = None, steps: int | None = None,
             step_size: float | None = None, norm: str = "linf", **kw: Any) -> IterativeAttack:
    """M-DI²-FGSM, eq. (3.7)."""
    return _family("mdi2fgsm", eps=eps, norm=norm, steps=steps, step_size=step_size, mu=mu, p=_p(p, kw), **kw)


def pgd(*, eps: float = EPS_PGD, steps: int = EVAL_PGD_STEPS, step_size: float | None = None, norm: str = "linf",
        random_start: bool = True, clean_init_prob: float = 0.0, **kw: Any) -> IterativeAttack:
    """The evaluation PGD: a random start always (§6.3: "we always initialize
    the adversarial image randomly" in evaluation), α = 2.5·ε/N (Madry et
    al.'s rule) unless given. The attacker of adversarial training is
    :func:`pgd_train`."""
    eps = check_number(eps, "eps", low=0.0)
    steps = int(check_number(steps, "steps", low=0, integer=True))
    if step_size is None:  # ε = 0 (the identity) still needs a positive step
        step_size = max(_l2_step(eps, steps), 1e-12)
    return IterativeAttack(eps=eps, steps=steps, step_size=step_size, norm=norm, random_start=random_start,
                           clean_init_prob=clean_init_prob, name="pgd", **kw)


def pgd_train(*, eps: float = EPS_PGD, steps: int = PGD_STEPS, step_size: float | None = None, norm: str = "linf",
              random_start: bool = True, clean_init_prob: float = CLEAN_INIT_PROB, **kw: Any) -> IterativeAttack:
    """PGD as adversarial training runs it (§4.5): random start, a clean start
    for 20% of batches, α = 1 (max(1, ε/N) when N is given), projection."""
    eps = check_number(eps, "eps", low=0.0)
    steps = int(check_number(steps, "steps", low=0, integer=True))
    if step_size is None:
        step_size = pgd_step_size(eps, steps) if _is_linf(norm) else _l2_step(eps, steps)
    return IterativeAttack(eps=eps, steps=steps, step_size=step_size, norm=norm, random_start=random_start,
                           clean_init_prob=clean_init_prob, name="pgd_train", **kw)


def gd(*, eps: float = EPS_GD, steps: int = GD_STEPS, step_size: float | None = None, norm: str = "linf",
       random_start: bool = True, **kw: Any) -> IterativeAttack:
    """GD (§7.5.4): PGD with the projection removed; ε only bounds the random start."""
    if step_size is None:
        step_size = ALPHA if _is_linf(norm) else _l2_step(eps, steps)
    return IterativeAttack(eps=eps, steps=steps, step_size=step_size, norm=norm, random_start=random_start,
                           project=False, name="gd", **kw)


def cw(*, eps: float | None = None, **kw: Any) -> CarliniWagnerL2:
    """C&W L2 with the §3.4.2 settings; ``eps`` is accepted and not used (C&W
    has no ε-ball)."""
    if eps is not None:
        check_number(eps, "eps", low=0.0)
    return CarliniWagnerL2(name="cw", **kw)


def dcw(*, eps: float | None = None, p: float | None = None, **kw: Any) -> CarliniWagnerL2:
    """D-C&W (§3.4.2): C&W with the input-diversity transform inside the loss;
    ``eps`` as in :func:`cw`."""
    if eps is not None:
        check_number(eps, "eps", low=0.0)
    return CarliniWagnerL2(p=_p(p, kw), name="dcw", **kw)


_REGISTRY: dict[str, Callable[..., Attack]] = {
    "fgsm": fgsm,
    "ifgsm": ifgsm,
    "mifgsm": mifgsm,
    "di2fgsm": di2fgsm,
    "mdi2fgsm": mdi2fgsm,
    "pgd": pgd,
    "pgd_train": pgd_train,
    "gd": gd,
    "cw": cw,
    "dcw": dcw,
}
_ALIASES = {"pgdtrain": "pgd_train", "bim": "ifgsm", "difgsm": "di2fgsm", "mdifgsm": "mdi2fgsm", "candw": "cw",
            "dcandw": "dcw"}


def canonical_name(name: str) -> str:
    """``"M-DI²-FGSM"``, ``"m_di2_fgsm"`` and ``"mdi2fgsm"`` all name one attack."""
    if not isinstance(name, str):
        raise TypeError(f"attack name must be a string; got {name!r}")
    key = name.lower().replace("²", "2").replace("&", "and")
    key = "".join(ch for ch in key if ch.isalnum())
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(names())}")
    return key


def names() -> list[str]:
    """The registered attack names."""
    return list(_REGISTRY)


def create(name: str, **kwargs: Any) -> Attack:
    """Build a named attack; every keyword not given takes the thesis default.

    ``create("pgd", eps=8/255, steps=10)``, ``create("m-di2-fgsm", eps=16/255)``.
    """
    factory = _REGISTRY[canonical_name(name)]
    try:
        return factory(**kwargs)
    except TypeError as err:
        accepted = _accepted_keywords(factory)
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise TypeError(
                f"{name} got unknown keyword(s) {unknown}; accepted: {', '.join(sorted(accepted))}"
            ) from None
        raise err


def accepted_options(name: str) -> set[str]:
    """The keyword options :func:`create` accepts for attack ``name`` (its
    preset's own and those of the attack class it builds), e.g. for checking
    a config before anything runs."""
    return _accepted_keywords(_REGISTRY[canonical_name(name)])


def _accepted_keywords(factory: Callable[..., Attack]) -> set[str]:
    own = {p for p in inspect.signature(factory).parameters if p != "kw"}
    target = CarliniWagnerL2 if factory in (cw, dcw) else IterativeAttack
    inner = set(inspect.signature(target.__init__).parameters) - {"self", "name"}
    if factory is gd:
        inner -= {"project"}
    return own | inner
