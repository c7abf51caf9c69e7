"""Dense evaluation for DAG (thesis ch. 2): mean IoU of segmentations on clean,
adversarial and permuted-perturbation images (Table 2.1), and transfer tables
of single and summed perturbations across models (Tables 2.2–2.4).

mIoU follows the VOC protocol: one confusion matrix accumulated over the
whole set (torchmetrics), IoU_c = TP / (TP + FP + FN) per class, averaged
over the classes that occur in the prediction or the ground truth.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from robustlab.eval.analysis import perceptibility
from robustlab.nn.state import inference_state

PERMUTATION_DRAWS = 3  # Table 2.1: "we randomly permute r for three times and report the average"


def confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """(num_classes, num_classes) counts, rows = ground truth, columns = prediction."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape; got {tuple(pred.shape)}, {tuple(target.shape)}")
    return multiclass_confusion_matrix(pred.flatten(), target.flatten(), num_classes, ignore_index=ignore_index)


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
