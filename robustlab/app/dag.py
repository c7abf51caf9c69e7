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

``robustlab attack --dag --model RUN/models/NAME`` attacks one trained dense
model the same way.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._io import pick_device, write_json, write_tensors

_logger = logging.getLogger(__name__)

DAG_KEYS = ("name", "title", "chapter", "claim", "notes", "kind", "task", "seed", "device", "scenes", "train",
            "models", "attack", "targeted", "pictures", "nms_ious", "smoke", "datasets", "dataset")
TASKS = ("segmentation", "detection")
SCENE_DEFAULTS = {"source": "fashion_mnist", "size": 64, "max_objects": 3, "train": 2000, "test": 40,
                  "data_dir": None}
TRAIN_DEFAULTS = {"segmentation": {"epochs": 8, "batch_size": 32, "lr": 1e-2},
                  "detection": {"epochs": 10, "batch_size": 16, "lr": 2e-3}}
ATTACK_DEFAULTS = {"segmentation": {"gamma": 0.5, "max_iter": 200, "ignore_background": False,
                                    "stop_fraction": 0.0},
                   "detection": {"gamma": 0.5, "max_iter": 150, "nms_iou": 0.9, "select_iou": 0.1,
                                 "score_thresh": 0.1, "post_nms_top_n": 3000}}
PALETTE = torch.tensor([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190]],
                       dtype=torch.float32) / 255


@dataclass
class DAGStudy:
    name: str
    title: str
    task: str
    models: dict[str, dict[str, Any]]
    scenes: dict[str, Any]
    train: dict[str, Any]
    attack: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    pictures: int = 3
    targeted: bool = True
    nms_ious: list[float] = field(default_factory=lambda: [0.7, 0.9])


def _section(raw: dict[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    values = raw.get(key) or {}
    if not isinstance(values, dict):
        raise ValueError(f"study key {key!r} must be a mapping; got {values!r}")
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"unknown key(s) {[f'{key}.{k}' for k in unknown]}; known: {', '.join(defaults)}")
    return {**copy.deepcopy(defaults), **values}


def resolve_dag_study(raw: dict[str, Any], *, name: str | None = None) -> DAGStudy:
    """A ``kind: dag`` study mapping → :class:`DAGStudy`, checked before any work."""
    from robustlab.data.scenes import SOURCES

    unknown = sorted(set(raw) - set(DAG_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in a DAG study; known: {', '.join(DAG_KEYS)}")
    task = raw.get("task")
    if task not in TASKS:
        raise ValueError(f"a DAG study needs task: segmentation or detection; got {task!r}")
    scenes = _section(raw, "scenes", SCENE_DEFAULTS)
    if scenes["source"] not in SOURCES:
        raise ValueError(f"scenes.source must be one of {SOURCES}; got {scenes['source']!r}")
    for key in ("size", "max_objects", "train", "test"):
        if not isinstance(scenes[key], int) or scenes[key] < 1:
            raise ValueError(f"scenes.{key} must be a positive integer; got {scenes[key]!r}")
    train = _section(raw, "train", TRAIN_DEFAULTS[task])
    attack = _section(raw, "attack", ATTACK_DEFAULTS[task])
    if not attack["gamma"] > 0:
        raise ValueError(f"attack.gamma must be > 0 (0-255 units; the thesis's 0.5); got {attack['gamma']!r}")
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError("study key 'models' must map model names to {width: ..., seed: ...} (at least one)")
    out = {}
    for mname, spec in models.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"width", "seed"}:
            raise ValueError(f"models.{mname} takes width and seed; got {spec!r}")
        out[str(mname)] = {"width": int(spec.get("width", 12 if task == "segmentation" else 16)),
                           "seed": int(spec.get("seed", raw.get("seed", 0)))}
    nms = raw.get("nms_ious", [0.7, 0.9])
    if not isinstance(nms, list) or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in nms):
        raise ValueError(f"nms_ious must be a list of IoUs in (0, 1]; got {nms!r}")
    return DAGStudy(name=str(raw.get("name") or name or f"dag_{task}"), title=str(raw.get("title") or task),
                    task=task, models=out, scenes=scenes, train=train, attack=attack, raw=raw,
                    seed=int(raw.get("seed", 0)), device=str(raw.get("device", "auto")),
                    pictures=int(raw.get("pictures", 3)), targeted=bool(raw.get("targeted", True)),
                    nms_ious=[float(t) for t in nms])


# ------------------------------------------------------------------ models


def build_dense(task: str, num_classes: int, width: int) -> nn.Module:
    from robustlab.models.dense import SmallFCN, small_faster_rcnn

    if task == "segmentation":
        return SmallFCN(3, num_classes, width)
    return small_faster_rcnn(num_classes, width=width)


def save_dense(model: nn.Module, directory: Path, spec: dict[str, Any], meta: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_tensors(directory / "model.safetensors", model.state_dict())
    write_json(directory / "model.json", {"spec": None, "dense": spec, "meta": meta})


def load_dense(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A dense model saved by a DAG study: (model in eval mode, its spec)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / "model.json"
    if not path.is_file() or not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"no dense model in {directory}: expected model.json and model.safetensors "
                                "written by a DAG study (robustlab study configs/ch2_dag_*.yaml)")
    info = json.loads(path.read_text())
    spec = info.get("dense")
    if not spec:
        raise ValueError(f"{path} is not a dense (segmentation/detection) model; --dag needs one from a DAG study")
    model = build_dense(spec["task"], spec["num_classes"], spec["width"])
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval(), spec


def _scenes(cfg: dict[str, Any], split: str, seed: int) -> Any:
    from robustlab.data.scenes import make_scenes

    return make_scenes(cfg["train"] if split == "train" else cfg["test"], source=cfg["source"], size=cfg["size"],
                       max_objects=cfg["max_objects"], split=split, seed=seed, data_dir=cfg["data_dir"])


def _train_models(study: DAGStudy, run_dir: Path, train_scenes: Any, device: torch.device) -> dict[str, Any]:
    from robustlab.train.dense import train_detector, train_segmenter

    out = {}
    for i, (name, spec) in enumerate(study.models.items()):
        full = {"task": study.task, "num_classes": train_scenes.num_classes, "width": spec["width"],
                "seed": spec["seed"], "train": study.train, "scenes": study.scenes,
                "classes": list(train_scenes.classes)}
        full = json.loads(json.dumps(full))  # as model.json stores it
        directory = run_dir / "models" / name
        done = directory / "model.json"
        tag = f"[{i + 1}/{len(study.models)}] model {name}"
        if done.is_file() and json.loads(done.read_text()).get("dense") == full:
            _logger.info("%s: trained, reusing %s", tag, directory)
            meta = json.loads(done.read_text())["meta"]
        else:
            _logger.info("%s: training a %s model (width %d, %d epochs)", tag, study.task, spec["width"],
                         study.train["epochs"])
            torch.manual_seed(spec["seed"])
            model = build_dense(study.task, train_scenes.num_classes, spec["width"])
            fit = train_segmenter if study.task == "segmentation" else train_detector
            start = time.perf_counter()
            res = fit(model, train_scenes, epochs=study.train["epochs"], batch_size=study.train["batch_size"],
                      lr=study.train["lr"], seed=spec["seed"], device=device)
            meta = {"train_seconds": round(time.perf_counter() - start, 2), "loss": res.history}
            save_dense(res.model.cpu(), directory, full, meta)
            _logger.info("%s: trained in %.1f s, loss %.4f", tag, meta["train_seconds"], res.history[-1])
        out[name] = {"run_dir": str(directory), "recipe": {"name": study.task, **study.train},
                     "model": {"name": "SmallFCN" if study.task == "segmentation" else "small_faster_rcnn",
                               "width": spec["width"], "seed": spec["seed"]},
                     "steps": study.train["epochs"], "train_seconds": meta["train_seconds"],
                     "final": {"train_loss": meta["loss"][-1]}}
    return out


# ------------------------------------------------------------------ attacks


def _attack_kwargs(study_attack: dict[str, Any], task: str) -> dict[str, Any]:
    kw = {k: v for k, v in study_attack.items() if k != "gamma"}
    kw["gamma"] = study_attack["gamma"] / 255  # the thesis's 0-255 units → [0, 1] pixels
    if task == "detection":
        kw.pop("nms_iou")
    return kw


def run_dag(model: nn.Module, task: str, x: Tensor, scenes: Any, attack: dict[str, Any], seed: int,
            target: Tensor | None = None) -> Any:
    """DAG on one model: ground-truth labels (masks or boxes) as l (Algorithm 1's input)."""
    from robustlab.attacks import dag_detection, dag_segmentation

    kw = _attack_kwargs(attack, task)
    if task == "segmentation":
        return dag_segmentation(model, x, scenes.masks.to(x.device), target, seed=seed, progress=True, **kw)
    return dag_detection(model, x, [b.to(x.device) for b in scenes.boxes], [lab.to(x.device) for lab in scenes.labels],
                         attack["nms_iou"], seed=seed, progress=True, **kw)


def _perturbation(study: DAGStudy, run_dir: Path, name: str, model: nn.Module, x: Tensor, scenes: Any
                  ) -> tuple[Tensor, list[list[int]], list[int]]:
    """r of DAG on ``name`` (cached in perturbations/NAME.safetensors, keyed by model, scenes and attack)."""
    from safetensors.torch import load_file

    key = json.dumps({"model": study.models[name], "scenes": study.scenes, "attack": study.attack,
                      "train": study.train, "seed": study.seed}, sort_keys=True)
    path = run_dir / "perturbations" / f"{name}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return load_file(str(path))["r"].to(x.device), meta["active"], meta["iterations"]
    res = run_dag(model, study.task, x, scenes, study.attack, study.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tensors(path, {"r": res.perturbation})
    write_json(meta_path, {"key": key, "active": res.active, "iterations": res.iterations})
    return res.perturbation, res.active, res.iterations


# ------------------------------------------------------------------ pictures


def _png(fig: Any) -> str:
    from robustlab.report.html import png_base64

    return png_base64(fig)


def colorize(labels: Tensor) -> Tensor:
    """Label map (H, W) → RGB (3, H, W) in [0, 1] (background black, 255 grey)."""
    lab = labels.long().cpu()
    out = PALETTE[lab.clamp(max=len(PALETTE) - 1) % len(PALETTE)].permute(2, 0, 1)
    return torch.where((lab == 255)[None], torch.full_like(out, 0.5), out)


def _with_boxes(image: Tensor, det: dict[str, Tensor], score: float = 0.5) -> Tensor:
    from torchvision.utils import draw_bounding_boxes

    keep = det["scores"] >= score if "scores" in det else torch.ones(len(det["boxes"]), dtype=torch.bool)
    boxes, labels = det["boxes"][keep], det["labels"][keep]
    img = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    colors = [tuple(int(c * 255) for c in PALETTE[int(lab) % len(PALETTE)]) for lab in labels]
    return draw_bounding_boxes(img, boxes, colors=colors or None, width=1).float() / 255


def pictures(task: str, model: nn.Module, x: Tensor, r: Tensor, scenes: Any, count: int) -> list[dict[str, str]]:
    """Fig. 2.1/2.2 for the first ``count`` images: clean, perturbation ×10
    (+0.5), adversarial, and the predictions before and after."""
    from robustlab.eval.dense import detect, segment
    from robustlab.report import plots

    n = min(count, x.shape[0])
    if n == 0:
        return []
    x, r = x[:n], r[:n]
    adv = (x + r).clamp(0, 1)
    panels, titles = [], []
    if task == "segmentation":
        before, after = segment(model, x).cpu(), segment(model, adv).cpu()
        for i in range(n):
            panels += [x[i].cpu(), (10 * r[i] + 0.5).cpu(), adv[i].cpu(), colorize(scenes.masks[i]),
                       colorize(before[i]), colorize(after[i])]
        titles = ["clean", "perturbation ×10", "adversarial", "ground truth", "prediction (clean)",
                  "prediction (adversarial)"] * n
    else:
        before, after = detect(model, x), detect(model, adv)
        for i in range(n):
            panels += [x[i].cpu(), (10 * r[i] + 0.5).cpu(), adv[i].cpu(),
                       _with_boxes(x[i], {"boxes": scenes.boxes[i], "labels": scenes.labels[i]}),
                       _with_boxes(x[i], before[i]), _with_boxes(adv[i], after[i])]
        titles = ["clean", "perturbation ×10", "adversarial", "ground truth", "detections (clean)",
                  "detections (adversarial)"] * n
    fig = plots.image_grid(panels, titles, rows=n)
    return [{"title": "clean / perturbation / adversarial / predictions (Fig. 2.1, 2.2)", "png": _png(fig)}]


def _active_plot(active: dict[str, list[list[int]]]) -> dict[str, str]:
    from robustlab.report import plots

    fig, ax = plots.plt.subplots(figsize=(5.5, 3.4))
    for name, per_image in active.items():
        steps = max(len(a) for a in per_image)
        mean = [sum(a[min(t, len(a) - 1)] / max(a[0], 1) for a in per_image) / len(per_image) for t in range(steps)]
        ax.plot(range(steps), [100 * m for m in mean], label=name)
    ax.set_xlabel("DAG iteration")
    ax.set_ylabel("active targets (% of the first iteration)")
    ax.set_title("active targets per iteration (Fig. 2.4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return {"title": "active targets (Fig. 2.4)", "png": _png(fig)}


# ------------------------------------------------------------------ the study


def _fooling(model: nn.Module, x: Tensor, scenes: Any, attack: dict[str, Any], seed: int) -> dict[str, Any]:
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
    fig_panels = [x[0].cpu(), (10 * res.perturbation[0] + 0.5).cpu(), res.x_adv[0].cpu(), colorize(target[0]),
                  colorize(pred[0])]
    from robustlab.report import plots

    fig = plots.image_grid(fig_panels, ["clean", "perturbation ×10", "adversarial", "target map", "prediction"])
    return {"row": {"pixels predicted as the target map": hit, "iterations": res.iterations[0],
                    "perceptibility": float(perceptibility(res.perturbation).mean())},
            "image": {"title": "fooling image: a square painted into the prediction (§2.3.4)", "png": _png(fig)}}


def run_dag_study(study: DAGStudy, out: str | Path | None = None) -> dict[str, Any]:
    """Scenes → trained models → DAG on each → Table 2.1, transfer, figures → results.json + report.html."""
    from robustlab.app.rundir import RunDir, study_fingerprint

    with RunDir(out if out is not None else Path("runs") / study.name, "study", study_fingerprint(study.name)) as run:
        run.write_config(study.raw, "study.yaml")
        return _run_dag_study(study, run)


def _run_dag_study(study: DAGStudy, run: Any) -> dict[str, Any]:
    from robustlab.eval import dense

    run_dir = run.path
    device = pick_device(study.device)
    start = time.perf_counter()
    train_scenes = _scenes(study.scenes, "train", study.seed)
    test = _scenes(study.scenes, "test", study.seed)
    models_info = _train_models(study, run_dir, train_scenes, device)
    models = {name: load_dense(run_dir / "models" / name)[0].to(device) for name in study.models}
    x = test.images.to(device)
    k = test.num_classes
    evaluations: dict[str, Any] = {}
    rs, active, rows = {}, {}, []
    for i, (name, model) in enumerate(models.items()):
        _logger.info("[%d/%d] DAG on %s (%d scenes)", i + 1, len(models), name, len(x))
        r, act, iters = _perturbation(study, run_dir, name, model, x, test)
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
    table21 = {"kind": "dag", "options": {"task": study.task, "attack": study.attack, "scenes": study.scenes},
               "n": len(x), "table": rows, "value": f"{metric} on clean / Trunc(X + r) / X + permuted r (Table 2.1)",
               "images": pictures(study.task, models[first], x, rs[first], test, study.pictures)
               + [_active_plot(active)]}
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
        kw = _attack_kwargs(study.attack, "detection")
        curve = dense.nms_iou_curve(models[first], x, test.boxes, test.labels, study.nms_ious, seed=study.seed,
                                    **kw)
        evaluations["nms_iou"] = {"kind": "dag proposals", "options": {"model": first, "nms_ious": study.nms_ious},
                                  "n": len(x), "table": [{"RPN NMS IoU": t, "proposals per image": v["proposals"],
                                                          "mAP after DAG": v["self"]} for t, v in curve.items()],
                                  "value": "denser proposals (higher NMS IoU) make DAG stronger (Fig. 2.3)"}
    results = {"kind": "study", "name": study.name, "title": study.title, "claim": study.raw.get("claim"),
               "chapter": study.raw.get("chapter", 2), "notes": study.raw.get("notes"),
               "data": f"scenes:{study.scenes['source']} ({study.scenes['size']}×{study.scenes['size']})",
               "models": models_info, "evaluations": evaluations, "seconds": round(time.perf_counter() - start, 2)}
    return run.finish(results)


# ------------------------------------------------------------------ robustlab attack --dag


def attack_dense(model_dir: str | Path, *, limit: int = 8, out: str | Path | None = None, seed: int = 0,
                 gamma: float = 0.5, max_iter: int | None = None, nms_iou: float = 0.9,
                 device: str = "auto") -> dict[str, Any]:
    """``robustlab attack --dag``: DAG on a dense model from a DAG study, on
    ``limit`` test scenes made as the model's study made them."""
    from robustlab.app.rundir import RunDir, fingerprint_of
    from robustlab.eval import dense

    if limit < 1:
        raise ValueError(f"--limit must be >= 1 scenes; got {limit}")
    model, spec = load_dense(model_dir)
    dev = pick_device(device)
    model = model.to(dev)
    cfg = {**spec["scenes"], "test": limit}
    test = _scenes(cfg, "test", spec.get("seed", 0))
    attack = {**ATTACK_DEFAULTS[spec["task"]], "gamma": gamma}
    if max_iter is not None:
        attack["max_iter"] = max_iter
    if spec["task"] == "detection":
        attack["nms_iou"] = nms_iou
    run = RunDir(out, "attack-dag", fingerprint_of({"model": str(model_dir), "limit": limit, "seed": seed,
                                                    **attack}))  # another run there: refused before the attack
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
               "models": {}, "seconds": round(seconds, 2),
               "evaluations": {"dag": {"kind": "dag", "options": {"model": str(model_dir), **attack}, "n": limit,
                                       "table": [{"model": Path(model_dir).name, f"{metric} clean": rep["orig"],
                                                  f"{metric} adversarial": rep["adv"],
                                                  f"{metric} permuted r": rep["perm"],
                                                  "perceptibility": rep["perceptibility"],
                                                  "iterations (mean)": sum(res.iterations) / limit}],
                                       "images": pictures(spec["task"], model, x, res.perturbation, test, 3)}}}
    with run:
        return run.finish(results)
