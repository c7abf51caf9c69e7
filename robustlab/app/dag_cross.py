"""Chapter 2's cross-task transfer as a study (``kind: dag``, ``task: cross-task``; Table 2.4).

Segmenters and detectors are trained on the same scenes (each scene has a
label map and boxes), DAG attacks each one, and every perturbation is added
to every network:

- §2.4.3, cross-task transfer: a segmenter's r against the detectors (mAP)
  and a detector's r against the segmenters (mIoU), next to the white-box
  (diagonal) and cross-model (same task) cells;
- §2.4.4, combining heterogeneous perturbations: r_seg + r_det (+ ...) added
  as they are — DAG has no ε-ball, so the sum is neither rescaled nor
  projected; as for every DAG image, only Trunc(X + r) clips the pixels to
  [0, 1] — against every network; its perceptibility (§2.3.5) is reported;
- the permutation control of Tables 2.1–2.3: the same sum with the rows and
  columns of each image permuted (three draws, accuracies averaged), which
  keeps its values and destroys its spatial structure.

Results: ``table_2_1`` (white-box DAG per network), ``table_2_4`` (rows by
perturbation source — ``from`` none / segmenter / detector / sum / permuted
sum, then the perturbation's name —, one ``→ NAME mIoU`` or ``→ NAME mAP``
column per network), the summed perturbation fooling every network as a
picture (Fig. 2.6), and the study's claims. The sums and their permuted
draws are kept in ``perturbations/sums.safetensors``.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._io import pick_device, write_tensors
from robustlab.app.dag_models import finish_study, study_perturbation, trained_models
from robustlab.app.dag_spec import (
    ATTACK_SPECS,
    CROSS_TASK,
    TASKS,
    TRAIN_SPECS,
    DAGModelSpec,
    DAGStudy,
    SceneSpec,
    dag_claims,
    resolve_section,
)

_logger = logging.getLogger(__name__)

METRIC = {"segmentation": "mIoU", "detection": "mAP"}
ROLE = {"segmentation": "segmenter", "detection": "detector"}
EVALUATIONS = ("table_2_1", "table_2_4")
SINGLE_TASK_KEYS = ("nms_ious", "targeted")


def resolve_cross_task(raw: dict[str, Any], scenes: SceneSpec, *, name: str | None = None) -> DAGStudy:
    """A ``task: cross-task`` DAG study → :class:`DAGStudy` with ``train`` and
    ``attack`` per task and a task per model, checked before any work."""
    for key in SINGLE_TASK_KEYS:
        if key in raw:
            raise ValueError(f"study key {key!r} is a single-task DAG option; task: {CROSS_TASK} does not take it")
    train = {t: resolve_section(v, f"train.{t}", TRAIN_SPECS[t]) for t, v in _per_task(raw, "train").items()}
    attack = {t: resolve_section(v, f"attack.{t}", ATTACK_SPECS[t]) for t, v in _per_task(raw, "attack").items()}
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError("study key 'models' must map model names to {task: segmentation|detection, width, seed}")
    out = {}
    for mname, spec in models.items():
        if not isinstance(spec, dict) or set(spec) - {"task", "width", "seed"} or spec.get("task") not in TASKS:
            raise ValueError(f"models.{mname} takes task (segmentation or detection), width and seed; got {spec!r}")
        width = spec.get("width", 12 if spec["task"] == "segmentation" else 16)
        out[str(mname)] = DAGModelSpec(task=spec["task"], width=int(width),
                                       seed=int(spec.get("seed", raw.get("seed", 0))))
    missing = [t for t in TASKS if not any(s.task == t for s in out.values())]
    if missing:
        raise ValueError(f"a {CROSS_TASK} study needs at least one model of each task; no {missing[0]} model in "
                         f"{list(out)}")
    sums = raw.get("sums", [list(out)])
    if not isinstance(sums, list) or not sums:
        raise ValueError(f"sums must be a non-empty list of lists of model names; got {sums!r}")
    for i, members in enumerate(sums):
        if not isinstance(members, list) or len(members) < 2 or len(set(members)) != len(members) \
                or not set(members) <= set(out):
            raise ValueError(f"sums[{i}] must list at least two distinct models of {list(out)}; got {members!r}")
    return DAGStudy(name=str(raw.get("name") or name or "dag_cross_task"), title=str(raw.get("title") or CROSS_TASK),
                    task=CROSS_TASK, models=out, scenes=scenes, train=train, attack=attack, raw=raw,
                    seed=int(raw.get("seed", 0)), device=str(raw.get("device", "auto")),
                    pictures=int(raw.get("pictures", 2)), targeted=False, nms_ious=[],
                    sums=[[str(m) for m in s] for s in sums], claims=dag_claims(raw, list(EVALUATIONS)))


def _per_task(raw: dict[str, Any], key: str) -> dict[str, Any]:
    values = raw.get(key) or {}
    if not isinstance(values, dict) or set(values) - set(TASKS):
        raise ValueError(f"study key {key!r} of a {CROSS_TASK} study maps each task (segmentation, detection) to "
                         f"its options; got {values!r}")
    return {t: values.get(t) for t in TASKS}


# ------------------------------------------------------------------ Table 2.4


def heterogeneous_sums(rs: dict[str, Tensor], sums: list[list[str]], draws: int, seed: int
                       ) -> dict[str, tuple[Tensor, list[Tensor]]]:
    """§2.4.4: for each list of models, r = Σ r_m (no rescaling or projection:
    Trunc(X + r) is the only clip) and ``draws`` controls with the rows and
    columns of each image permuted (Table 2.1's control), one seeded stream."""
    from robustlab.eval.dense import permute_perturbation

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for members in sums:
        r = torch.stack([rs[m] for m in members]).sum(0)
        out["+".join(members)] = (r, [permute_perturbation(r, gen) for _ in range(draws)])
    return out


def _linf_255(r: Tensor) -> float:
    return float(r.abs().amax()) * 255


def cross_task_table(rs: dict[str, Tensor], sums: dict[str, tuple[Tensor, list[Tensor]]],
                     models: dict[str, nn.Module], tasks: dict[str, str], x: Tensor, test: Any
                     ) -> list[dict[str, Any]]:
    """Table 2.4: one row per perturbation (clean, each network's r, each sum,
    each sum permuted — the mean over its draws), one column per network with
    its metric on Trunc(X + r), then the row's perceptibility and L∞ (0-255)."""
    from robustlab.eval import dense
    from robustlab.eval.analysis import perceptibility

    flat = dict(rs)
    for name, (r, perms) in sums.items():
        flat[name] = r
        flat.update({f"{name} (permuted #{j})": p for j, p in enumerate(perms)})
    seg = {m: model for m, model in models.items() if tasks[m] == "segmentation"}
    det = {m: model for m, model in models.items() if tasks[m] == "detection"}
    scores = {p: {} for p in ("ORIG", *flat)}
    for p, row in dense.transfer_table(flat, seg, x, test.masks.to(x.device), test.num_classes).items():
        scores[p].update({f"→ {m} mIoU": v for m, v in row.items()})
    for p, row in dense.detection_transfer_table(flat, det, x, test.boxes, test.labels).items():
        scores[p].update({f"→ {m} mAP": v for m, v in row.items()})
    order = [f"→ {m} {METRIC[tasks[m]]}" for m in models]

    def row(role: str, name: str, labels: list[str], r: Tensor | None) -> dict[str, Any]:
        cells = {c: sum(scores[lab][c] for lab in labels) / len(labels) for c in order}
        audit = {"perceptibility": 0.0, "L∞ (0-255)": 0.0} if r is None else \
            {"perceptibility": float(perceptibility(r).mean()), "L∞ (0-255)": _linf_255(r)}
        return {"from": role, "perturbation": name, **cells, **audit}

    rows = [row("none", "none", ["ORIG"], None)]
    rows += [row(ROLE[tasks[m]], m, [m], r) for m, r in rs.items()]
    rows += [row("sum", name, [name], r) for name, (r, _) in sums.items()]
    rows += [row("permuted sum", f"{name} (permuted)", [f"{name} (permuted #{j})" for j in range(len(perms))],
                 perms[0]) for name, (_, perms) in sums.items()]
    return rows


def summed_picture(models: dict[str, nn.Module], tasks: dict[str, str], x: Tensor, r: Tensor, test: Any,
                   count: int, title: str) -> dict[str, str] | None:
    """Fig. 2.6: one summed perturbation against every network. Per image, a
    row of the clean image, its ground truth and each network's prediction,
    then a row of the perturbation ×10 (+0.5), Trunc(X + r) and each network's
    prediction on it."""
    from robustlab.eval.dense import detect, segment
    from robustlab.report.plots import colorize, png_base64, summed_pictures, with_boxes

    n = min(count, x.shape[0])
    if n == 0:
        return None
    x, r = x[:n], r[:n]
    adv = (x + r).clamp(0, 1)
    preds: dict[str, list[list[Tensor]]] = {}
    for m, model in models.items():
        if tasks[m] == "segmentation":
            preds[m] = [[colorize(p) for p in segment(model, img).cpu()] for img in (x, adv)]
        else:
            preds[m] = [[with_boxes(img[i], d) for i, d in enumerate(detect(model, img))] for img in (x, adv)]
    truth = [with_boxes(colorize(test.masks[i]), {"boxes": test.boxes[i], "labels": test.labels[i]})
             for i in range(n)]
    return {"title": title, "png": png_base64(summed_pictures(x, r, truth, preds))}


# ------------------------------------------------------------------ the study


def _white_box(task: str, model: nn.Module, x: Tensor, test: Any, r: Tensor, seed: int) -> dict[str, float]:
    from robustlab.eval import dense

    if task == "segmentation":
        return dense.segmentation_report(model, x, test.masks.to(x.device), r, test.num_classes, seed=seed)
    return dense.detection_report(model, x, test.boxes, test.labels, r, seed=seed)


def run_cross_task(study: DAGStudy, run: Any) -> dict[str, Any]:
    """Scenes → segmenters and detectors → DAG on each → Tables 2.1 and 2.4,
    Fig. 2.6 and the claims → results.json + report.html."""
    from robustlab.eval.dense import PERMUTATION_DRAWS

    run_dir = run.path
    device = pick_device(study.device)
    start = time.perf_counter()
    test, models_info, models = trained_models(study, run_dir, device)
    tasks = {name: study.task_of(name) for name in models}
    x = test.images.to(device)
    rs, rows = {}, []
    for i, (name, model) in enumerate(models.items()):
        _logger.info("[%d/%d] DAG on %s (%s, %d scenes)", i + 1, len(models), name, tasks[name], len(x))
        r, _, iters = study_perturbation(study, run_dir, name, model, x, test)
        rs[name] = r
        rep = _white_box(tasks[name], model, x, test, r, study.seed)
        metric = METRIC[tasks[name]]
        _logger.info("[%d/%d] DAG on %s: %s %.3f clean, %.3f adversarial", i + 1, len(models), name, metric,
                     rep["orig"], rep["adv"])
        rows.append({"model": name, "task": tasks[name], "metric": metric, "clean": rep["orig"],
                     "adversarial": rep["adv"], "permuted r": rep["perm"], "perceptibility": rep["perceptibility"],
                     "iterations (mean)": sum(iters) / len(iters)})
    sums = heterogeneous_sums(rs, study.sums, PERMUTATION_DRAWS, study.seed)
    write_tensors(run_dir / "perturbations" / "sums.safetensors",
                  {**{f"sum/{n}": r for n, (r, _) in sums.items()},
                   **{f"permuted/{n}/{j}": p for n, (_, perms) in sums.items() for j, p in enumerate(perms)}})
    _logger.info("Table 2.4: %d perturbations × %d networks", len(rs) + 2 * len(sums), len(models))
    table = cross_task_table(rs, sums, models, tasks, x, test)
    first = next(iter(sums))
    picture = summed_picture(models, tasks, x, sums[first][0], test, study.pictures,
                             f"{first}: one perturbation against every network (Fig. 2.6)")
    evaluations = {
        "table_2_1": {"kind": "dag", "options": {"task": CROSS_TASK, "attack": study.attack_options(),
                                                 "scenes": study.scenes.to_dict()},
                      "n": len(x), "table": rows,
                      "value": "each network's metric (mIoU or mAP) on clean / Trunc(X + r) / X + permuted r, r its "
                               "own DAG perturbation (Table 2.1; the diagonal of Table 2.4)"},
        "table_2_4": {"kind": "dag transfer",
                      "options": {"sums": study.sums, "permutation_draws": PERMUTATION_DRAWS,
                                  "clip": "Trunc(X + r) to [0, 1]; sums neither rescaled nor projected (§2.4.4)"},
                      "n": len(x), "table": table, "images": [picture] if picture else [],
                      "value": "each network's mIoU / mAP on Trunc(X + r): within-task white-box and cross-model, "
                               "cross-task (§2.4.3), summed heterogeneous perturbations and their permuted control "
                               "(§2.4.4; Table 2.4)"},
    }
    return finish_study(study, run, models_info, evaluations, start)
