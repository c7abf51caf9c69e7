"""configs/imagenet: the thesis's ImageNet recipes, each smoke-run for one step
on a tiny generated ImageFolder, exactly as a user would launch them with
``data.name=imagefolder:ROOT``; the recipe itself is not overridden."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import robustlab as rl
from robustlab.app.cli import main
from robustlab.app.config import load_config
from tests.train.test_data_pipeline import make_image_folder

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs", "imagenet").glob("*.yaml"))
SMOKE = ["data.size=32", "data.limit=4", "data.workers=0", "data.eval_limit=4", "train.epochs=1",
         "train.batch_size=4", "eval.limit=2", "eval.steps=1", "device=cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imagenet"), classes=3, per_class=2, val=2)


#: Per config, what the smoke run shrinks besides the data: ResNet-638 (228M parameters) runs as a ResNet-50.
SHRINK = {"adv_resnet638": ["model.depth=50"]}


def test_the_thesis_recipes_are_shipped():
    assert {p.stem for p in CONFIGS} == {"denoise_resnet152", "sat_resnet50", "advprop_efficientnet_b0",
                                         "sat_resnet152", "adv_resnet638"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_each_recipe_states_its_section_and_trains_on_an_image_folder(tmp_path, tiny, path):
    text = path.read_text()
    assert "§" in text.split("\n", 1)[0] and "torchrun --nproc_per_node=8" in text
    cfg, _ = load_config(path)
    assert cfg.data.name == "imagefolder:/data/imagenet" and cfg.data.size == 224
    out = tmp_path / "run"
    assert main(["-q", "train", str(path), f"data.name=imagefolder:{tiny}", *SMOKE, *SHRINK.get(path.stem, []),
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 1 and results["recipe"]["name"] == cfg.recipe.name
    assert results["recipe"]["attack"]["eps_255"] == cfg.recipe.to_dict()["eps"]  # the thesis's attacker
    model = rl.models.load_model(out)
    assert model.robustlab_spec["name"] == cfg.model.name and model.robustlab_spec["num_classes"] == 3
    assert not rl.nn.norm.mixture_layers(model)  # AdvProp's auxiliary BNs are dropped on export


def test_the_recipes_carry_the_thesis_hyper_parameters():
    by = {p.stem: load_config(p)[0] for p in CONFIGS}
    d = by["denoise_resnet152"]
    r = d.recipe.to_dict()  # as the config writes it (0-255 budgets)
    assert (d.model.options["denoise"], r["eps"], r["steps"], r["step_size"], r["targeted"]) == \
        ("nonlocal_gaussian", 16, 30, 1, True)
    assert d.train.milestones == (35.0, 70.0, 95.0) and d.train.epochs == 110 and d.train.warmup_epochs == 5
    assert d.train.label_smoothing == 0.1 and d.train.lr * d.train.batch_size / d.train.base_batch == 0.1
    s = by["sat_resnet50"]
    r = s.recipe.to_dict()
    assert (s.model.options["act"], s.recipe.name, r["eps"], r["step_size"]) == ("silu", "fast", 4, 4)
    assert s.train.milestones == (30.0, 60.0, 90.0) and s.train.epochs == 100 and s.train.weight_decay == 1e-4
    a = by["advprop_efficientnet_b0"]
    assert (a.train.optimizer, a.train.momentum, a.train.weight_decay, a.train.gamma, a.train.decay_every) == \
        ("rmsprop", 0.9, 1e-5, 0.97, 2.4)
    assert a.train.lr * 4096 / a.train.base_batch == pytest.approx(0.256) and a.data.augment == "autoaugment"
    assert (a.recipe.to_dict()["eps"], a.recipe.to_dict()["steps"], a.model.options["bn_momentum"]) == (1, 1, 0.01)


def test_the_depth_scaling_recipes_of_5_5_and_6_5():
    """§5.5.1 (Table 5.3): SAT's ResNet-50 recipe on a 3× deeper bottleneck ResNet; §6.5 (Fig. 6.7):
    chapter 6's PGD-30 adversarial training of ResNet-638, BN on running statistics for the last 10 epochs."""
    by = {p.stem: load_config(p)[0] for p in CONFIGS}
    sat, base = by["sat_resnet152"], by["sat_resnet50"]
    assert (sat.model.name, sat.model.options) == ("resnet", {"depth": 152, "act": "silu"})
    assert sat.recipe.to_dict() == base.recipe.to_dict() and sat.train == base.train
    deep = by["adv_resnet638"]
    r = deep.recipe.to_dict()
    assert (deep.model.name, deep.model.options["depth"]) == ("resnet", 638)
    assert (r["eps"], r["steps"], r["step_size"], r["targeted"], r["clean_init_prob"]) == (16, 30, 1, True, 0.2)
    assert deep.train.milestones == (35.0, 70.0, 95.0) and deep.train.epochs == 110
    assert deep.train.bn_running_last == 10
    from robustlab.models.resnet import bottleneck_layers

    assert bottleneck_layers(638) == (3, 24, 182, 3)
