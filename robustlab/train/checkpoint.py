"""Training checkpoints: ``state.safetensors`` + ``state.json`` per step.

Everything a run needs to continue bit for bit is saved: the model (every BN
route included), the optimizer's state, the AMP grad scaler, the random
number generators (torch CPU and CUDA, numpy, Python), the epoch and step,
and the running sums of the metrics being logged. Tensors go to safetensors
(no pickle: loading runs no code); everything else is JSON. The JSON records
the SHA-256 of the tensor file, so a corrupted or truncated checkpoint is
refused with a clear error instead of loading garbage.

A checkpoint is a directory ``checkpoints/step-00000123`` written under a
temporary name and renamed when complete: a run killed while saving leaves
the previous checkpoint intact and no half-written one.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab._io import sha256_file

FORMAT = "robustlab.train-checkpoint/1"
TENSORS, META = "state.safetensors", "state.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupted or truncated."""


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) capturing every global random generator."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_py = meta["python"]
    random.setstate((version, tuple(state), gauss_py))


def _split_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, slots in sd["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, slots in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    meta: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``run_dir/checkpoints/step-<step>`` atomically; keep the newest ``keep``."""
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        opt_tensors, opt_meta = _split_optimizer(optimizer)
        rng_tensors, rng_meta = rng_state()
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(opt_tensors)
        tensors.update(rng_tensors)
        if scaler is not None and scaler.is_enabled():
            tensors.update({f"scaler.{k}": torch.as_tensor(v) for k, v in scaler.state_dict().items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
        record = {"format": FORMAT, "step": step, "sha256": sha256_file(tmp / TENSORS),
                  "optimizer": opt_meta, "rng": rng_meta, **(meta or {})}
        record["meta_sha256"] = _record_digest(record)  # state.json itself is covered too
        (tmp / META).write_text(json.dumps(record, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _record_digest(record: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint record's canonical JSON, without its own digest."""
    body = {k: v for k, v in record.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a checkpoint directory, verified against its checksum."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path, tensor_path = path / META, path / TENSORS
    if not meta_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"no checkpoint in {path}: expected {META} and {TENSORS}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {meta_path} is corrupted (not valid JSON: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a robustlab training checkpoint (format {FORMAT})")
    if meta.get("meta_sha256") != _record_digest(meta):
        raise CheckpointError(f"checkpoint {meta_path} was edited or is corrupted: its content does not match "
                              "the digest recorded when it was written")
    if sha256_file(tensor_path) != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint {tensor_path} is corrupted or truncated: its SHA-256 does not match {META}"
        )
    try:
        tensors = load_file(str(tensor_path), device=str(map_location))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"checkpoint {tensor_path} cannot be read: {err}") from None
    return tensors, meta


def restore(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Load a checkpoint's state into the model, optimizer, scaler and RNGs."""
    _load_model_state(model, tensors)
    optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
    if scaler is not None and scaler.is_enabled():
        scaler.load_state_dict({k[len("scaler."):]: v.item() for k, v in tensors.items() if k.startswith("scaler.")})
    set_rng_state(tensors, meta["rng"])


def load_trained_model(run_dir: str | Path, routed: bool = True, map_location: str = "cpu", *,
                       build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The model a ``robustlab train`` run made, in eval mode.

    ``routed=False``: the exported model (``model.json``), which for AdvProp
    has dropped its auxiliary BNs (§7.4.3). ``routed=True``: the trained model
    with every BN route its recipe trained, rebuilt from the exported
    architecture with mixture BN and the weights of the last training
    checkpoint; the exported model when the recipe trains no routes.
    ``build``: for a run that trained the user's own network (its weights
    only), a call that builds that network (its factory); its weights are
    loaded into it."""
    from robustlab.models.checkpoint import META as MODEL_META
    from robustlab.models.checkpoint import load_model, load_weights_into
    from robustlab.nn.norm import route_names
    from robustlab.nn.surgery import convert_norm

    run_dir = Path(run_dir)
    if build is not None:
        model = load_weights_into(build(), run_dir, map_location=map_location)
    else:
        model = load_model(run_dir, map_location=map_location)
    if not routed or route_names(model):
        return model
    recipe = (json.loads((run_dir / MODEL_META).read_text()).get("meta") or {}).get("recipe") or {}
    if not recipe.get("routes"):
        return model
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no training checkpoint to read the BN routes from")
    spec = getattr(model, "robustlab_spec", None)  # None: the user's own network
    routes = (spec or {}).get("routes") or recipe["routes"]
    model = convert_norm(model, "mbn", routes=tuple(routes), inplace=True)
    if spec is not None:
        model.robustlab_spec = {**spec, "norm": "mbn", "routes": list(routes)}
    _load_model_state(model, load_checkpoint(ckpt, map_location=map_location)[0])
    return model.eval()


def _load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """The ``model.*`` tensors of a checkpoint into ``model`` (strict)."""
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint does not fit this model: {err}") from None
