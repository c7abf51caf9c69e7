"""Model checkpoints: ``model.safetensors`` + ``model.json`` in a directory.

The JSON holds what :func:`create_model` needs to rebuild the network, plus
any metadata the caller adds. Writes are atomic (write, then rename).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from robustlab._io import write_json, write_tensors
from robustlab.models.factory import create_model

WEIGHTS, META = "model.safetensors", "model.json"


def save_model(model: nn.Module, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save a model made by :func:`create_model` into ``directory``."""
    spec = getattr(model, "robustlab_spec", None)
    if spec is None:
        raise ValueError("model was not made by robustlab.models.create_model; its architecture cannot be recorded")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_tensors(directory / WEIGHTS, model.state_dict())
    write_json(directory / META, {"spec": spec, "meta": meta or {}})
    return directory


def load_model(path: str | Path, map_location: str = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (a directory or its model.json)."""
    from safetensors.torch import load_file

    path = Path(path)
    directory = path.parent if path.suffix == ".json" else path
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no checkpoint in {directory}: expected {META} and {WEIGHTS}")
    try:
        spec = json.loads(meta_path.read_text())["spec"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{meta_path} is not a robustlab checkpoint description: {err}") from None
    arch = {k: spec[k] for k in ("act", "act_options", "norm", "denoise", "denoise_where", "routes") if k in spec}
    model = create_model(
        spec["name"], spec["num_classes"], in_channels=spec["in_channels"],
        mean=spec["mean"], std=spec["std"], **arch, **spec.get("kwargs", {}),
    )
    try:
        state = load_file(str(weights_path), device=map_location)
    except Exception as err:  # safetensors raises its own error type on truncation
        raise ValueError(f"{weights_path} is corrupted or truncated: {err}") from None
    model.load_state_dict(state)
    return model.eval()
