"""``resolve_model``: a model from a user's string, a checkpoint directory or a
name for :func:`~robustlab.models.factory.create_model`. It sits above both
the factory and the checkpoint reader, which itself builds through the factory."""
from __future__ import annotations

import importlib
import importlib.util
import itertools
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.models.checkpoint import META, load_model
from robustlab.models.factory import _builtin, create_model, load_weights
from robustlab.models.normalize import NormalizedModel

_FACTORY = re.compile(r"^(?P<source>[^:]+\.py|[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_]\w*)$")


def is_factory_spec(spec: str) -> bool:
    """``path/to/file.py:factory`` or ``package.module:factory``."""
    return bool(_FACTORY.match(str(spec))) and not str(spec).startswith(("timm:", "tv:", "torchvision:"))


def is_checkpoint_spec(spec: str | Path) -> bool:
    """A robustlab run or model directory, or its ``model.json``."""
    return Path(spec).is_dir() or Path(spec).suffix == ".json"


def load_factory(spec: str) -> nn.Module:
    """Call the factory a spec names and check it returns an ``nn.Module``.

    ``path/to/file.py:factory`` imports that file (the user's own code, named
    on purpose), ``package.module:factory`` imports the module; the factory
    takes no arguments and returns a model from [0, 1] images to logits."""
    m = _FACTORY.match(str(spec))
    if m is None:
        raise ValueError(f"model: {spec!r} is not of the form path/to/file.py:factory or package.module:factory")
    source, attr = m.group("source"), m.group("attr")
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"model: {path} does not exist (from {spec!r})")
        name = f"robustlab_user_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"model: cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except SyntaxError as err:
            raise ValueError(f"model: {path} has a syntax error at line {err.lineno}: {err.msg} "
                             f"(from {spec!r})") from None
        except ImportError as err:
            raise ValueError(f"model: importing {path} failed: {err} (from {spec!r})") from None
    else:
        try:
            module = importlib.import_module(source)
        except ModuleNotFoundError as err:
            raise ValueError(f"model: cannot import module {source!r} (from {spec!r}): {err}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"model: {source} has no callable {attr!r}")
    try:
        model = factory()
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # the user's code: its error, named as theirs, without robustlab's traceback
        raise ValueError(f"model: {spec} failed: {attr}() raised {type(err).__name__}: {err}{_user_line(err)} "
                         f"(robustlab calls the factory with no arguments)") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _user_line(err: BaseException) -> str:
    """`` at FILE:LINE``, the innermost frame of the error's traceback."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""


def normalized(model: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    """``model`` behind a Normalize(mean, std) layer, for a network that expects
    normalized input: the result takes [0, 1] pixels (the library's convention)."""
    if mean is None and std is None:
        return model
    if mean is None or std is None:
        raise ValueError("mean and std must be given together")
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"mean and std must have one value per channel and std > 0; got {mean}, {std}")
    return NormalizedModel(model, tuple(mean), tuple(std))


def _refuse_weights_only(path: Path) -> None:
    """A run that trained the user's own network (``model.name=file.py:factory``)
    keeps its weights only: say the command that rebuilds and loads it."""
    from robustlab._io import read_json_mapping, safe_yaml

    meta = path / META if path.is_dir() else path
    doc = read_json_mapping(meta, "a robustlab model.json") if meta.is_file() else {"spec": "absent"}
    if doc.get("spec") is not None or "dense" in doc:  # a model robustlab rebuilds (or no model.json at all)
        return
    name = "file.py:factory"
    config = meta.parent / "config.yaml"
    if config.is_file():
        raw = safe_yaml(config.read_text()) or {}
        name = str((raw.get("model") or {}).get("name") or name) if isinstance(raw, dict) else name
    raise ValueError(f"model: {meta.parent} holds the weights of your own network, not a model robustlab can "
                     f"rebuild; pass --model {name} --weights {meta.parent / 'model.safetensors'}")


def _model_dirs_near(path: Path) -> str:
    """Where the model is when ``path`` is not one: a folder above it holding
    ``model.json`` (a run's ``checkpoints/``), or folders below it (a study's
    ``models/NAME``, a folder of runs), as a hint to append to the error."""
    above = next((p for p in path.resolve().parents if (p / META).is_file()), None)
    if above is not None:
        return f"; the model is the run directory above it: {above}"
    below = sorted(str(d) for d in _subfolders(path) if (d / META).is_file())
    if not below:  # one level further (a study's models/NAME), looked through only in a small tree
        below = sorted(str(d) for c in _subfolders(path) for d in _subfolders(c) if (d / META).is_file())
    if not below:
        return ""
    shown = ", ".join(below[:4]) + (f", ... ({len(below)} in all)" if len(below) > 4 else "")
    return f"; the model directories in it: {shown}"


def _subfolders(path: Path, most: int = 200) -> list[Path]:
    """The visible folders in ``path``; none when it holds more than ``most``
    entries (a dataset's class folders, not runs)."""
    try:
        entries = list(itertools.islice(path.iterdir(), most + 1))
    except OSError:
        return []
    return [] if len(entries) > most else [e for e in entries if e.is_dir() and not e.name.startswith(".")]


def resolve_model(spec: str | Path, *, weights: str | Path | None = None,
                  data_stats: tuple[Sequence[float], Sequence[float]] | None = None, **kwargs: Any) -> nn.Module:
    """A model from a user's string: a checkpoint directory (or its model.json),
    a built-in name, ``timm:NAME`` / ``tv:NAME``, or a factory
    (``path/to/file.py:factory``, ``package.module:factory``), with optional
    local weights (or ``weights="DEFAULT"``: torchvision's default weights of
    a ``tv:`` model, timm's pretrained ones of a ``timm:`` model).

    ``kwargs`` go to :func:`create_model` (``num_classes``, ``in_channels``,
    ``mean``, ``std``, ...). ``data_stats``: the dataset's ``(mean, std)``,
    the input statistics of a built-in net given no ``mean``/``std`` (what
    the CLI passes); timm and torchvision models keep their own. A checkpoint
    records its statistics and a factory's network normalizes as it is built:
    ``mean``/``std`` for them are refused (wrap the model with
    :func:`normalized` instead)."""
    stats = sorted(k for k in ("mean", "std") if kwargs.get(k) is not None)
    path = Path(spec)
    if stats and (is_checkpoint_spec(path) or is_factory_spec(str(spec))):
        raise ValueError(f"{', '.join(stats)}: {spec} is built with its own input statistics; wrap the model "
                         "instead: rl.models.normalized(model, mean, std)")
    if is_checkpoint_spec(path):
        if weights is not None:
            raise ValueError("weights: a checkpoint directory carries its own weights; drop --weights")
        surgery = sorted(k for k in ("act", "norm", "denoise") if kwargs.get(k) is not None)
        if surgery:
            raise ValueError(f"{surgery}: a checkpoint records its own architecture; drop these options")
        if not (path / META).is_file() and not path.is_file():
            raise FileNotFoundError(f"model: {path} holds no {META}{_model_dirs_near(path)}")
        _refuse_weights_only(path)
        return load_model(path, kind="classifier")
    key = str(spec)
    if is_factory_spec(key):
        surgery = sorted(k for k in ("act", "norm", "denoise") if kwargs.get(k) is not None)
        if surgery:  # recorded as if applied, and the model ran as the factory built it
            raise ValueError(f"{surgery}: {key} is your own network, built as its factory makes it; these options "
                             "change robustlab's, timm's and torchvision's models only (convert yours with "
                             "rl.nn.swap_activation, convert_norm or add_denoise_blocks in the factory)")
        model = load_factory(key)
        if weights is not None:
            load_weights(model, weights, key)
        return model
    if data_stats is not None and _builtin(key) is not None and not stats:
        kwargs["mean"], kwargs["std"] = data_stats
    if key.startswith("timm:") and weights == "DEFAULT" and not kwargs.get("pretrained"):
        weights, kwargs["pretrained"] = None, True  # as for tv:NAME, DEFAULT names the library's own weights
    try:
        return create_model(key, weights=weights, **kwargs)
    except ValueError as err:
        n = kwargs.get("num_classes")
        if weights is None or n is None or "mis-shaped" not in str(err):
            raise
        raise ValueError(f"{err}. The model was built with {n} outputs, one per class of the data (its class "
                         f"folders); weights trained on another number of classes need data with that "
                         "many") from None
