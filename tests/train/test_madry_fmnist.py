"""Madry adversarial training on real data raises PGD accuracy over vanilla."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.data.sources import DataNotFoundError
from robustlab.train import recipes

EPS = 0.1  # the usual Fashion-MNIST budget (25.5/255)


@pytest.mark.slow
def test_madry_training_beats_vanilla_under_pgd():
    try:
        train = rl.data.load_dataset("fashion_mnist", "train", limit=6000, download=False)
        test = rl.data.load_dataset("fashion_mnist", "test", limit=500, download=False)
    except DataNotFoundError as err:
        pytest.skip(f"Fashion-MNIST files not installed: {err}")
    x, y = test.batch(slice(None))
    results = {}
    for name, recipe in (("vanilla", recipes.create("vanilla")),
                         ("madry", recipes.create("madry", eps=EPS, steps=3, step_size=0.04, targeted=False))):
        torch.manual_seed(0)
        model = rl.models.create_model("smallcnn", 10, in_channels=1, mean=train.info.mean, std=train.info.std)
        model = rl.train.fit(model, train, recipe, epochs=2, batch_size=100, lr=0.05, progress=False).model
        pgd = rl.attacks.create("pgd", eps=EPS, steps=10, step_size=0.025, clean_init_prob=0.0, seed=0)
        robust = rl.eval.robust_accuracy(pgd, model, [(x, y)])["robust_accuracy"]
        results[name] = (rl.eval.accuracy(model, x, y), robust)
    (clean_v, pgd_v), (clean_m, pgd_m) = results["vanilla"], results["madry"]
    assert clean_v > 0.65 and pgd_v < 0.15, results
    assert clean_m > 0.6 and pgd_m > pgd_v + 0.3, results
