"""Training-time evaluation (``robustlab train``'s ``eval`` section): one
definition with ``robustlab eval`` and studies, the registry's ``quick``
protocol for ``eval.attack: pgd``; metric names, batch bound, determinism."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.app.config import resolve
from robustlab.app.train import EVAL_BATCH, build_model, build_recipe, eval_plan, make_evaluate
from robustlab.data import load_dataset

DATA = {"name": "digits", "limit": 64, "eval_limit": 300}


def _cfg(**ev):
    return resolve({"data": DATA, "model": {"name": "smallcnn", "width": 4}, "recipe": {"name": "vanilla"},
                    "train": {"epochs": 1}, "eval": {"steps": 3, "limit": 280, "eps": 8, **ev}})


@pytest.fixture(scope="module")
def model():
    cfg = _cfg()
    info = load_dataset("digits", "train", limit=64).info
    torch.manual_seed(0)
    m = build_model(cfg, info, build_recipe(cfg))
    # a little training so that some images resist the attack
    x, y = load_dataset("digits", "train", limit=512).batch(slice(0, 512))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m.eval()


def test_pgd_is_the_quick_protocol_of_robustlab_eval(model):
    cfg = _cfg(seed=3)
    out = make_evaluate(cfg, build_recipe(cfg), torch.device("cpu"))(model)
    assert set(out) == {"clean_acc", "pgd_acc", "clean_n", "pgd_n"}  # each accuracy with its number of images
    assert (out["clean_n"], out["pgd_n"]) == (300, 280)  # data.eval_limit, eval.limit
    x, y = load_dataset("digits", cfg.data.eval_split, limit=300).batch(slice(0, 280))
    ev = rl.eval.evaluate(model, (x, y), eps=8 / 255, protocol="quick", options={"steps": 3}, checklist=False,
                          seed=3)
    assert out["pgd_acc"] == ev.robust_accuracy and 0 < out["pgd_acc"] < out["clean_acc"]
    assert make_evaluate(cfg, build_recipe(cfg), torch.device("cpu"))(model) == out  # deterministic under the seed
    plan = eval_plan(cfg, build_recipe(cfg))
    assert (plan.protocol, plan.metric, plan.options) == ("quick", "pgd_acc",
                                                          {"steps": 3, "step_size": None, "targeted": False})


def test_step_size_and_targeted_reach_the_protocol(model):
    cfg = _cfg(step_size=1, targeted=True)
    plan = eval_plan(cfg, build_recipe(cfg))
    assert plan.options == {"steps": 3, "step_size": 1 / 255, "targeted": True}
    stages, _ = rl.eval.protocols.stages_for("quick", plan.eps, plan.options)
    assert [(s.target, s.step_size) for s in stages] == [("random", 1 / 255)]
    out = make_evaluate(cfg, build_recipe(cfg), torch.device("cpu"))(model)
    untargeted = make_evaluate(_cfg(step_size=1), build_recipe(cfg), torch.device("cpu"))(model)
    # a random target is a weaker goal than any wrong class (accuracy counted as the thesis does)
    assert untargeted["pgd_acc"] <= out["pgd_acc"] <= out["clean_acc"]


def test_other_attacks_keep_their_preset_and_its_metric_name(model):
    cfg = _cfg(attack="fgsm")
    plan = eval_plan(cfg, build_recipe(cfg))
    assert plan.protocol is None and plan.metric == "fgsm_acc"
    out = make_evaluate(cfg, build_recipe(cfg), torch.device("cpu"))(model)
    assert (out["clean_n"], out["fgsm_n"]) == (300, 280)
    x, y = load_dataset("digits", cfg.data.eval_split, limit=300).batch(slice(0, 280))
    attack = rl.attacks.create("fgsm", eps=8 / 255, seed=0, targeted=False)
    assert out["fgsm_acc"] == rl.eval.robust_accuracy(attack, model, [(x[:250], y[:250]), (x[250:], y[250:])])[
        "robust_accuracy"]
    assert eval_plan(_cfg(attack=None), build_recipe(cfg)) is None


def test_n_is_the_test_set_size_when_limits_exceed_it_and_one_per_metric_over_routes():
    cfg = resolve({"data": {**DATA, "eval_limit": None}, "model": {"name": "smallcnn", "width": 4},
                   "recipe": {"name": "advprop", "eps": 4, "steps": 1}, "train": {"epochs": 1},
                   "eval": {"steps": 1, "limit": 10_000, "eps": 4}})
    recipe = build_recipe(cfg)
    m = build_model(cfg, load_dataset("digits", "train", limit=64).info, recipe).eval()
    out = make_evaluate(cfg, recipe, torch.device("cpu"))(m)
    size = len(load_dataset("digits", cfg.data.eval_split))
    assert out["clean_n"] == out["pgd_n"] == size
    assert sorted(k for k in out if k.endswith("_n")) == ["clean_n", "pgd_n"]  # not one per BN route
    assert {"clean_acc_clean", "clean_acc_adv", "pgd_acc_clean"} <= set(out), out


def test_the_model_never_sees_more_than_eval_batch_images(model):
    sizes: list[int] = []

    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            sizes.append(len(x))
            return self.inner(x)

    cfg = _cfg()
    make_evaluate(cfg, build_recipe(cfg), torch.device("cpu"))(Recording(model))
    assert max(sizes) <= EVAL_BATCH and sum(s == EVAL_BATCH for s in sizes) >= 2  # clean pass and attack slots


@pytest.mark.parametrize("ev, message", [
    ({"eps": 0}, "eval.eps must be > 0"),
    ({"step_size": "2px"}, r"eval.step_size must be None .* got 2.0 \(eval.attack pgd runs the quick protocol\)"),
    ({"attack": "fgsm", "step_size": "2px"}, "eval \\(attack 'fgsm'\\)"),
])
def test_bad_evaluation_options_fail_before_training(ev, message):
    cfg = _cfg(**ev)
    with pytest.raises(ValueError, match=message):
        eval_plan(cfg, build_recipe(cfg))


def test_a_null_model_option_is_the_factory_default():
    """``model.width=null`` (how an override removes a config's option) builds the default network."""
    info = load_dataset("digits", "train", limit=64).info
    cfg = resolve({"data": DATA, "model": {"name": "smallcnn", "width": None}, "recipe": {"name": "vanilla"}})
    built = build_model(cfg, info, build_recipe(cfg))
    default = rl.models.create_model("smallcnn", info.num_classes, in_channels=info.channels)
    assert [p.shape for p in built.parameters()] == [p.shape for p in default.parameters()]
    narrow = resolve({"data": DATA, "model": {"name": "smallcnn", "width": 4}, "recipe": {"name": "vanilla"}})
    assert sum(p.numel() for p in build_model(narrow, info, build_recipe(narrow)).parameters()) < sum(
        p.numel() for p in built.parameters())


def test_a_model_giving_nan_logits_is_not_scored_as_a_result():
    """argmax of NaN logits is class 0: the training-time accuracy read as a number."""
    cfg = _cfg()

    class Diverged(torch.nn.Module):
        def forward(self, x):
            z = torch.zeros(len(x), 10)
            z[::2] = float("nan")
            return z

    with pytest.raises(FloatingPointError, match=r"NaN or infinite logits on 150 of 300 test images"):
        make_evaluate(cfg, build_recipe(cfg), torch.device("cpu"))(Diverged())
