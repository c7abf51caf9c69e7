"""Per-sample early stopping never changes the outcome for samples that remain."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl

CASES = [
    ("pgd", {"eps": 24 / 255, "steps": 10, "clean_init_prob": 0.0}),
    ("mdi2fgsm", {"eps": 24 / 255, "steps": 10}),  # per-sample diversity draws and momentum
    ("pgd", {"eps": 48 / 255, "steps": 10, "targeted": True}),
    ("ifgsm", {"eps": 0.8, "norm": "l2", "steps": 10}),
]


@pytest.mark.parametrize("name,kw", CASES)
def test_early_stop_keeps_remaining_trajectories(trained_model, digits, name, kw):
    x, y = digits
    fixed = rl.attacks.create(name, seed=5, **kw).run(trained_model, x, y)
    early = rl.attacks.create(name, seed=5, early_stop=True, **kw).run(trained_model, x, y)
    n = kw["steps"]
    remained = early.steps == n
    retired = ~remained
    assert retired.any() and remained.any()
    # Samples never retired followed the same trajectory, to float round-off
    # (batched convolutions may sum in another order for a smaller batch).
    assert torch.allclose(early.x_adv[remained], fixed.x_adv[remained], atol=1e-5)
    assert (early.success[remained] == fixed.success[remained]).all()
    # Early stop keeps every success of the fixed-step attack (and may add ones
    # the fixed-step attack reached and then lost).
    assert (early.success | ~fixed.success).all()
    # Retired samples did meet the goal, at the iterate returned.
    assert early.success[retired].all()
    pred = trained_model(early.x_adv).argmax(1)
    goal = pred == early.target if early.target is not None else pred != y
    assert (goal == early.success).all()
    assert (early.steps[retired] < n).all()
    # Targets drawn at random are the same with and without early stop.
    if early.target is not None:
        assert torch.equal(early.target, fixed.target)


def test_early_stop_saves_iterations(trained_model, digits):
    x, y = digits
    res = rl.attacks.create("pgd", eps=64 / 255, steps=20, early_stop=True, seed=0).run(trained_model, x, y)
    assert res.success.float().mean() > 0.95
    assert res.steps.float().mean() < 10


def test_already_misclassified_leave_at_step_zero(trained_model, batch):
    x, y = batch
    wrong = (y + 1) % 10
    res = rl.attacks.create("ifgsm", eps=16 / 255, early_stop=True).run(trained_model, x, wrong)
    correct_for_wrong = trained_model(x).argmax(1) != wrong
    assert (res.steps[correct_for_wrong] == 0).all()
    assert torch.equal(res.x_adv[correct_for_wrong], x[correct_for_wrong])


def test_micro_batch_gives_the_same_attack(trained_model, digits):
    """Chunked model calls change nothing but the batch the model sees."""
    x, y = digits
    for name, kw in (("pgd", {"eps": 24 / 255, "steps": 5}), ("mdi2fgsm", {"eps": 24 / 255, "steps": 5}),
                     ("pgd", {"eps": 24 / 255, "steps": 5, "early_stop": True, "targeted": True})):
        whole = rl.attacks.create(name, seed=2, **kw).run(trained_model, x, y)
        chunked = rl.attacks.create(name, seed=2, micro_batch=50, **kw).run(trained_model, x, y)
        assert torch.allclose(whole.x_adv, chunked.x_adv, atol=1e-5), name
        assert torch.equal(whole.steps, chunked.steps) and torch.equal(whole.success, chunked.success)


def test_micro_batch_calls_stay_bounded(trained_model, digits):
    x, y = digits
    sizes = []
    handle = trained_model.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    try:
        rl.attacks.create("pgd", eps=32 / 255, steps=5, early_stop=True, micro_batch=64).run(trained_model, x, y)
    finally:
        handle.remove()
    assert max(sizes) == 64 and len(sizes) > 5
    with pytest.raises(ValueError, match="micro_batch must be a positive integer"):
        rl.attacks.create("pgd", micro_batch=0)


def test_robust_accuracy_over_a_loader(trained_model):
    ds = rl.data.load_dataset("digits", "test")
    loader = rl.data.make_loader(ds, 64)
    kw = {"eps": 24 / 255, "steps": 10, "clean_init_prob": 0.0, "seed": 0}
    fixed = rl.eval.robust_accuracy(rl.attacks.create("pgd", **kw), trained_model, loader, pool=64)
    early = rl.eval.robust_accuracy(rl.attacks.create("pgd", early_stop=True, micro_batch=64, **kw),
                                    trained_model, loader)
    assert fixed["n"] == early["n"] == 360
    # Early stop can only find more successes (it keeps an iterate the fixed
    # attack may leave again), so robust accuracy can only fall, and not by much.
    assert 0 <= fixed["robust_accuracy"] - early["robust_accuracy"] <= 0.05
    assert early["steps_mean"] < fixed["steps_mean"] == 10
    targeted = rl.eval.robust_accuracy(rl.attacks.create("pgd", targeted=True, **kw), trained_model, loader)
    assert fixed["robust_accuracy"] <= targeted["robust_accuracy"] <= 1


def test_shape_buckets_change_nothing_but_the_shapes(trained_model, digits):
    """Padding model calls to a multiple of the bucket (the CUDA default) leaves
    every real row's logits and gradients as they were."""
    x, y = digits
    sizes = []
    handle = trained_model.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    try:
        for name, kw in (("pgd", {"early_stop": True}), ("mdi2fgsm", {"early_stop": True}), ("dcw", {})):
            kw = {**kw, **({"steps": 5, "binary_search_steps": 1, "initial_const": 10.0} if name == "dcw"
                           else {"eps": 24 / 255, "steps": 6})}
            plain = rl.attacks.create(name, seed=4, **kw).run(trained_model, x[:100], y[:100])
            sizes.clear()
            padded = rl.attacks.create(name, seed=4, shape_bucket=32, **kw).run(trained_model, x[:100], y[:100])
            assert all(s % 32 == 0 for s in sizes), (name, sorted(set(sizes)))
            assert torch.allclose(plain.x_adv, padded.x_adv, atol=1e-5), name
            assert torch.equal(plain.success, padded.success) and torch.equal(plain.steps, padded.steps)
    finally:
        handle.remove()
