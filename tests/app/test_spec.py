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


RAW = {"seed": 3, "model": {"name": "smallcnn", "width": 8, "norm": "mbn", "act": "silu"},
       "recipe": {"name": "advprop", "eps": "8/255", "step_size": 2, "steps": 3, "routes": ["adv"]},
       "data": {"name": "digits", "limit": 64}, "train": {"epochs": 2, "milestones": [1]}}


def test_model_and_recipe_specs_parse_budgets_once_and_keep_the_written_form():
    from robustlab.app.config import ModelSpec, RecipeSpec

    cfg = resolve(RAW)
    assert cfg.model == ModelSpec("smallcnn", {"width": 8, "norm": "mbn", "act": "silu"})
    assert isinstance(cfg.recipe, RecipeSpec) and cfg.recipe.name == "advprop"
    assert cfg.recipe.eps == pytest.approx(8 / 255) and cfg.recipe.step_size == pytest.approx(2 / 255)
    assert cfg.recipe.options == {"steps": 3, "routes": ("adv",)}
    assert cfg.recipe_options() == {"steps": 3, "routes": ("adv",), "eps": cfg.recipe.eps,
                                    "step_size": cfg.recipe.step_size}
    assert cfg.to_dict()["recipe"] == RAW["recipe"] and cfg.to_dict()["model"] == RAW["model"]
    assert resolve({}).recipe_options() == {} and resolve({}).to_dict()["recipe"] == {"name": "vanilla"}
    with pytest.raises(ValueError, match="recipe.eps must be a number"):
        resolve({"recipe": {"name": "madry", "eps": "abc"}})
    with pytest.raises(ValueError, match="config key model.name must be a string"):
        resolve({"model": {"name": 3}})


def test_the_run_fingerprint_of_an_existing_config_is_unchanged():
    """The fingerprint written by runs made before the typed specs: a resume must still find it."""
    from robustlab.app.rundir import fingerprint_of
    from robustlab.app.train import identity

    cfg = resolve(RAW)
    assert fingerprint_of(identity(cfg)) == "f3599065197cdf2b3e3b49ecc45e7ed05a00687cf04d232953301046e50b8a9f"
    assert fingerprint_of(cfg.to_dict()) == "699db400e7f3f699eef956ed79a25ff12d491863a92c9256b79c349d28e7b6fe"


def test_study_evaluations_are_typed_with_budgets_parsed_once():
    from robustlab.app.spec import EvaluationSpec
    from robustlab.app.study import resolve_study

    study = resolve_study({
        "name": "s", "defaults": {"data": {"name": "digits"}},
        "models": {"a": {}, "b": {"seed": 1}},
        "evaluations": {"pgd": {"kind": "whitebox", "eps": "8/255", "step_size": 2, "steps": [1]},
                        "tr": {"kind": "transfer", "sources": ["a"], "targets": ["b"], "attacks": ["ifgsm"]},
                        "clean": {"kind": "accuracy"}}})
    pgd, tr, clean = (study.evaluations[k] for k in ("pgd", "tr", "clean"))
    assert all(isinstance(e, EvaluationSpec) for e in (pgd, tr, clean))
    assert pgd.kind == "whitebox" and pgd.eps == pytest.approx(8 / 255) and pgd.step_size == pytest.approx(2 / 255)
    assert pgd["eps"] == "8/255" and pgd["step_size"] == 2  # the options as the study writes them
    assert dict(pgd) == pgd.options and pgd == pgd.options and pgd.options["kind"] == "whitebox"
    assert tr.eps == pytest.approx(16 / 255) and tr.step_size is None and tr.used_models == ["a", "b"]
    assert clean.eps is None and clean.used_models == ["a", "b"]
    with pytest.raises(ValueError, match=r"evaluations.pgd.eps must be a number"):
        resolve_study({"name": "s", "models": {"a": {}},
                       "evaluations": {"pgd": {"kind": "whitebox", "eps": "abc"}}})


def test_per_attack_budgets_are_parsed_once_when_the_study_loads(monkeypatch):
    import robustlab.units
    from robustlab.app.study import resolve_study
    from robustlab.app.study_attacks import configs, factories

    study = resolve_study({
        "name": "s", "defaults": {"data": {"name": "digits"}}, "models": {"a": {}, "b": {"seed": 1}},
        "evaluations": {"tr": {"kind": "transfer", "sources": ["a"], "targets": ["b"], "eps": 16,
                               "attacks": ["ifgsm", {"name": "mifgsm", "eps": 8, "step_size": "1/255"}]},
                        "ho": {"kind": "holdout", "models": ["a", "b"],
                               "attacks": [{"name": "ifgsm", "eps": "0.04px"}]}}})
    tr, ho = study.evaluations["tr"], study.evaluations["ho"]
    assert tr.attack_kwargs == {"ifgsm": {"name": "ifgsm", "eps": pytest.approx(16 / 255)},
                                "mifgsm eps=8 step_size=1/255": {"name": "mifgsm", "eps": pytest.approx(8 / 255),
                                                                 "step_size": pytest.approx(1 / 255)}}
    assert tr["attack_specs"]["mifgsm eps=8 step_size=1/255"] == {"name": "mifgsm", "eps": 8, "step_size": "1/255"}
    assert ho.attack_kwargs["ifgsm eps=0.04px"] == {"name": "ifgsm", "eps": 0.04}

    def refuse(*args, **kwargs):
        raise AssertionError("a budget parsed again after the study loaded")

    monkeypatch.setattr(robustlab.units, "parse_eps", refuse)
    attacks = {label: make() for label, make in factories(tr, 0).items()}
    assert attacks["mifgsm eps=8 step_size=1/255"].eps == pytest.approx(8 / 255)
    assert configs(ho)["ifgsm eps=0.04px"]["eps"] == pytest.approx(0.04)
