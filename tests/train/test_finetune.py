"""Fine-tuning (§6.4.4, Fig. 7.2): train.trainable=bn freezes all but the BNs' γ, β;
init_from_run starts a model from another run's weights."""
from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from train_helpers import ATTACK, digits_train, small_model

import robustlab as rl
from robustlab.train import recipes
from robustlab.train.finetune import init_from_run
from robustlab.train.options import TrainOptions, trainable_parameters

OPTS = dict(epochs=1, batch_size=64, lr=0.05, progress=False)


def _bn_keys(model):
    out = set()
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            out |= {f"{name}.{k}" for k in ("weight", "bias")}
    return out


@pytest.mark.parametrize("recipe", ["vanilla", "madry"])
def test_trainable_bn_moves_only_bn_affine_parameters_and_running_statistics(recipe):
    ds = digits_train()
    model = small_model(ds.info)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rl.train.fit(model, ds, recipes.create(recipe, **(ATTACK if recipe != "vanilla" else {})), trainable="bn",
                 weight_decay=1e-3, **OPTS)
    after = model.state_dict()
    bn = _bn_keys(model)
    for key, value in after.items():
        if key in bn or key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert not torch.equal(value, before[key]), f"{key} did not train / update"
        else:  # conv and linear weights: frozen, not even weight-decayed
            assert torch.equal(value, before[key]), f"{key} changed"
    assert all(p.requires_grad == (n in bn) for n, p in model.named_parameters())


def test_trainable_all_is_the_default_and_bad_values_are_refused():
    assert TrainOptions().trainable == "all"
    with pytest.raises(ValueError, match="trainable must be one of"):
        TrainOptions(trainable="convs")
    model = small_model(digits_train().info)
    assert len(trainable_parameters(model)) == len(list(model.parameters()))
    gn = small_model(digits_train().info, norm="gn")
    with pytest.raises(ValueError, match="trainable='bn' needs a model with batch norms"):
        trainable_parameters(gn, "bn")


def _run(tmp_path, name, recipe, norm=None, routes=("clean", "adv"), **kw):
    ds = digits_train()
    model = small_model(ds.info, norm, routes)
    rl.train.fit(model, ds, recipe, out=tmp_path / name, **OPTS, **kw)
    return model


def test_init_from_run_copies_weights_and_bn_statistics(tmp_path):
    source = _run(tmp_path, "src", recipes.create("madry", **ATTACK))
    fresh = small_model(digits_train().info, seed=7)
    init_from_run(fresh, tmp_path / "src")
    for k, v in source.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v.cpu()), k


def test_init_from_run_across_bn_routes(tmp_path):
    # AdvProp source → plain model: the main BNs; plain source → mixture-BN model: its BNs in every route
    adv = _run(tmp_path, "advprop", recipes.create("advprop", **ATTACK), norm="mbn")
    plain = small_model(digits_train().info, seed=3)
    init_from_run(plain, tmp_path / "advprop")
    main = rl.nn.drop_routes(adv, "clean")
    for k, v in main.state_dict().items():
        assert torch.equal(plain.state_dict()[k], v), k
    _run(tmp_path, "vanilla", recipes.create("vanilla"))
    routed = small_model(digits_train().info, "mbn", seed=3)
    init_from_run(routed, tmp_path / "vanilla")
    state = routed.state_dict()
    clean = {k: v for k, v in state.items() if ".bns.clean." in k}
    assert clean and all(torch.equal(v, state[k.replace(".bns.clean.", ".bns.adv.")]) for k, v in clean.items())


def test_init_from_run_refuses_another_network_and_a_missing_run(tmp_path):
    _run(tmp_path, "src", recipes.create("vanilla"))
    wider = rl.models.create_model("smallcnn", 10, in_channels=1, width=12)
    with pytest.raises(ValueError, match="do not fit this network"):
        init_from_run(wider, tmp_path / "src")
    with pytest.raises(FileNotFoundError):
        init_from_run(small_model(digits_train().info), tmp_path / "nothing")
