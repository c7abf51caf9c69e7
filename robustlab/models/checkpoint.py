"""Model checkpoints: ``model.safetensors`` + ``model.json`` in a directory.

The JSON holds what :func:`create_model` needs to rebuild the network (the
``spec``), the SHA-256 of ``model.safetensors`` and any metadata the caller
adds. The spec is also stored in the safetensors header, which the digest
covers, so an edit to either file is caught. :func:`load_model` verifies the
digest, the spec (required keys, known names) and that every weight is finite
before it builds anything; each failure is a ``ValueError`` naming the file.
Writes are atomic (write, then rename).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab._io import atomic_write, finite_state, sha256_file, write_json
from robustlab.models.factory import create_model

WEIGHTS, META = "model.safetensors", "model.json"
_SPEC_KEY = "robustlab.spec"  # the spec's copy in the safetensors header
_REQUIRED = ("name", "num_classes", "in_channels", "mean", "std")
# create_model's own options
_BUILD = ("act", "act_options", "norm", "denoise", "denoise_where", "denoise_options", "routes")
_OPTIONAL = (*_BUILD, "pretrained", "kwargs")
_NORMS, _WHERE = ("bn", "mbn", "gn"), ("stages", "all")
_EXPECTED = (f"a directory written by robustlab.models.save_model: {WEIGHTS} and {META} holding "
             '{"spec": {name, num_classes, in_channels, mean, std, ...}, "sha256": ..., "meta": {...}}')


def save_model(model: nn.Module, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save a model made by :func:`create_model` into ``directory``."""
    from safetensors.torch import save_file

    spec = getattr(model, "robustlab_spec", None)
    if spec is None:
        raise ValueError("model was not made by robustlab.models.create_model; its architecture cannot be recorded")
    spec = json.loads(json.dumps(spec))  # as model.json stores it (tuples become lists)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {_SPEC_KEY: json.dumps(spec, sort_keys=True)}
    atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p), metadata=header))
    write_json(directory / META, {"spec": spec, "sha256": sha256_file(directory / WEIGHTS), "meta": meta or {}})
    return directory


def load_model(path: str | Path, map_location: str = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (a directory, its model.json
    or its model.safetensors), after checking the files' integrity.

    Raises:
        FileNotFoundError: nothing of a checkpoint is there.
        ValueError: a checksum mismatch, non-finite weights, a spec with a
            missing key or an unknown name, or a directory written by another
            tool; the message names the file.
    """
    path = Path(path)
    directory = path.parent if path.suffix in (".json", ".safetensors") else path
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not meta_path.is_file() and not weights_path.is_file():
        raise FileNotFoundError(f"no checkpoint in {directory}: expected {META} and {WEIGHTS}")
    if not meta_path.is_file():
        raise ValueError(f"{directory} holds {WEIGHTS} but no {META}, so its architecture is unknown (exported by "
                         f"another tool?). load_model expects {_EXPECTED}. For bare weights use "
                         "create_model(name, weights=FILE)")
    if not weights_path.is_file():
        raise ValueError(f"{meta_path} has no {WEIGHTS} beside it; load_model expects {_EXPECTED}")
    spec, digest = _read_meta(meta_path)
    actual = sha256_file(weights_path)
    if actual != digest:
        raise ValueError(f"{weights_path} is corrupted or truncated: its sha256 {actual} differs from {digest} "
                         f"recorded in {meta_path}")
    state = _read_weights(weights_path, spec, meta_path, map_location)
    # the architecture only: spec.pretrained records where the weights first came
    # from, but the checkpoint holds them, so nothing is downloaded or read again
    kwargs = {k: v for k, v in (spec.get("kwargs") or {}).items() if k not in ("pretrained", "weights")}
    try:
        model = create_model(
            spec["name"], spec["num_classes"], in_channels=spec["in_channels"], mean=spec["mean"], std=spec["std"],
            **{k: spec[k] for k in _BUILD if k in spec}, **kwargs,
        )
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{meta_path}: its spec does not build a model: {err}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights_path} does not fit the model {META} describes: {err}") from None
    return model.eval()


def _read_meta(meta_path: Path) -> tuple[dict[str, Any], str]:
    """(spec, sha256) of a model.json, checked."""
    try:
        doc = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path} is not valid JSON ({err}); load_model expects {_EXPECTED}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{meta_path} holds a JSON {type(doc).__name__}; load_model expects {_EXPECTED}")
    spec = doc.get("spec")
    if spec is None:
        what = "a dense (ch. 2) model: load it with robustlab.app.dag.load_dense" if "dense" in doc else (
            "no robustlab model spec (a model not made by create_model, or exported by another tool)")
        raise ValueError(f"{meta_path} describes {what}; load_model expects {_EXPECTED}")
    _check_spec(spec, meta_path)
    digest = doc.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise ValueError(f"{meta_path} records no sha256 of {WEIGHTS} (key 'sha256', 64 hex digits); got "
                         f"{digest!r}. Re-export the model with robustlab.models.save_model")
    return spec, digest


def _check_spec(spec: object, meta_path: Path) -> None:
    """Required keys present, no unknown keys, values of the right type and known names."""
    from robustlab.models.factory import _builtin
    from robustlab.nn import activation_names
    from robustlab.nn.denoise import BLOCK_OPS

    def bad(key: str, expected: str) -> ValueError:
        value = spec.get(key) if isinstance(spec, dict) else spec
        return ValueError(f"{meta_path}: spec.{key} must be {expected}; got {value!r}")

    if not isinstance(spec, dict):
        raise ValueError(f"{meta_path}: spec must be a JSON object; got {type(spec).__name__}")
    missing = [k for k in _REQUIRED if k not in spec]
    if missing:
        raise ValueError(f"{meta_path}: spec is missing the key(s) {', '.join(missing)}; load_model expects "
                         f"{_EXPECTED}")
    unknown = sorted(set(spec) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(f"{meta_path}: spec has unknown key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(_REQUIRED + _OPTIONAL)}")
    name = spec["name"]
    if not isinstance(name, str) or not (_builtin(name) or name.startswith(("timm:", "tv:", "torchvision:"))):
        raise bad("name", "a built-in model name, timm:NAME or tv:NAME")
    for key, low in (("num_classes", 2), ("in_channels", 1)):
        v = spec[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise bad(key, f"an integer >= {low}")
    for key in ("mean", "std"):
        v = spec[key]
        if not isinstance(v, list) or not v or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in v):
            raise bad(key, "a non-empty list of finite numbers")
    if any(s <= 0 for s in spec["std"]):
        raise bad("std", "a list of positive numbers")
    _check_choice(spec.get("act"), activation_names(), bad("act", f"null or one of {activation_names()}"))
    _check_choice(spec.get("norm"), _NORMS, bad("norm", f"null or one of {list(_NORMS)}"))
    _check_choice(spec.get("denoise"), BLOCK_OPS, bad("denoise", f"null or one of {list(BLOCK_OPS)}"))
    _check_choice(spec.get("denoise_where", "stages"), _WHERE, bad("denoise_where", f"one of {list(_WHERE)}"),
                  optional=False)
    for key in ("act_options", "denoise_options", "kwargs", "pretrained"):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            raise bad(key, "null or a JSON object")
    routes = spec.get("routes", [])
    if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
        raise bad("routes", "a list of route names")


def _check_choice(value: object, choices: Any, error: ValueError, optional: bool = True) -> None:
    if (value is None and optional) or (isinstance(value, str) and value in choices):
        return
    raise error


def _read_weights(weights_path: Path, spec: dict[str, Any], meta_path: Path, map_location: str
                  ) -> dict[str, torch.Tensor]:
    """The state dict, after checking the header's spec agrees with model.json's
    and every floating-point weight is finite."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(weights_path), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(weights_path), device=map_location)
    except Exception as err:  # safetensors raises its own error types on a damaged file
        raise ValueError(f"{weights_path} is corrupted or truncated: {err}") from None
    try:
        stored = json.loads(header[_SPEC_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{weights_path} carries no robustlab spec in its header (written by another tool?); "
                         f"load_model expects {_EXPECTED}") from None
    if stored != spec:
        keys = sorted(k for k in set(stored) | set(spec) if stored.get(k) != spec.get(k))
        diff = "; ".join(f"{k}: {spec.get(k)!r} in {META}, {stored.get(k)!r} in {WEIGHTS}" for k in keys)
        raise ValueError(f"{meta_path} was edited: its spec disagrees with the one saved with the weights ({diff})")
    return finite_state(state, weights_path)
