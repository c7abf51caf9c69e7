"""Typed specs from mappings: the one unknown-key check of every config,
study and DAG-study section (a YAML mapping becomes a dataclass once, at the
edge; errors name the full dotted path of the key, e.g. ``models.a.recipe.epz``).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


class SpecError(ValueError):
    """A section that is not a mapping, or holds keys its spec does not know."""


def _dotted(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def check_keys(values: Mapping[Any, Any], known: Iterable[str], path: str = "", *, noun: str = "key",
               where: str = "") -> None:
    """Refuse keys of ``values`` outside ``known``, each named by its dotted path
    under ``path`` (``unknown key(s) ['models.a.recipe.epz']; known: ...``);
    ``noun`` words the message (``training option``), ``where`` follows the list.

    Raises:
        SpecError: an unknown key.
    """
    known = list(known)
    unknown = sorted((k for k in values if k not in known), key=str)
    if unknown:
        raise SpecError(f"unknown {noun}(s) {[_dotted(path, k) for k in unknown]}{where}; "
                        f"known: {', '.join(map(str, known))}")


def check_mapping(values: Any, path: str, what: str = "key") -> Mapping[Any, Any]:
    """``values`` (None: an empty mapping), refused naming ``path`` when it is not a mapping.

    Raises:
        SpecError: not a mapping (``config section 'data' must be a mapping; got 3``).
    """
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise SpecError(f"{what} {path!r} must be a mapping; got {values!r}")
    return values


def spec_fields(cls: type) -> list[str]:
    """The keys a spec dataclass takes (its ``__init__`` fields, in declaration order)."""
    return [f.name for f in fields(cls) if f.init]


def from_mapping(cls: type[T], values: Any, path: str, *, defaults: Mapping[str, Any] | None = None,
                 noun: str = "key", what: str = "key") -> T:
    """``cls(**values)`` for a dataclass ``cls``: the keys of ``values`` (a
    mapping, None for none) over ``defaults`` (if given) over the dataclass's
    own defaults. A non-mapping and unknown keys are refused naming the
    dotted ``path`` (``unknown key(s) ['models.a.recipe.epz']; known: ...``);
    ``noun`` and ``what`` word those messages. Values are checked by the
    dataclass itself (``__post_init__``) or by the caller.

    Raises:
        SpecError: not a mapping, or an unknown key.
    """
    values = check_mapping(values, path, what)
    check_keys(values, sorted(spec_fields(cls)), path, noun=noun)
    return cls(**{**(defaults or {}), **values})


#: An evaluation's budgets, in the study's notation (0-255 unless a fraction or ``px``).
EVALUATION_BUDGETS = ("eps", "step_size")
#: The options of an evaluation that name the study's models.
MODEL_KEYS = ("models", "sources", "targets", "ensemble")


@dataclass(frozen=True, eq=False)
class EvaluationSpec(Mapping[str, Any]):
    """One resolved evaluation of a study: its ``kind``, its ``options`` over
    the kind's defaults as the study states them (read through the mapping
    interface: ``spec["models"]``; ``evaluations/NAME.json`` records them and
    the reuse key hashes them, so budgets keep the study's notation), its
    budgets ``eps`` / ``step_size`` parsed once into pixel units (None where
    the kind has none), and for an attack list (transfer, blackbox, holdout,
    nips2017) ``attack_kwargs``: label → the keyword arguments of
    ``attacks.create`` (``name`` among them), budgets parsed once into pixels
    (:mod:`robustlab.app.study_attacks`)."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    eps: float | None = None
    step_size: float | None = None
    attack_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def used_models(self) -> list[str]:
        """Every model the evaluation reads (models, sources, targets, ensemble members, defended models), sorted."""
        named = {m for k in MODEL_KEYS for m in self.options.get(k) or []}
        return sorted(named | {d["model"] for d in self.options.get("defended") or []})

    def __getitem__(self, key: str) -> Any:
        return self.options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.options)

    def __len__(self) -> int:
        return len(self.options)


def parse_budgets(name: str, options: Mapping[str, Any]) -> dict[str, float]:
    """The budgets among an evaluation's ``options`` (``eps``, ``step_size``) in pixel units,
    parsed once by :func:`robustlab.units.parse_budget`; errors name ``evaluations.NAME.KEY``."""
    from robustlab.units import parse_budget

    return {k: parse_budget(options[k], f"evaluations.{name}.{k}") for k in EVALUATION_BUDGETS if k in options}
