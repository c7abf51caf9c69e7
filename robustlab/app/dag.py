"""Chapter 2 as a study: dense adversarial examples on segmenters and detectors.

A DAG study (``kind: dag`` in a study YAML, run by ``robustlab study``)
makes scenes (:func:`robustlab.data.make_scenes`), trains small FCN
segmenters or small Faster R-CNNs on them (or reuses those in its run
directory), runs DAG (Algorithm 1) on every model and writes:

- Table 2.1: mIoU / mAP on clean, adversarial and permuted-perturbation
  images, perceptibility p (§2.3.5) and DAG's iterations;
- Tables 2.2/2.3: transfer of each perturbation, and of the sum of all of
  them (the black-box attack of §2.4.3), to every model;
- segmentation: a targeted "fooling image" (§2.3.4), a shape painted into
  the prediction, and the active-target counts per iteration (Fig. 2.4);
- detection: mAP vs the RPN's NMS IoU (Fig. 2.3);
- pictures as Fig. 2.1/2.2: clean, perturbation ×10, adversarial,
  predictions before and after.

With ``task: cross-task`` the study trains segmenters and detectors on the
same scenes and writes Table 2.4 instead (:mod:`robustlab.app.dag_cross`).
Its spec lives in :mod:`robustlab.app.dag_spec`; models, scenes and the
cached perturbations in :mod:`robustlab.app.dag_models`.

``robustlab attack --dag --model RUN/models/NAME`` attacks one trained dense
model the same way.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._io import pick_device, write_tensors
from robustlab.app.dag_models import (
    finish_study,
    load_dense,
    run_dag,
    study_perturbation,
    study_scenes,
    trained_models,
)
from robustlab.app.dag_spec import (
    ATTACK_SPECS,
    CROSS_TASK,
    DAG_KEYS,
    GAMMA,
    TASKS,
    TRAIN_SPECS,
    DAGAttackSpec,
    DAGModelSpec,
    DAGStudy,
    SceneSpec,
    dag_claims,
    resolve_section,
)
from robustlab.app.spec import check_keys

_logger = logging.getLogger(__name__)


def resolve_dag_study(raw: dict[str, Any], *, name: str | None = None) -> DAGStudy:
    """A ``kind: dag`` study mapping → :class:`DAGStudy`, checked before any work."""
    from robustlab.data.scenes import SOURCES

    check_keys(raw, DAG_KEYS, where=" in a DAG study")
    task = raw.get("task")
    if task not in (*TASKS, CROSS_TASK):
        raise ValueError(f"a DAG study needs task: segmentation or detection (or {CROSS_TASK}: both, Table 2.4); "
                         f"got {task!r}")
    scenes = resolve_section(raw.get("scenes"), "scenes", SceneSpec)
    if scenes.source not in SOURCES:
        raise ValueError(f"scenes.source must be one of {SOURCES}; got {scenes.source!r}")
    for key in ("size", "max_objects", "train", "test"):
        if not isinstance(getattr(scenes, key), int) or getattr(scenes, key) < 1:
            raise ValueError(f"scenes.{key} must be a positive integer; got {getattr(scenes, key)!r}")
    if task == CROSS_TASK:
        from robustlab.app.dag_cross import resolve_cross_task

        return resolve_cross_task(raw, scenes, name=name)
    if "sums" in raw:
        raise ValueError(f"study key 'sums' belongs to task: {CROSS_TASK}; a {task} study sums all its models")
    train = resolve_section(raw.get("train"), "train", TRAIN_SPECS[task])
    attack = resolve_section(raw.get("attack"), "attack", ATTACK_SPECS[task])  # γ parsed into pixels
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError("study key 'models' must map model names to {width: ..., seed: ...} (at least one)")
    out = {}
    for mname, spec in models.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"width", "seed"}:
            raise ValueError(f"models.{mname} takes width and seed; got {spec!r}")
        out[str(mname)] = DAGModelSpec(width=int(spec.get("width", 12 if task == "segmentation" else 16)),
                                       seed=int(spec.get("seed", raw.get("seed", 0))))
    nms = raw.get("nms_ious", [0.7, 0.9])
    if not isinstance(nms, list) or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in nms):
        raise ValueError(f"nms_ious must be a list of IoUs in (0, 1]; got {nms!r}")
    targeted = bool(raw.get("targeted", True))
    names = ["table_2_1", "transfer"] + (["fooling"] if task == "segmentation" and targeted else []) \
        + (["nms_iou"] if task == "detection" and nms else [])
    return DAGStudy(name=str(raw.get("name") or name or f"dag_{task}"), title=str(raw.get("title") or task),
                    task=task, models=out, scenes=scenes, train=train, attack=attack, raw=raw,
                    seed=int(raw.get("seed", 0)), device=str(raw.get("device", "auto")),
                    pictures=int(raw.get("pictures", 3)), targeted=targeted,
                    nms_ious=[float(t) for t in nms], claims=dag_claims(raw, names))



def pictures(task: str, model: nn.Module, x: Tensor, r: Tensor, scenes: Any, count: int) -> list[dict[str, str]]:
    """Fig. 2.1/2.2 for the first ``count`` images, as report images
    (drawn by :func:`robustlab.report.plots.dag_pictures`)."""
    from robustlab.report import plots

    fig = plots.dag_pictures(task, model, x, r, scenes, count)
    return [] if fig is None else [{"title": "clean / perturbation / adversarial / predictions (Fig. 2.1, 2.2)",
                                    "png": plots.png_base64(fig)}]


# ------------------------------------------------------------------ the study


def _fooling(model: nn.Module, x: Tensor, scenes: Any, attack: DAGAttackSpec, seed: int) -> dict[str, Any]:
    """§2.3.4: a target label map — a centred square of class 1 on background —
    painted into the prediction of the first image by targeted DAG."""
    from robustlab.eval.analysis import perceptibility
    from robustlab.eval.dense import segment

    size = x.shape[-1]
    target = torch.zeros(1, size, size, dtype=torch.long, device=x.device)
    lo, hi = size // 4, 3 * size // 4
    target[:, lo:hi, lo:hi] = 1
    res = run_dag(model, "segmentation", x[:1], scenes.subset([0]), attack, seed, target=target)
    pred = segment(model, res.x_adv)
    hit = float((pred == target).float().mean())
    from robustlab.report import plots

    fig_panels = [x[0].cpu(), (10 * res.perturbation[0] + 0.5).cpu(), res.x_adv[0].cpu(),
                  plots.colorize(target[0]), plots.colorize(pred[0])]
    fig = plots.image_grid(fig_panels, ["clean", "perturbation ×10", "adversarial", "target map", "prediction"])
    return {"row": {"pixels predicted as the target map": hit, "iterations": res.iterations[0],
                    "perceptibility": float(perceptibility(res.perturbation).mean())},
            "image": {"title": "fooling image: a square painted into the prediction (§2.3.4)",
                      "png": plots.png_base64(fig)}}


def run_dag_study(study: DAGStudy, out: str | Path | None = None) -> dict[str, Any]:
    """Scenes → trained models → DAG on each → Table 2.1, transfer, figures → results.json + report.html."""
    from robustlab.app.rundir import RunDir, study_fingerprint

    with RunDir(out if out is not None else Path("runs") / study.name, "study", study_fingerprint(study.name)) as run:
        run.write_config(study.raw, "study.yaml")
        if study.task == CROSS_TASK:
            from robustlab.app.dag_cross import run_cross_task

            return run_cross_task(study, run)
        return _run_dag_study(study, run)


def _run_dag_study(study: DAGStudy, run: Any) -> dict[str, Any]:
    from robustlab.eval import dense
    from robustlab.report import plots

    run_dir = run.path
    device = pick_device(study.device)
    start = time.perf_counter()
    test, models_info, models = trained_models(study, run_dir, device)
    x = test.images.to(device)
    k = test.num_classes
    evaluations: dict[str, Any] = {}
    rs, active, rows = {}, {}, []
    for i, (name, model) in enumerate(models.items()):
        _logger.info("[%d/%d] DAG on %s (%d scenes)", i + 1, len(models), name, len(x))
        r, act, iters = study_perturbation(study, run_dir, name, model, x, test)
        rs[name], active[name] = r, act
        if study.task == "segmentation":
            rep = dense.segmentation_report(model, x, test.masks.to(device), r, k, seed=study.seed)
            metric = "mIoU"
        else:
            rep = dense.detection_report(model, x, test.boxes, test.labels, r, seed=study.seed)
            metric = "mAP"
        _logger.info("[%d/%d] DAG on %s: %s %.3f clean, %.3f adversarial, %.1f iterations (mean)", i + 1,
                     len(models), name, metric, rep["orig"], rep["adv"], sum(iters) / len(iters))
        rows.append({"model": name, f"{metric} clean": rep["orig"], f"{metric} adversarial": rep["adv"],
                     f"{metric} permuted r": rep["perm"], "perceptibility": rep["perceptibility"],
                     "iterations (mean)": sum(iters) / len(iters)})
    first = next(iter(models))
    table21 = {"kind": "dag", "options": {"task": study.task, "attack": study.attack_options(),
                                          "scenes": study.scenes.to_dict()},
               "n": len(x), "table": rows, "value": f"{metric} on clean / Trunc(X + r) / X + permuted r (Table 2.1)",
               "images": pictures(study.task, models[first], x, rs[first], test, study.pictures)
               + [{"title": "active targets (Fig. 2.4)", "png": plots.png_base64(plots.active_targets(active))}]}
    evaluations["table_2_1"] = table21
    perts = dict(rs)
    if len(rs) > 1:
        perts["+".join(rs)] = sum(rs.values())
    if study.task == "segmentation":
        table = dense.transfer_table(perts, models, x, test.masks.to(device), k)
    else:
        table = dense.detection_transfer_table(perts, models, x, test.boxes, test.labels)
    evaluations["transfer"] = {"kind": "dag transfer", "options": {"perturbations": list(perts)}, "n": len(x),
                               "table": [{"perturbation": p, **{f"→ {m}": v for m, v in row.items()}}
                                         for p, row in table.items()],
                               "value": f"{metric} of each model on X + r (Tables 2.2, 2.3; sums: §2.4.3)"}
    if study.task == "segmentation" and study.targeted:
        fool = _fooling(models[first], x, test, study.attack, study.seed)
        evaluations["fooling"] = {"kind": "dag targeted", "options": {"model": first}, "n": 1,
                                  "table": [{"model": first, **fool["row"]}], "images": [fool["image"]],
                                  "value": "targeted DAG, a label map painted into the prediction (§2.3.4)"}
    if study.task == "detection" and study.nms_ious:
        kw = study.attack.kwargs()
        curve = dense.nms_iou_curve(models[first], x, test.boxes, test.labels, study.nms_ious, seed=study.seed,
                                    **kw)
        evaluations["nms_iou"] = {"kind": "dag proposals", "options": {"model": first, "nms_ious": study.nms_ious},
                                  "n": len(x), "table": [{"RPN NMS IoU": t, "proposals per image": v["proposals"],
                                                          "mAP after DAG": v["self"]} for t, v in curve.items()],
                                  "value": "denser proposals (higher NMS IoU) make DAG stronger (Fig. 2.3)"}
    return finish_study(study, run, models_info, evaluations, start)


# ------------------------------------------------------------------ robustlab attack --dag


def attack_dense(model_dir: str | Path, *, limit: int = 8, out: str | Path | None = None, seed: int = 0,
                 gamma: float | str = GAMMA, max_iter: int | None = None, nms_iou: float = 0.9,
                 device: str = "auto") -> dict[str, Any]:
    """``robustlab attack --dag``: DAG on a dense model from a DAG study, on
    ``limit`` test scenes made as the model's study made them; ``gamma`` as
    ``--gamma`` writes it (0.5 in 0-255 units, 0.5/255 or 0.002px), parsed once
    by the attack spec before any work."""
    from robustlab.app.rundir import RunDir, fingerprint_of
    from robustlab.eval import dense

    if limit < 1:
        raise ValueError(f"--limit must be >= 1 scenes; got {limit}")
    model, spec = load_dense(model_dir)
    try:
        attack = ATTACK_SPECS[spec["task"]](gamma=gamma)
    except ValueError as err:  # γ's message starts with its name
        raise ValueError(f"--{err}") from None
    if max_iter is not None:
        attack.max_iter = max_iter
    if spec["task"] == "detection":
        attack.nms_iou = nms_iou
    dev = pick_device(device)
    model = model.to(dev)
    test = study_scenes(SceneSpec(**{**spec["scenes"], "test": limit}), "test", spec.get("seed", 0))
    run = RunDir(out, "attack-dag", fingerprint_of({"model": str(model_dir), "limit": limit, "seed": seed,
                                                    **attack.to_dict()}))  # another run there: refused first
    x = test.images.to(dev)
    start = time.perf_counter()
    res = run_dag(model, spec["task"], x, test, attack, seed)
    seconds = time.perf_counter() - start
    if spec["task"] == "segmentation":
        rep = dense.segmentation_report(model, x, test.masks.to(dev), res.perturbation, test.num_classes, seed=seed)
    else:
        rep = dense.detection_report(model, x, test.boxes, test.labels, res.perturbation, seed=seed)
    run_dir = run.ensure()
    write_tensors(run_dir / "adversarial.safetensors", {"perturbation": res.perturbation, "x_adv": res.x_adv})
    metric = "mIoU" if spec["task"] == "segmentation" else "mAP"
    results = {"kind": "study", "name": "attack-dag", "title": f"DAG on {model_dir}", "data": "scenes",
               "form": "full",  # no smoke: overrides to apply, so as a study without a reduced form
               "models": {}, "seconds": round(seconds, 2),
               "evaluations": {"dag": {"kind": "dag", "options": {"model": str(model_dir), **attack.to_dict()},
                                       "n": limit,
                                       "table": [{"model": Path(model_dir).name, f"{metric} clean": rep["orig"],
                                                  f"{metric} adversarial": rep["adv"],
                                                  f"{metric} permuted r": rep["perm"],
                                                  "perceptibility": rep["perceptibility"],
                                                  "iterations (mean)": sum(res.iterations) / limit}],
                                       "images": pictures(spec["task"], model, x, res.perturbation, test, 3)}}}
    with run:
        return run.finish(results)
