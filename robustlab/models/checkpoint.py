"""Model checkpoints: ``model.safetensors`` + ``model.json`` in a directory.

One layout for every kind of model (:data:`KINDS`)::

    {"kind": "classifier" | "segmenter" | "detector", "spec": {...}, "sha256": "...", "meta": {...}}

The ``spec`` is what rebuilds the network: :func:`create_model`'s arguments
for a classifier; ``{task, num_classes, width}`` (plus the provenance a DAG
study records: ``seed``, ``train``, ``scenes``, ``classes``) for the dense
models of ch. 2 (:func:`robustlab.models.dense.create_dense`). The spec is
also stored in the safetensors header, which the SHA-256 of
``model.safetensors`` covers, and the kind must agree with it (a dense
spec's ``task``), so an edit to either file is caught.
:func:`load_model` verifies the digest, the spec (required keys, known names)
and that every weight is finite before it builds anything; each failure is a
``ValueError`` naming the file. Only safetensors are read: nothing is
unpickled. Writes are atomic (write, then rename).

Older layouts still load: a classifier's ``model.json`` without ``kind``, and
a DAG study's dense model written before the kind existed (``{"spec": null,
"dense": {...}, "meta": ...}``, no digest: its weights are checked for
finiteness and against the architecture only).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab._io import atomic_write, finite_state, read_json_mapping, sha256_file, write_json
from robustlab.models.factory import create_model

WEIGHTS, META = "model.safetensors", "model.json"
KINDS = ("classifier", "segmenter", "detector")
DENSE_KINDS = ("segmenter", "detector")
KIND_OF_TASK = {"segmentation": "segmenter", "detection": "detector"}
# the spec's copy in the safetensors header: one key, since safetensors writes its metadata
# in no fixed order (two keys would make the same model's file differ byte for byte); a dense
# spec's task names the kind, so the kind needs no copy of its own
_SPEC_KEY = "robustlab.spec"
_REQUIRED = ("name", "num_classes", "in_channels", "mean", "std")
# create_model's own options
_BUILD = ("act", "act_options", "norm", "denoise", "denoise_where", "denoise_options", "routes")
_OPTIONAL = (*_BUILD, "pretrained", "kwargs")
_DENSE_REQUIRED = ("task", "num_classes", "width")
_DENSE_OPTIONAL = ("seed", "train", "scenes", "classes")  # where a DAG study's model came from
_NORMS, _WHERE = ("bn", "mbn", "gn"), ("stages", "all")
_EXPECTED = (f"a directory written by robustlab.models.save_model: {WEIGHTS} and {META} holding "
             '{"kind": "classifier" | "segmenter" | "detector", "spec": {name, num_classes, in_channels, mean, '
             'std, ...} (a dense model: {task, num_classes, width}), "sha256": ..., "meta": {...}}')


@dataclass(frozen=True)
class ModelInfo:
    """A checked ``model.json``: the model's kind, its spec, the recorded
    SHA-256 of its weights (``None`` for the old dense layout) and the
    caller's metadata."""

    kind: str
    spec: dict[str, Any]
    sha256: str | None
    meta: dict[str, Any] = field(default_factory=dict)


def save_model(model: nn.Module, directory: str | Path, meta: dict[str, Any] | None = None, *,
               spec: dict[str, Any] | None = None) -> Path:
    """Save ``model`` into ``directory`` (``model.safetensors`` + ``model.json``).

    A model made by :func:`create_model` records its own spec (kind
    ``classifier``). A dense model of ch. 2 passes ``spec`` = ``{task,
    num_classes, width}`` (``task``: ``segmentation`` → kind ``segmenter``,
    ``detection`` → ``detector``), optionally with its provenance (``seed``,
    ``train``, ``scenes``, ``classes``); the spec is checked before anything is
    written.
    """
    directory = Path(directory)
    if spec is None:
        spec = getattr(model, "robustlab_spec", None)
        if spec is None:
            raise ValueError("model was not made by robustlab.models.create_model; its architecture cannot be "
                             "recorded (a dense model of robustlab.models.dense passes spec={task, num_classes, "
                             "width})")
        kind = "classifier"
    else:
        spec = json.loads(json.dumps(spec))
        _check_dense_spec(spec, directory / META)
        kind = KIND_OF_TASK[spec["task"]]
    _write(model, directory, kind, spec, meta)
    return directory


def save_weights(model: nn.Module, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """The weights of a model whose architecture robustlab cannot record (a
    user's ``nn.Module``), with ``meta`` beside them. ``model.json`` has
    ``"kind": null, "spec": null``: :func:`load_model` refuses it (there is
    nothing to rebuild); ``create_model(name, weights=FILE)`` or
    ``load_state_dict`` read the weights."""
    directory = Path(directory)
    _write(model, directory, None, None, meta)
    return directory


def load_weights_into(model: nn.Module, path: str | Path, map_location: str = "cpu") -> nn.Module:
    """The weights :func:`save_weights` wrote at ``path`` (a run directory, its
    model.json or model.safetensors) loaded into ``model``: the user's own
    network, rebuilt by the caller (its factory), after the sha256 check and
    with every weight finite; returns ``model`` in eval mode. A robustlab
    model (one :func:`load_model` rebuilds) loads the same way."""
    meta_path, weights_path = _paths(path)
    doc = read_json_mapping(meta_path, f"load_weights_into expects {_EXPECTED}")
    digest = doc.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise ValueError(f"{meta_path} records no sha256 of {WEIGHTS} (key 'sha256', 64 hex digits); got {digest!r}")
    actual = sha256_file(weights_path)
    if actual != digest:
        raise ValueError(f"{weights_path} is corrupted or truncated: its sha256 {actual} differs from {digest} "
                         f"recorded in {meta_path}")
    state = _read_weights(weights_path, ModelInfo(doc.get("kind"), doc.get("spec"), None, {}), meta_path,
                          map_location)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights_path} does not fit the network it is loaded into: {err}") from None
    return model.eval()


def _write(model: nn.Module, directory: Path, kind: str | None, spec: dict[str, Any] | None,
           meta: dict[str, Any] | None) -> None:
    """The one ``model.json`` writer: weights first, then the JSON naming their digest."""
    from safetensors.torch import save_file

    spec = json.loads(json.dumps(spec))  # as model.json stores it (tuples become lists)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {} if kind is None else {_SPEC_KEY: json.dumps(spec, sort_keys=True)}
    atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p), metadata=header))
    write_json(directory / META, {"kind": kind, "spec": spec, "sha256": sha256_file(directory / WEIGHTS),
                                  "meta": meta or {}})


def update_meta(directory: str | Path, **fields: Any) -> None:
    """Set ``fields`` in a saved model's ``model.json`` metadata (the weights
    and their digest are left as they are): a finished run evaluated again
    records its new figures beside the model."""
    path = Path(directory) / META
    doc = dict(read_json_mapping(path, f"update_meta expects {_EXPECTED}"))
    doc["meta"] = {**(doc.get("meta") or {}), **fields}
    write_json(path, doc)


def load_model(path: str | Path, map_location: str = "cpu", *, kind: str | Sequence[str] | None = None
               ) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (a directory, its model.json
    or its model.safetensors), after checking the files' integrity; in eval mode.

    ``kind``: the kind(s) the caller accepts (``"classifier"``,
    ``("segmenter", "detector")``); ``None`` accepts any.

    Raises:
        FileNotFoundError: nothing of a checkpoint is there.
        ValueError: a model of another kind than asked for, a checksum
            mismatch, non-finite weights, a spec with a missing key or an
            unknown name, or a directory written by another tool; the message
            names the file.
    """
    return load_checkpoint(path, map_location, kind=kind)[0]


def load_checkpoint(path: str | Path, map_location: str = "cpu", *, kind: str | Sequence[str] | None = None
                    ) -> tuple[nn.Module, ModelInfo]:
    """:func:`load_model`, and the checked ``model.json`` (:class:`ModelInfo`)
    it was built from."""
    meta_path, weights_path = _paths(path)
    info = _read_meta(meta_path)
    if kind is not None:
        wanted = (kind,) if isinstance(kind, str) else tuple(kind)
        if info.kind not in wanted:
            what = "a dense model (segmenter or detector)" if set(wanted) == set(DENSE_KINDS) else (
                " or ".join(wanted))
            raise ValueError(f"{meta_path} holds a {info.kind}, not {what}")
    if info.sha256 is not None:
        actual = sha256_file(weights_path)
        if actual != info.sha256:
            raise ValueError(f"{weights_path} is corrupted or truncated: its sha256 {actual} differs from "
                             f"{info.sha256} recorded in {meta_path}")
    state = _read_weights(weights_path, info, meta_path, map_location)
    model = _build(info, meta_path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights_path} does not fit the model {META} describes: {err}") from None
    return model.eval(), info


def read_model_info(path: str | Path) -> ModelInfo:
    """The checked ``model.json`` of a checkpoint (a directory or one of its
    files), without reading the weights."""
    return _read_meta(_paths(path)[0])


def _paths(path: str | Path) -> tuple[Path, Path]:
    """(model.json, model.safetensors) of a checkpoint, both present."""
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
    return meta_path, weights_path


def _build(info: ModelInfo, meta_path: Path) -> nn.Module:
    """The architecture ``info.spec`` describes, freshly initialized."""
    spec = info.spec
    if info.kind in DENSE_KINDS:
        from robustlab.models.dense import create_dense

        return create_dense(spec["task"], spec["num_classes"], spec["width"])
    # the architecture only: spec.pretrained records where the weights first came
    # from, but the checkpoint holds them, so nothing is downloaded or read again
    kwargs = {k: v for k, v in (spec.get("kwargs") or {}).items() if k not in ("pretrained", "weights")}
    try:
        return create_model(
            spec["name"], spec["num_classes"], in_channels=spec["in_channels"], mean=spec["mean"], std=spec["std"],
            **{k: spec[k] for k in _BUILD if k in spec}, **kwargs,
        )
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{meta_path}: its spec does not build a model: {err}") from None


def _read_meta(meta_path: Path) -> ModelInfo:
    """The model.json at ``meta_path``, checked (the old dense layout read as a dense kind)."""
    doc = read_json_mapping(meta_path, f"load_model expects {_EXPECTED}")
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    if doc.get("spec") is None and "dense" in doc:  # a DAG study's model, before the kind
        spec = doc["dense"]
        _check_dense_spec(spec, meta_path)
        return ModelInfo(KIND_OF_TASK[spec["task"]], spec, None, meta)
    spec = doc.get("spec")
    if spec is None and "kind" in doc and doc["kind"] is None and "sha256" in doc:  # save_weights' output
        weights = meta_path.parent / WEIGHTS
        raise ValueError(f"{meta_path} holds the weights of your own network (saved by save_weights), not a model "
                         f"robustlab can rebuild: build the network yourself and load them with "
                         f"robustlab.models.load_weights_into(model, '{meta_path.parent}') or "
                         f"model.load_state_dict(robustlab.models.load_state_dict('{weights}')); on the CLI, "
                         f"--model file.py:factory --weights {weights}")
    if spec is None:
        raise ValueError(f"{meta_path} describes no robustlab model spec (a model not made by create_model, or "
                         f"exported by another tool); load_model expects {_EXPECTED}")
    kind = doc.get("kind", "classifier")  # a classifier's model.json before the kind
    if kind not in KINDS:
        raise ValueError(f"{meta_path}: kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind in DENSE_KINDS:
        _check_dense_spec(spec, meta_path)
        if KIND_OF_TASK[spec["task"]] != kind:
            raise ValueError(f"{meta_path}: kind {kind!r} disagrees with spec.task {spec['task']!r}")
    else:
        _check_spec(spec, meta_path)
    digest = doc.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise ValueError(f"{meta_path} records no sha256 of {WEIGHTS} (key 'sha256', 64 hex digits); got "
                         f"{digest!r}. Re-export the model with robustlab.models.save_model")
    return ModelInfo(kind, spec, digest, meta)


def _check_dense_spec(spec: object, meta_path: Path) -> None:
    """A dense model's spec: task, num_classes, width (and known provenance keys only)."""
    what = f"{meta_path}: a dense (ch. 2) model's spec"
    if not isinstance(spec, dict):
        raise ValueError(f"{what} must be a JSON object; got {type(spec).__name__}")
    missing = [k for k in _DENSE_REQUIRED if k not in spec]
    if missing:
        raise ValueError(f"{what} is missing the key(s) {', '.join(missing)}; load_model expects {_EXPECTED}")
    unknown = sorted(set(spec) - set(_DENSE_REQUIRED) - set(_DENSE_OPTIONAL))
    if unknown:
        raise ValueError(f"{what} has unknown key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(_DENSE_REQUIRED + _DENSE_OPTIONAL)}")
    if not isinstance(spec["task"], str) or spec["task"] not in KIND_OF_TASK:
        raise ValueError(f"{what}: task must be one of {', '.join(KIND_OF_TASK)}; got {spec['task']!r}")
    for key, low in (("num_classes", 2), ("width", 1)):
        v = spec[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{what}: {key} must be an integer >= {low}; got {v!r}")


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


def _read_weights(weights_path: Path, info: ModelInfo, meta_path: Path, map_location: str
                  ) -> dict[str, torch.Tensor]:
    """The state dict, after checking the header's spec agrees with
    model.json's (the old dense layout has none) and every floating-point
    weight is finite."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(weights_path), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(weights_path), device=map_location)
    except Exception as err:  # safetensors raises its own error types on a damaged file
        raise ValueError(f"{weights_path} is corrupted or truncated: {err}") from None
    if info.sha256 is not None:
        _check_header(header, info, weights_path, meta_path)
    return finite_state(state, weights_path)


def _check_header(header: dict[str, str], info: ModelInfo, weights_path: Path, meta_path: Path) -> None:
    try:
        stored = json.loads(header[_SPEC_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{weights_path} carries no robustlab spec in its header (written by another tool?); "
                         f"load_model expects {_EXPECTED}") from None
    spec = info.spec
    if stored != spec:
        keys = sorted(k for k in set(stored) | set(spec) if stored.get(k) != spec.get(k))
        diff = "; ".join(f"{k}: {spec.get(k)!r} in {META}, {stored.get(k)!r} in {WEIGHTS}" for k in keys)
        raise ValueError(f"{meta_path} was edited: its spec disagrees with the one saved with the weights ({diff})")
