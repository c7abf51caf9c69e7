"""The dense models of a DAG study and the work a study keeps in its run
directory: models built, trained and saved (``models/NAME``), the test
scenes, DAG's perturbation of each model (``perturbations/NAME``, cached by
model, scenes and attack). The pictures are drawn by :mod:`robustlab.report.plots`.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._io import write_json, write_tensors
from robustlab.app.dag_spec import DAGStudy, SceneSpec

_logger = logging.getLogger(__name__)

# ------------------------------------------------------------------ models


def load_dense(directory: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A dense model saved by a DAG study: (model in eval mode, its spec);
    :func:`robustlab.models.load_checkpoint` restricted to the dense kinds."""
    from robustlab.models.checkpoint import DENSE_KINDS, load_checkpoint

    model, info = load_checkpoint(directory, map_location, kind=DENSE_KINDS)
    return model, info.spec


def _trained(directory: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata of the model saved in ``directory`` when it has ``spec``, else None."""
    from robustlab.models.checkpoint import read_model_info

    try:
        info = read_model_info(directory)
    except (FileNotFoundError, ValueError):
        return None
    return info.meta if info.spec == spec else None


def study_scenes(cfg: SceneSpec, split: str, seed: int) -> Any:
    from robustlab.data.scenes import make_scenes

    return make_scenes(cfg.train if split == "train" else cfg.test, source=cfg.source, size=cfg.size,
                       max_objects=cfg.max_objects, split=split, seed=seed, data_dir=cfg.data_dir)


def train_study_models(study: DAGStudy, run_dir: Path, train_scenes: Any, device: torch.device) -> dict[str, Any]:
    from robustlab.models.checkpoint import save_model
    from robustlab.models.dense import create_dense
    from robustlab.train.dense import train_detector, train_segmenter

    out = {}
    for i, (name, spec) in enumerate(study.models.items()):
        task = study.task_of(name)
        train = study.train_of(task)
        full = {"task": task, "num_classes": train_scenes.num_classes, "width": spec.width,
                "seed": spec.seed, "train": train.to_dict(), "scenes": study.scenes.to_dict(),
                "classes": list(train_scenes.classes)}
        full = json.loads(json.dumps(full))  # as model.json stores it
        directory = run_dir / "models" / name
        tag = f"[{i + 1}/{len(study.models)}] model {name}"
        meta = _trained(directory, full)
        if meta is not None:
            _logger.info("%s: trained, reusing %s", tag, directory)
        else:
            _logger.info("%s: training a %s model (width %d, %d epochs)", tag, task, spec.width,
                         train.epochs)
            torch.manual_seed(spec.seed)
            model = create_dense(task, train_scenes.num_classes, spec.width)
            fit = train_segmenter if task == "segmentation" else train_detector
            start = time.perf_counter()
            res = fit(model, train_scenes, epochs=train.epochs, batch_size=train.batch_size,
                      lr=train.lr, seed=spec.seed, device=device)
            meta = {"train_seconds": round(time.perf_counter() - start, 2), "loss": res.history}
            save_model(res.model.cpu(), directory, meta, spec=full)
            _logger.info("%s: trained in %.1f s, loss %.4f", tag, meta["train_seconds"], res.history[-1])
        out[name] = {"run_dir": str(directory), "recipe": {"name": task, **train.to_dict()},
                     "model": {"name": "SmallFCN" if task == "segmentation" else "small_faster_rcnn",
                               "width": spec.width, "seed": spec.seed},
                     "steps": train.epochs, "train_seconds": meta["train_seconds"],
                     "final": {"train_loss": meta["loss"][-1]}}
    return out


# ------------------------------------------------------------------ attacks


def trained_models(study: DAGStudy, run_dir: Path, device: torch.device) -> tuple[Any, dict[str, Any],
                                                                                 dict[str, nn.Module]]:
    """(test scenes, each model's training summary, the trained models on ``device``) of a DAG
    study: its scenes made, its models trained (or reused) in ``run_dir/models``."""
    train_scenes = study_scenes(study.scenes, "train", study.seed)
    test = study_scenes(study.scenes, "test", study.seed)
    info = train_study_models(study, run_dir, train_scenes, device)
    models = {name: load_dense(run_dir / "models" / name)[0].to(device) for name in study.models}
    return test, info, models


def finish_study(study: DAGStudy, run: Any, models_info: dict[str, Any], evaluations: dict[str, Any],
                 start: float) -> dict[str, Any]:
    """A DAG study's ``results.json`` (its claims evaluated on ``evaluations``) and report, written by ``run``."""
    import time

    from robustlab.app.claims import evaluate_claims

    results = {"kind": "study", "name": study.name, "title": study.title, "claim": study.raw.get("claim"),
               "chapter": study.raw.get("chapter", 2), "notes": study.raw.get("notes"), "form": study.form,
               "data": f"scenes:{study.scenes.source} ({study.scenes.size}×{study.scenes.size})",
               "models": models_info, "evaluations": evaluations, "seconds": round(time.perf_counter() - start, 2)}
    results["claims"] = evaluate_claims(study.claims, evaluations)
    return run.finish(results)


def run_dag(model: nn.Module, task: str, x: Tensor, scenes: Any, attack: Any, seed: int,
            target: Tensor | None = None) -> Any:
    """DAG on one model: ground-truth labels (masks or boxes) as l (Algorithm 1's input)."""
    from robustlab.attacks import dag_detection, dag_segmentation

    kw = attack.kwargs()  # a DAGAttackSpec / DetectorAttackSpec (robustlab.app.dag_spec)
    if task == "segmentation":
        return dag_segmentation(model, x, scenes.masks.to(x.device), target, seed=seed, progress=True, **kw)
    return dag_detection(model, x, [b.to(x.device) for b in scenes.boxes], [lab.to(x.device) for lab in scenes.labels],
                         attack.nms_iou, seed=seed, progress=True, **kw)


def study_perturbation(study: DAGStudy, run_dir: Path, name: str, model: nn.Module, x: Tensor, scenes: Any
                  ) -> tuple[Tensor, list[list[int]], list[int]]:
    """r of DAG on ``name`` (cached in perturbations/NAME.safetensors, keyed by model, scenes and attack)."""
    from safetensors.torch import load_file

    task = study.task_of(name)
    key = json.dumps({"model": study.models[name].to_dict(), "scenes": study.scenes.to_dict(),
                      "attack": study.attack_of(task).to_dict(), "train": study.train_of(task).to_dict(),
                      "seed": study.seed}, sort_keys=True)
    path = run_dir / "perturbations" / f"{name}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return load_file(str(path))["r"].to(x.device), meta["active"], meta["iterations"]
    res = run_dag(model, task, x, scenes, study.attack_of(task), study.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tensors(path, {"r": res.perturbation})
    write_json(meta_path, {"key": key, "active": res.active, "iterations": res.iterations})
    return res.perturbation, res.active, res.iterations
