"""Small I/O helpers every layer may use: atomic writes (write, then rename),
the JSON and safetensors writers, a checked JSON-object reader, and the
device picker."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` next to ``path``, then rename over it: readers see the old
    file or the new one, never half of one, and a failure leaves no temp file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() makes files: safetensors' writer makes them 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks (md5 only where a dataset's
    publisher gives nothing else)."""
    h = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file (exports and checkpoints record it)."""
    return file_digest(path, "sha256")


def finite_state(state: dict[str, torch.Tensor], where: Any) -> dict[str, torch.Tensor]:
    """``state`` unchanged, or a ValueError naming ``where`` and the tensors holding NaN or inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{where} holds non-finite weights (NaN or inf) in {len(bad)} tensor(s): "
                         f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    return state


def read_json_mapping(path: Path, expected: str) -> dict[str, Any]:
    """The JSON object in ``path``, or a ValueError naming ``path`` and what
    it holds, ending with ``expected`` (what the caller needed, or does
    instead: ``load_model expects ...``, ``refusing to write into DIR``)."""
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {expected}") from None
    if not isinstance(doc, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(doc), "number")
        raise ValueError(f"{path} holds a JSON {kind}; {expected}")
    return doc


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(state, str(p)))


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available")
    return device


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load``, but ``5e-4`` and ``1e6`` are numbers as in YAML 1.2
    (PyYAML follows YAML 1.1, which reads them as strings; ``lr: 5e-4`` would
    be refused as not a number)."""
    loader = _loader()(text)  # a yaml.SafeLoader subclass: plain data only, no object construction
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


@functools.cache
def _loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            """A mapping, refusing a key written twice (YAML keeps the last one without a word)."""
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges, and may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeLoader refuses it itself
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"the key {key!r} is written twice (first on line {first.line + 1}); keep one",
                        key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader
