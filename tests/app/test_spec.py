"""robustlab.app.spec: the one mapping → dataclass builder and unknown-key check."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from robustlab.app.config import resolve
from robustlab.app.spec import SpecError, check_keys, from_mapping


@dataclass
class Inner:
    eps: float = 16
    steps: int = 10


@dataclass
class Outer:
    name: str = "x"
    options: dict = field(default_factory=dict)


def test_from_mapping_builds_over_defaults():
    assert from_mapping(Inner, None, "a") == Inner()
    assert from_mapping(Inner, {"steps": 3}, "a") == Inner(16, 3)
    assert from_mapping(Inner, {"steps": 3}, "a", defaults={"eps": 8, "steps": 5}) == Inner(8, 3)


def test_unknown_nested_key_is_named_with_its_full_path():
    with pytest.raises(SpecError) as err:
        from_mapping(Inner, {"epz": 3, "steps": 1}, "models.a.recipe")
    assert str(err.value) == "unknown key(s) ['models.a.recipe.epz']; known: eps, steps"
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['train.epochz'\]"):
        from_mapping(Inner, {"epochz": 1}, "train", noun="training option")


@pytest.mark.parametrize("value", [3, "abc", [1, 2]])
def test_a_non_mapping_is_refused_naming_the_path(value):
    with pytest.raises(SpecError, match=r"key 'models.a.recipe' must be a mapping; got"):
        from_mapping(Inner, value, "models.a.recipe")
    with pytest.raises(SpecError, match=r"config section 'data' must be a mapping"):
        from_mapping(Inner, value, "data", what="config section")


def test_check_keys_top_level_and_suffix():
    check_keys({"a": 1}, ["a", "b"])
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['c'\] in a thing; known: a, b"):
        check_keys({"c": 1}, ["a", "b"], where=" in a thing")


@pytest.mark.parametrize("raw, message", [
    ({"eval": {"atack": "pgd"}}, "unknown key(s) ['eval.atack']"),
    ({"data": 3}, "config section 'data' must be a mapping"),
    ({"train": {"epochz": 1}}, "unknown training option(s) ['train.epochz']"),
    ({"bogus": {}}, "unknown config section(s) ['bogus']"),
])
def test_run_config_sections_go_through_the_one_check(raw, message):
    with pytest.raises(ValueError) as err:
        resolve(raw)
    assert message in str(err.value)
