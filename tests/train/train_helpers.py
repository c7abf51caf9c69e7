"""Helpers for the training tests: small models on the digits (8×8, shipped by scikit-learn)."""
from __future__ import annotations

import functools

import torch

import robustlab as rl


@functools.lru_cache(maxsize=1)
def digits_train():
    """The digits train split: 1437 images (1, 8, 8)."""
    return rl.data.load_dataset("digits", "train")


def small_model(info, norm: str | None = None, routes=("clean", "adv"), seed: int = 0, **kw):
    torch.manual_seed(seed)
    return rl.models.create_model("smallcnn", 10, in_channels=1, mean=info.mean, std=info.std, width=8, norm=norm,
                                  routes=routes, **kw)


def model_for(recipe, info, seed: int = 0, **kw):
    """A small model with the BN routes ``recipe`` trains (if any)."""
    if recipe.routes:
        return small_model(info, "mbn", recipe.routes, seed, **kw)
    return small_model(info, None, seed=seed, **kw)


# Budgets for 8×8 digits: large enough to matter, few steps to stay fast.
ATTACK = {"eps": 0.1, "steps": 2, "step_size": 0.05}


class Killed(Exception):
    """Raised by :func:`kill_at`: a training run stopped as a crash would stop it."""


def kill_at(step: int):
    """An ``on_step`` callback that raises :class:`Killed` after optimizer step ``step``."""
    def hook(s):
        if s == step:
            raise Killed

    return hook
