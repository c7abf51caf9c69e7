"""robustlab: robust representation learning in PyTorch.

Attacks (``rl.attacks``), robust layers and model surgery (``rl.nn``), models
(``rl.models``), data (``rl.data``), training (``rl.train``) and evaluation
(``rl.eval``), reports (``rl.report``) and the application (``rl.app``: the
command line and its jobs), implementing Xie, "Towards Robust Representation Learning and
Beyond" (2020). Images are float tensors in [0, 1]; ε is in pixel units
(``eps=16/255``).
"""
from __future__ import annotations

import importlib
from typing import Any

from robustlab._version import __version__ as __version__  # the one place it is written

_SUBMODULES = ("app", "attacks", "data", "eval", "models", "nn", "report", "train", "units")


def __getattr__(name: str) -> Any:
    # Sub-packages load on first use so `robustlab --help` stays fast.
    if name in _SUBMODULES:
        return importlib.import_module(f"robustlab.{name}")
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
