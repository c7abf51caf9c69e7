"""An attack never changes the model: mode, BN statistics, parameters, .grad."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl

KW = {"cw": {"steps": 3, "binary_search_steps": 1}, "dcw": {"steps": 3, "binary_search_steps": 1}}


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", rl.attacks.names())
@pytest.mark.parametrize("early_stop", [False, True])
def test_model_untouched(trained_model, batch, name, early_stop):
    if early_stop and name in ("cw", "dcw"):
        pytest.skip("C&W minimizes the norm; it has no early stop")
    x, y = batch
    model = trained_model
    before = snapshot(model)
    # A mixed train/eval state and existing gradients must survive the attack.
    model.train()
    model.net.fc.eval()
    model.zero_grad(set_to_none=True)
    model.net.fc.weight.grad = torch.full_like(model.net.fc.weight, 0.5)
    modes = {n: m.training for n, m in model.named_modules()}
    kw = dict(KW.get(name, {"eps": 16 / 255}))
    if name not in ("cw", "dcw"):
        kw["early_stop"] = early_stop
    try:
        rl.attacks.create(name, seed=0, **kw).run(model, x, y)
        assert {n: m.training for n, m in model.named_modules()} == modes
        after = snapshot(model)
        for k in before:  # BN running mean/var/num_batches_tracked and weights
            assert torch.equal(before[k], after[k]), k
        assert torch.equal(model.net.fc.weight.grad, torch.full_like(model.net.fc.weight, 0.5))
        assert all(p.grad is None for n, p in model.named_parameters() if n != "net.fc.weight")
    finally:
        model.net.fc.weight.grad = None
        model.eval()


def test_mode_restored_after_an_error(trained_model, batch):
    x, y = batch
    trained_model.train()
    try:
        with pytest.raises(ValueError, match="class index 12"):
            rl.attacks.create("pgd").run(trained_model, x, torch.full_like(y, 12))
        assert all(m.training for m in trained_model.modules())
    finally:
        trained_model.eval()


def test_input_not_modified(trained_model, batch):
    x, y = batch
    x0, y0 = x.clone(), y.clone()
    rl.attacks.create("mdi2fgsm", eps=16 / 255, seed=0)(trained_model, x, y)
    rl.attacks.create("pgd", eps=16 / 255, seed=0, early_stop=True)(trained_model, x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert not x.requires_grad


def test_predict_keeps_a_mixed_mode(trained_model, batch):
    x, _ = batch
    ens = rl.attacks.Ensemble([trained_model])  # a fresh module is in train mode
    assert ens.training and not trained_model.training
    rl.eval.predict(ens, x)
    assert ens.training and not trained_model.training


def test_batch_stats_attack_uses_batch_statistics_and_updates_nothing(trained_model, batch):
    """bn_stats="batch" (adversarial training): the attack sees the training
    graph's batch statistics; running statistics, counters and modes stay."""
    import copy

    x, y = batch
    model = copy.deepcopy(trained_model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fgsm_batch = rl.attacks.create("fgsm", eps=0.1, bn_stats="batch")
    fgsm_running = rl.attacks.create("fgsm", eps=0.1)
    xb, xr = fgsm_batch(model, x, y), fgsm_running(model, x, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.training for m in model.modules())
    # The batch-statistics attack equals FGSM computed by hand in train mode.
    probe = copy.deepcopy(trained_model).train()
    for m in probe.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    xg = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(probe(xg), y).backward()
    assert torch.equal(xb, (x + 0.1 * xg.grad.sign()).clamp(0, 1))
    assert not torch.equal(xb, xr)


def test_attacks_take_integer_labels_of_any_width_half_images_and_float64_models(trained_model, digits):
    """int32/int16 labels failed in the loss ('expected Long'), half images and float64 models in the first
    convolution; they are read as int64 labels and float32 images, a float64 model computing in float64."""
    import copy

    x, y = digits[0][:16], digits[1][:16]
    pgd = rl.attacks.create("pgd", eps=0.1, steps=3, seed=0)
    ref = pgd(trained_model, x, y)
    for labels in (y.int(), y.short(), y.to(torch.uint8)):
        assert torch.equal(rl.attacks.create("pgd", eps=0.1, steps=3, seed=0)(trained_model, x, labels), ref)
    half = rl.attacks.create("pgd", eps=0.1, steps=3, seed=0)(trained_model, x.half(), y)
    assert half.dtype == torch.float32 and float((half - x.half().float()).abs().max()) <= 0.1 + 1e-6
    double = copy.deepcopy(trained_model).double()
    x64 = rl.attacks.create("pgd", eps=0.1, steps=3, seed=0)(double, x, y)
    assert x64.dtype == torch.float32 and float((x64 - ref).abs().max()) < 1e-3
    assert next(double.parameters()).dtype == torch.float64
