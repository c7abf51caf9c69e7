"""Dense evaluation for DAG (thesis ch. 2): mean IoU of segmentations and
mAP of detections on clean, adversarial and permuted-perturbation images
(Table 2.1), transfer tables of single and summed perturbations across models
(Tables 2.2–2.4), and the detection mAP against the RPN's NMS IoU (Fig. 2.3).

mIoU follows the VOC protocol: one confusion matrix accumulated over the
whole set (one ``torch.bincount``), IoU_c = TP / (TP + FP + FN) per class, averaged
over the classes that occur in the prediction or the ground truth.

mAP follows VOC's: AP at box IoU 0.5 per class, averaged over the classes of
the ground truth (torchmetrics' MeanAveragePrecision; its AP interpolates
precision at 101 recall points, as COCO — VOC2007's 11-point AP differs by
a fraction of a point; VOC's "difficult" objects are not modelled). mAP
needs the ``dense`` extra (``pip install 'robustlab[dense]'``: torchmetrics
and faster-coco-eval), imported when first computed; mIoU needs nothing.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._checks import check_images
from robustlab.attacks.detection import (
    DENSE_NMS_IOU,
    check_detection_targets,
    check_detector,
    dag_detection,
    dense_proposals,
)
from robustlab.eval.analysis import perceptibility
from robustlab.nn.state import inference_state

PERMUTATION_DRAWS = 3  # Table 2.1: "we randomly permute r for three times and report the average"


INSTALL_HINT = "pip install 'robustlab[dense]'"


def confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """(num_classes, num_classes) counts, rows = ground truth, columns = prediction; pixels whose
    ground truth is ``ignore_index`` (VOC's 255 borders) are not counted."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape; got {tuple(pred.shape)}, {tuple(target.shape)}")
    pred, target = pred.flatten().long(), target.flatten().long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    for what, labels in (("target", target), ("pred", pred)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"{what} labels must lie in [0, {num_classes}) (or be ignore_index={ignore_index}); "
                             f"got {int(labels.min())}..{int(labels.max())}")
    # One bincount over (row, column) pairs: the confusion matrix without a metrics library.
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).view(num_classes,
                                                                                                 num_classes)


def miou_from_confusion(cm: Tensor) -> float:
    """Mean IoU over the classes present in the prediction or the ground truth."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if bool(present.any()) else 0.0


def mean_iou(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> float:
    """VOC mIoU of label maps ``pred`` and ``target`` (N, H, W)."""
    return miou_from_confusion(confusion(pred, target, num_classes, ignore_index))


def permute_perturbation(r: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Table 2.1's control: the rows and the columns of each perturbation
    (N, C, H, W) randomly permuted (same permutation for every channel), which
    keeps its values and magnitude and destroys its spatial structure."""
    out = torch.empty_like(r)
    for i in range(r.shape[0]):
        rows = torch.randperm(r.shape[2], generator=generator).to(r.device)
        cols = torch.randperm(r.shape[3], generator=generator).to(r.device)
        out[i] = r[i][:, rows][:, :, cols]
    return out


@torch.no_grad()
def segment(model: nn.Module, x: Tensor) -> Tensor:
    """Label map (N, H, W) of a segmentation model (tensor or torchvision dict output)."""
    with inference_state(model):
        out = model(x)
    return (out["out"] if isinstance(out, dict) else out).argmax(1)


def segmentation_report(model: nn.Module, x: Tensor, labels: Tensor, r: Tensor, num_classes: int, *,
                        ignore_index: int | None = 255, seed: int = 0) -> dict[str, float]:
    """Table 2.1 for one model: mIoU on clean images, on Trunc(X + r), and on
    X + permuted r (mean of three draws); plus the mean perceptibility of r
    (§2.3.5)."""
    gen = torch.Generator().manual_seed(seed)
    perm = [mean_iou(segment(model, (x + permute_perturbation(r, gen)).clamp(0, 1)), labels, num_classes,
                     ignore_index) for _ in range(PERMUTATION_DRAWS)]
    return {"orig": mean_iou(segment(model, x), labels, num_classes, ignore_index),
            "adv": mean_iou(segment(model, (x + r).clamp(0, 1)), labels, num_classes, ignore_index),
            "perm": sum(perm) / len(perm), "perceptibility": float(perceptibility(r).mean())}


def transfer_table(perturbations: Mapping[str, Tensor], models: Mapping[str, nn.Module], x: Tensor, labels: Tensor,
                   num_classes: int, *, ignore_index: int | None = 255) -> dict[str, dict[str, float]]:
    """Tables 2.2–2.4: mIoU of every model on X + r for every perturbation
    (give sums such as ``r1 + r3`` as their own entries), with the clean row."""
    rows = {"ORIG": {m: mean_iou(segment(model, x), labels, num_classes, ignore_index)
                     for m, model in models.items()}}
    for name, r in perturbations.items():
        rows[name] = {m: mean_iou(segment(model, (x + r).clamp(0, 1)), labels, num_classes, ignore_index)
                      for m, model in models.items()}
    return rows


# --- Detection -------------------------------------------------------------------------------------------------

VOC_AP_IOU = 0.5  # VOC protocol: a detection is right if its box overlaps an unmatched object of its class by IoU ≥ 0.5


@torch.no_grad()
def detect(model: nn.Module, x: Tensor, *, batch_size: int = 8) -> list[dict[str, Tensor]]:
    """Detections of a torchvision detector on x (N, C, H, W) in [0, 1]: one
    dict per image with ``boxes`` (D, 4) xyxy in x's pixels, ``scores`` (D,),
    ``labels`` (D,), on the CPU."""
    check_detector(model)
    out: list[dict[str, Tensor]] = []
    with inference_state(model):
        for i in range(0, x.shape[0], batch_size):
            out += [{k: d[k].cpu() for k in ("boxes", "scores", "labels")} for d in model(list(x[i: i + batch_size]))]
    return out


def _map_metric() -> Any:
    try:
        from torchmetrics.detection import MeanAveragePrecision
        from torchmetrics.utilities.imports import _FASTER_COCO_EVAL_AVAILABLE, _PYCOCOTOOLS_AVAILABLE
    except ImportError as err:
        raise ImportError(f"detection mAP needs torchmetrics and faster-coco-eval: {INSTALL_HINT} ({err})") from None
    if not (_FASTER_COCO_EVAL_AVAILABLE or _PYCOCOTOOLS_AVAILABLE):
        raise ImportError(f"detection mAP needs torchmetrics' COCO backend faster-coco-eval: {INSTALL_HINT}")
    # faster_coco_eval first: same numbers as pycocotools, faster, and sane for any max_detection_thresholds.
    return MeanAveragePrecision(iou_type="bbox", iou_thresholds=[VOC_AP_IOU],
                                backend="faster_coco_eval" if _FASTER_COCO_EVAL_AVAILABLE else "pycocotools")


def mean_ap(detections: Sequence[Mapping[str, Tensor]], boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> float:
    """VOC mAP (AP at IoU 0.5, mean over classes) of ``detections`` (one dict
    of boxes / scores / labels per image, as :func:`detect`) against ground
    truth ``boxes`` (K_i, 4) xyxy and ``labels`` (K_i,). −1 if there is no object."""
    if not (len(detections) == len(boxes) == len(labels)):
        raise ValueError(f"detections, boxes and labels must have one entry per image; got {len(detections)}, "
                         f"{len(boxes)}, {len(labels)}")
    metric = _map_metric()
    metric.update([{k: d[k].detach().cpu() for k in ("boxes", "scores", "labels")} for d in detections],
                  [{"boxes": b.detach().cpu().float(), "labels": lab.detach().cpu()} for b, lab in zip(boxes, labels)])
    return float(metric.compute()["map"])


def _detection_map(model: nn.Module, x: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> float:
    return mean_ap(detect(model, x), boxes, labels)


def detection_report(model: nn.Module, x: Tensor, boxes: list[Tensor], labels: list[Tensor], r: Tensor | None = None,
                     *, seed: int = 0, nms_iou: float = DENSE_NMS_IOU, **attack: Any) -> dict[str, float]:
    """Table 2.1 for one detector: VOC mAP on clean images (``orig``), on
    Trunc(X + r) (``adv``) and on X + permuted r (``perm``, mean of three
    draws), and the mean perceptibility of r (§2.3.5).

    Without ``r``, DAG makes it first (:func:`~robustlab.attacks.dag_detection`
    with ``nms_iou``, ``seed`` and the other keywords in ``attack``); the
    report then also has the mean ``iterations``. Comparing ``nms_iou=0.9``
    with ``0.7`` is Fig. 2.3's experiment on one model."""
    check_images(x, "x")
    check_detection_targets(x, boxes, labels)
    extra = {}
    if r is None:
        res = dag_detection(model, x, boxes, labels, nms_iou, seed=seed, **attack)
        r, extra = res.perturbation, {"iterations": sum(res.iterations) / len(res.iterations)}
    if r.shape != x.shape:
        raise ValueError(f"r must have the shape of x {tuple(x.shape)}; got {tuple(r.shape)}")
    gen = torch.Generator().manual_seed(seed)
    perm = [_detection_map(model, (x + permute_perturbation(r, gen)).clamp(0, 1), boxes, labels)
            for _ in range(PERMUTATION_DRAWS)]
    return {"orig": _detection_map(model, x, boxes, labels),
            "adv": _detection_map(model, (x + r).clamp(0, 1), boxes, labels),
            "perm": sum(perm) / len(perm), "perceptibility": float(perceptibility(r).mean()), **extra}


def detection_transfer_table(perturbations: Mapping[str, Tensor], models: Mapping[str, nn.Module], x: Tensor,
                             boxes: list[Tensor], labels: list[Tensor]) -> dict[str, dict[str, float]]:
    """Table 2.2: VOC mAP of every detector on X + r for every perturbation
    (give sums such as ``r1 + r3`` and their permuted controls as their own
    entries), with the clean row ``ORIG`` ("None" in the table)."""
    check_images(x, "x")
    check_detection_targets(x, boxes, labels)
    rows = {"ORIG": {m: _detection_map(model, x, boxes, labels) for m, model in models.items()}}
    for name, r in perturbations.items():
        rows[name] = {m: _detection_map(model, (x + r).clamp(0, 1), boxes, labels) for m, model in models.items()}
    return rows


def nms_iou_curve(model: nn.Module, x: Tensor, boxes: list[Tensor], labels: list[Tensor],
                  nms_ious: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9), *,
                  victims: Mapping[str, nn.Module] | None = None, seed: int = 0, **attack: Any
                  ) -> dict[float, dict[str, float]]:
    """Fig. 2.3: for each RPN NMS IoU, the mean number of proposals per image
    (``proposals``) and the VOC mAP of each victim (default: the attacked
    model itself, as ``"self"``) on X + r, r made by DAG on ``model`` with
    that NMS IoU. ``attack`` goes to dag_detection (e.g. ``max_iter``)."""
    victims = dict(victims) if victims is not None else {"self": model}
    sizes = {k: attack[k] for k in ("pre_nms_top_n", "post_nms_top_n") if k in attack}
    out: dict[float, dict[str, float]] = {}
    for t in nms_ious:
        counts = [len(p) for p in dense_proposals(model, x, t, **sizes)]
        r = dag_detection(model, x, boxes, labels, t, seed=seed, **attack).perturbation
        out[t] = {"proposals": sum(counts) / len(counts),
                  **{m: _detection_map(v, (x + r).clamp(0, 1), boxes, labels) for m, v in victims.items()}}
    return out
