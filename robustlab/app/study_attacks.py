"""The attack list of a study evaluation (transfer, blackbox, holdout, nips2017):
names, per-attack options and sweeps, checked once when the study loads.

    attacks:
      - ifgsm                                         # a preset with the thesis defaults
      - {name: di2fgsm, p: 0.3}                       # label "di2fgsm p=0.3"
      - {name: mdi2fgsm, steps: 20, label: M-DI2-20}  # an explicit label
      - sweep: {attack: di2fgsm, p: [0.0, 0.5, 1.0]}  # "di2fgsm p=0", "di2fgsm p=0.5", "di2fgsm p=1"
      - sweep: {attack: di2fgsm, step_size: [1, 3], steps: [15, 5], zip: true}   # lists paired, not crossed

A sweep maps option names to lists (the cartesian product, or with ``zip:
true`` the lists taken in step, e.g. Fig. 3.6's N = ε/α); a scalar option
applies to every attack of the sweep; the labels name the swept options
only. ``eps`` and ``step_size`` are in the thesis's 0–255 notation (or a
fraction / ``px``, :func:`robustlab.units.parse_budget`); the evaluation's
``eps`` is every attack's unless the attack gives its own. An option the
attack does not take, a bad value, or two attacks with one label are refused
before any model is trained.

The resolved evaluation keeps ``attacks`` as the list of labels (the
``attack`` column of its table) and ``attack_specs``: label → ``{"name":
preset, **options}`` as written; its
:attr:`~robustlab.app.spec.EvaluationSpec.attack_kwargs` hold the same attacks
as keyword arguments of ``attacks.create``, budgets parsed once into pixels
when the study loads.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from robustlab.attacks.base import Attack

BUDGETS = ("eps", "step_size")
#: Set by the study itself: the seed (a model's), and objects YAML cannot write.
_RESERVED = ("seed", "diversity")
SWEEP_KEYS = ("attack", "zip")


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _label(name: str, options: dict[str, Any]) -> str:
    return " ".join([name, *(f"{k}={_fmt(v)}" for k, v in options.items())])


def _expand_sweep(where: str, sweep: Any) -> list[tuple[str, dict[str, Any]]]:
    """``{attack: di2fgsm, p: [0.1, 0.5]}`` → [(label, {name, **options}), ...]."""
    if not isinstance(sweep, dict) or not isinstance(sweep.get("attack"), str):
        raise ValueError(f"{where}.sweep must be a mapping with attack: NAME and option: [values]; got {sweep!r}")
    name = sweep["attack"]
    zipped = sweep.get("zip", False)
    if not isinstance(zipped, bool):
        raise ValueError(f"{where}.sweep.zip must be true or false; got {zipped!r}")
    fixed = {k: v for k, v in sweep.items() if k not in SWEEP_KEYS and not isinstance(v, list)}
    grid = {k: v for k, v in sweep.items() if k not in SWEEP_KEYS and isinstance(v, list)}
    if not grid or not all(grid.values()):
        raise ValueError(f"{where}.sweep: give at least one option with a non-empty list of values; got {sweep!r}")
    if "label" in grid or "label" in fixed:
        raise ValueError(f"{where}.sweep: labels are made from the swept values; 'label' is not an option here")
    if zipped:
        lengths = {k: len(v) for k, v in grid.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{where}.sweep: zip: true pairs lists of one length; got {lengths}")
        combos = list(zip(*grid.values()))
    else:
        combos = list(itertools.product(*grid.values()))
    out = []
    for values in combos:
        swept = dict(zip(grid, values))
        out.append((_label(name, swept), {"name": name, **fixed, **swept}))
    return out


def _items(where: str, attacks: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(attacks, (str, dict)):
        attacks = [attacks]
    if not isinstance(attacks, list) or not attacks:
        raise ValueError(f"{where} must be a non-empty list of attack names, {{name: ..., option: ...}} "
                         f"mappings or {{sweep: {{attack: ..., option: [...]}}}}; got {attacks!r}")
    out = []
    for i, item in enumerate(attacks):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            out.append((item, {"name": item}))
        elif isinstance(item, dict) and "sweep" in item:
            if len(item) != 1:
                raise ValueError(f"{at}: a sweep item holds only 'sweep'; got keys {sorted(item)}")
            out += _expand_sweep(at, item["sweep"])
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            spec = copy.deepcopy(item)
            label = spec.pop("label", None)
            if label is not None and (not isinstance(label, str) or not label.strip()):
                raise ValueError(f"{at}.label must be a non-empty string; got {label!r}")
            options = {k: v for k, v in spec.items() if k != "name"}
            out.append((label or _label(spec["name"], options), spec))
        else:
            raise ValueError(f"{at} must be an attack name, a mapping with name: ATTACK, or {{sweep: ...}}; "
                             f"got {item!r}")
    return out


def check_attacks(where: str, attacks: Any, eps: float | None, *, forbidden: Sequence[str] = (),
                  build: Callable[[str, dict[str, Any]], Any] | None = None
                  ) -> tuple[list[str], dict[str, dict], dict[str, dict]]:
    """The labels, specs (as written) and ``create`` keyword arguments (budgets
    in pixels) of an evaluation's ``attacks``, every attack built once to check
    its options (``build(name, options)`` instead of :func:`make_attack` where
    a protocol sets the budget itself).

    Args:
        where: the evaluation's key (``evaluations.NAME.attacks``) for errors.
        eps: the evaluation's ε in pixels (parsed once), every attack's default.
        forbidden: options the evaluation's protocol fixes (nips2017: eps, steps).

    Raises:
        ValueError: an unknown attack or option, a bad value, a label used twice.
    """
    from robustlab.attacks.presets import accepted_options, canonical_name, names

    labels: list[str] = []
    specs: dict[str, dict] = {}
    kwargs: dict[str, dict] = {}
    for label, spec in _items(where, attacks):
        name = spec["name"]
        try:
            canonical_name(name)
        except ValueError:
            raise ValueError(f"{where}: unknown attack(s) [{name!r}]; known: {', '.join(names())}") from None
        options = {k: v for k, v in spec.items() if k != "name"}
        allowed = accepted_options(name) - set(_RESERVED) - set(forbidden)
        unknown = sorted(set(options) - allowed)
        if unknown:
            extra = f" ({', '.join(sorted(set(unknown) & set(forbidden)))} set by the protocol)" \
                if set(unknown) & set(forbidden) else ""
            raise ValueError(f"{where}: attack {label!r} ({name}) got unknown option(s) {unknown}{extra}; "
                             f"accepted: {', '.join(sorted(allowed))}")
        if label in specs:
            raise ValueError(f"{where}: two attacks are labelled {label!r}; give one a label: ...")
        if any(ch in label for ch in '[]*?",'):  # a claim names the row by its label (claims.py's globs)
            raise ValueError(f"{where}: attack label {label!r} may not hold [ ] * ? \" or ','")
        try:
            if build is not None:
                kw = {"name": name, **options}
                build(name, options)
            else:
                kw = attack_kwargs(spec, eps)
                make_attack(kw, seed=0)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: attack {label!r}: {err}") from None
        labels.append(label)
        specs[label] = spec
        kwargs[label] = kw
    return labels, specs, kwargs


def attack_kwargs(spec: dict[str, Any], eps: float | None) -> dict[str, Any]:
    """The keyword arguments of ``create`` for one spec (``name`` among them):
    the attack's own budgets parsed into pixels, else the evaluation's ``eps`` (pixels)."""
    from robustlab.units import parse_budget

    kw = dict(spec)
    kw.setdefault("eps", eps)
    for key in BUDGETS:
        if key in spec and spec[key] is not None:
            kw[key] = parse_budget(spec[key], key)
    return kw


def make_attack(kwargs: dict[str, Any], seed: int | None) -> Attack:
    """The attack of one label's :func:`attack_kwargs` (budgets already in pixels)."""
    from robustlab.attacks import create

    return create(**kwargs, seed=seed)


def factories(opts: Any, seed: int | None) -> dict[str, Callable[[], Attack]]:
    """label → zero-argument factory (a fresh RNG per source), from a resolved evaluation
    (an :class:`~robustlab.app.spec.EvaluationSpec`)."""
    kwargs = opts.attack_kwargs
    return {label: (lambda kw=kwargs[label]: make_attack(kw, seed)) for label in opts["attacks"]}


def configs(opts: Any) -> dict[str, dict[str, Any]]:
    """label → the attack's recorded configuration (steps, step size, p, μ ...), for the report."""
    return {label: make_attack(opts.attack_kwargs[label], 0).config() for label in opts["attacks"]}


def resolve_attacks(name: str, opts: dict[str, Any], eps: float | None, *, forbidden: Sequence[str] = (),
                    build: Callable[[str, dict[str, Any]], Any] | None = None) -> dict[str, dict[str, Any]]:
    """Replace ``opts["attacks"]`` by its labels and add ``opts["attack_specs"]`` (in place);
    returns label → ``create`` keyword arguments (``eps``: the evaluation's, in pixels)."""
    opts["attacks"], opts["attack_specs"], kwargs = check_attacks(
        f"evaluations.{name}.attacks", opts["attacks"], eps, forbidden=forbidden, build=build)
    return kwargs
