"""Study models that start from another study model's trained weights.

    models:
      madry: {}
      madry_bn_clean:                  # §6.4.4: adversarial filters, BNs re-finetuned on clean images
        init_from: madry
        recipe: {name: vanilla}
        train: {epochs: 1, trainable: bn}

``init_from: MODEL`` names another model of the study (after sweeps expand:
``"mixed-clean_ratio1.0"``). The study trains MODEL first; the dependent
model's run starts from MODEL's weights (:func:`robustlab.train.finetune.init_from_run`)
and records which weights those were (``init_from.json``: the source's name
and the SHA-256 of its exported weights). That record is part of the
dependent model's identity: a source trained again (another config, or
deleted and retrained into other weights) retrains its dependents, and their
evaluations run again. Unknown names, a model starting from itself, cycles
and a source with another network are refused when the study is loaded.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustlab._io import write_json
from robustlab.app.config import RunConfig
from robustlab.app.rundir import INIT_RECORD


def pop_init_from(name: str, spec: dict[str, Any]) -> str | None:
    """Remove and return ``spec``'s ``init_from`` (a model name or None)."""
    src = spec.pop("init_from", None)
    if src is not None and (not isinstance(src, str) or not src):
        raise ValueError(f"models.{name}.init_from must name another model of the study; got {src!r}")
    return src


def _routes(cfg: RunConfig) -> tuple[str, ...]:
    from robustlab.app.train import build_recipe

    return tuple(build_recipe(cfg).routes)


def check_init_from(init_from: Mapping[str, str], models: Mapping[str, RunConfig]) -> None:
    """Refuse unknown sources, cycles and sources with another network."""
    for name, src in init_from.items():
        if src not in models:
            raise ValueError(f"models.{name}.init_from: unknown model {src!r}; the study has {', '.join(models)}")
        if models[name].model != models[src].model:
            raise ValueError(f"models.{name}.init_from: {src} is another network (model "
                             f"{models[src].model.to_dict()}; {name} has {models[name].model.to_dict()}); "
                             "fine-tuning starts from the same network")
        mine, theirs = _routes(models[name]), _routes(models[src])
        if mine and theirs and mine != theirs:
            raise ValueError(f"models.{name}.init_from: {src} trains BN routes {list(theirs)}, {name} "
                             f"{list(mine)}; routed models start from a model with the same routes or none")
    for name in init_from:
        chain, node = [name], init_from[name]
        while node is not None:
            if node in chain:
                cycle = " → ".join([*chain[chain.index(node):], node])
                raise ValueError(f"models.{name}.init_from: a cycle ({cycle}); a model cannot start from itself")
            chain.append(node)
            node = init_from.get(node)


def training_order(names: list[str], init_from: Mapping[str, str]) -> list[str]:
    """``names`` with every source before the models that start from it
    (otherwise in the order given)."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in init_from:
            visit(init_from[name])
        order.append(name)

    for name in names:
        visit(name)
    return order


def init_record(run_dir: Path, source: str) -> dict[str, Any]:
    """What a dependent model starts from: the source's name and the SHA-256
    of its exported weights (recorded in its ``model.json``)."""
    meta = json.loads((run_dir / "models" / source / "model.json").read_text())
    return {"model": source, "weights_sha256": meta.get("sha256")}


def stored_init(run: Path) -> dict[str, Any] | None:
    """The ``init_from.json`` record of a model's run directory, if any."""
    try:
        return json.loads((run / INIT_RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def write_init(run: Path, record: Mapping[str, Any]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / INIT_RECORD, dict(record))


def model_key(cfg: RunConfig, run: Path) -> dict[str, Any]:
    """A model's identity for an evaluation's fingerprint: its config, and
    for a fine-tuned model the weights it started from."""
    record = stored_init(run)
    return cfg.to_dict() if record is None else {**cfg.to_dict(), "init_from": record}
