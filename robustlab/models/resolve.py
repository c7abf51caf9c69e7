"""``resolve_model``: a model from a user's string, a checkpoint directory or a
name for :func:`~robustlab.models.factory.create_model`. It sits above both
the factory and the checkpoint reader, which itself builds through the factory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from robustlab.models.checkpoint import META, load_model
from robustlab.models.factory import _builtin, create_model


def resolve_model(spec: str | Path, *, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A model from a user's string: a checkpoint directory (or its model.json),
    a built-in name, or ``timm:NAME`` / ``tv:NAME``, with optional local weights.
    ``kwargs`` go to :func:`create_model` (``num_classes``, ``in_channels``,
    ``mean``, ``std``: the dataset's statistics, used by built-in nets only;
    external models keep their own)."""
    path = Path(spec)
    if path.is_dir() or path.suffix == ".json":
        if weights is not None:
            raise ValueError("weights: a checkpoint directory carries its own weights; drop --weights")
        surgery = sorted(k for k in ("act", "norm", "denoise") if kwargs.get(k) is not None)
        if surgery:
            raise ValueError(f"{surgery}: a checkpoint records its own architecture; drop these options")
        if not (path / META).is_file() and not path.is_file():
            raise FileNotFoundError(f"model: {path} holds no {META}")
        return load_model(path)
    key = str(spec)
    if _builtin(key) is None:
        kwargs.pop("mean", None)
        kwargs.pop("std", None)
    return create_model(key, weights=weights, **kwargs)
