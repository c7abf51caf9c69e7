"""Typed specs from mappings: the one unknown-key check of every config,
study and DAG-study section (a YAML mapping becomes a dataclass once, at the
edge; errors name the full dotted path of the key, e.g. ``models.a.recipe.epz``).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
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
