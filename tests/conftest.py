"""Shared fixtures: scikit-learn's digits (shipped with the package, no download)
and a small CNN trained on them in a few seconds."""
from __future__ import annotations

import pytest
import torch

import robustlab as rl

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def digits():
    """(x, y) of the digits test split: 360 images, (N, 1, 8, 8) in [0, 1]."""
    ds = rl.data.load_dataset("digits", "test")
    return ds.batch(slice(None))


def train_digits_cnn(seed: int, width: int):
    """A SmallCNN trained on the digits train split for 6 epochs."""
    train = rl.data.load_dataset("digits", "train")
    torch.manual_seed(seed)
    model = rl.models.create_model("smallcnn", 10, in_channels=1, mean=train.info.mean, std=train.info.std,
                                   width=width)
    rl.train.fit_classifier(model, rl.data.make_loader(train, 64, shuffle=True, seed=seed), epochs=6, seed=seed)
    return model.eval()


@pytest.fixture(scope="session")
def trained_model():
    """A SmallCNN trained on the digits (about 0.99 test accuracy)."""
    return train_digits_cnn(seed=0, width=16)


@pytest.fixture(scope="session")
def second_model():
    """An independently trained second model (other seed and width), for transfer."""
    return train_digits_cnn(seed=1, width=12)


@pytest.fixture()
def batch(digits):
    """64 test images and labels (a power of two, see test_torchattacks)."""
    x, y = digits
    return x[:64].clone(), y[:64].clone()


@pytest.fixture()
def random_model():
    """An untrained 3-channel SmallCNN, for tests that need no accuracy."""
    torch.manual_seed(0)
    return rl.models.create_model("smallcnn", 10, in_channels=3, width=8).eval()
