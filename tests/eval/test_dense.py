"""Dense metrics for DAG: VOC mIoU, the permuted control, transfer tables."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks.dag import dag_segmentation
from robustlab.eval.dense import (
    confusion,
    mean_iou,
    permute_perturbation,
    segment,
    segmentation_report,
    transfer_table,
)


def test_mean_iou_against_a_hand_computed_example():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])  # the 255 pixel is ignored
    # class 0: TP 1, FP 0, FN 1 → 1/2; class 1: TP 2, FP 1, FN 0 → 2/3; class 2: 1/1; class 3 absent.
    assert mean_iou(pred, target, 4) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert mean_iou(target.clamp(max=2), target.clamp(max=2), 3, ignore_index=None) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        mean_iou(pred[0], target, 4)


def test_confusion_equals_a_naive_count_and_torchmetrics():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 9, 11), generator=g)
    target[target == 4] = 255  # ignored pixels
    pred = torch.randint(0, 4, (3, 9, 11), generator=g)
    cm = confusion(pred, target, 4)
    naive = torch.zeros(4, 4, dtype=torch.long)
    for t, q in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            naive[t, q] += 1
    assert torch.equal(cm, naive)
    tm = pytest.importorskip("torchmetrics.functional.classification")
    assert torch.equal(cm, tm.multiclass_confusion_matrix(pred.flatten(), target.flatten(), 4, ignore_index=255))
    with pytest.raises(ValueError, match="pred labels"):
        confusion(pred + 4, target, 4)
    with pytest.raises(ValueError, match="target labels"):
        confusion(pred, target, 4, ignore_index=None)


def test_permutation_keeps_values_and_moves_them():
    r = torch.arange(2 * 3 * 5 * 7, dtype=torch.float).view(2, 3, 5, 7)
    p = permute_perturbation(r, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(p[i].flatten().sort().values, r[i].flatten().sort().values)
        # rows and columns move together across channels
        assert torch.equal(p[i, 1] - p[i, 0], torch.full((5, 7), 35.0))
    assert not torch.equal(p, r)


def test_report_and_transfer_on_a_dag_perturbation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = segment(model, x)
    res = dag_segmentation(model, x, gamma=0.01, max_iter=100)
    rep = segmentation_report(model, x, labels, res.perturbation, 4)
    assert rep["orig"] == 1.0 and rep["adv"] < 0.5 and rep["perceptibility"] > 0
    table = transfer_table({"r": res.perturbation, "2r": 2 * res.perturbation}, {"m": model}, x, labels, 4)
    assert table["ORIG"]["m"] == 1.0 and table["r"]["m"] == pytest.approx(rep["adv"])
