"""Detection metrics for DAG: VOC mAP, Table 2.1's report, Table 2.2's transfer table, Fig. 2.3's curve."""
from __future__ import annotations

import pytest
import torch
from dense_helpers import tiny_faster_rcnn
from torchvision.models.detection import FasterRCNN

from robustlab.attacks.detection import dag_detection
from robustlab.eval.dense import (
    detect,
    detection_report,
    detection_transfer_table,
    mean_ap,
    nms_iou_curve,
    permute_perturbation,
)

G = 0.05  # an untrained detector needs a larger step than the thesis's γ = 0.5/255


def detector(seed: int = 0, num_classes: int = 4, size: int = 32) -> FasterRCNN:
    return tiny_faster_rcnn(num_classes, size, seed)


def dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


GT_BOXES = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([[5.0, 5, 15, 25]])]
GT_LABELS = [torch.tensor([1, 1]), torch.tensor([2])]


def test_map_of_perfect_detections_is_one():
    perfect = [dets(b.tolist(), [0.9] * len(b), lab.tolist()) for b, lab in zip(GT_BOXES, GT_LABELS)]
    assert mean_ap(perfect, GT_BOXES, GT_LABELS) == pytest.approx(1.0)


def test_map_is_ap_at_iou_half_with_101_point_interpolation():
    def ap(second_box):
        d = [dets([[0, 0, 10, 10], second_box], [0.9, 0.8], [1, 1]), dets([[5, 5, 15, 25]], [0.7], [2])]
        return mean_ap(d, GT_BOXES, GT_LABELS)

    # IoU([22,20,32,30], [20,20,30,30]) = 80/120 ≥ 0.5: a hit, though COCO's IoU 0.75+ thresholds would miss it.
    assert ap([22, 20, 32, 30]) == pytest.approx(1.0)
    # IoU([25,20,35,30], [20,20,30,30]) = 50/150 < 0.5: class 1 has precision 1 up to recall 1/2 and never reaches
    # recall 1, so 51 of the 101 recall points {0, 0.01, ..., 1} score 1; class 2 is perfect.
    assert ap([25, 20, 35, 30]) == pytest.approx((51 / 101 + 1) / 2)
    # A false positive ranked above the hit halves the precision at every recall level of class 2.
    d = [dets([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8, 0.95], [1, 1, 2]),
         dets([[5, 5, 15, 25]], [0.7], [2])]
    assert mean_ap(d, GT_BOXES, GT_LABELS) == pytest.approx((1 + 0.5) / 2)
    # A class without ground truth does not enter the mean.
    d = [dets([[0, 0, 10, 10], [20, 20, 30, 30], [1, 1, 9, 9]], [0.9, 0.8, 0.99], [1, 1, 3]),
         dets([[5, 5, 15, 25]], [0.7], [2])]
    assert mean_ap(d, GT_BOXES, GT_LABELS) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one entry per image"):
        mean_ap(d[:1], GT_BOXES, GT_LABELS)


def test_detect_is_the_models_output_in_input_pixels():
    model = detector(size=48).train()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = detect(model, x, batch_size=2)
    assert model.training and len(out) == 3
    with torch.no_grad():
        want = model.eval()(list(x))
    for d, w in zip(out, want):
        assert set(d) == {"boxes", "scores", "labels"} and len(d["boxes"]) > 0
        for k in d:
            torch.testing.assert_close(d[k], w[k])
        assert float(d["boxes"].max()) <= 32


@pytest.fixture(scope="module")
def own_truth():
    """Ground truth = the detector's own detections above a global score threshold (≥ 3 per image), so its
    clean mAP is exactly 1: every detection ranked above an object of its class is that object."""
    model = detector()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = detect(model, x)
    s = min(float(d["scores"].sort(descending=True).values[2]) for d in out)
    keep = [d["scores"] >= s for d in out]
    boxes, labels = [d["boxes"][k] for d, k in zip(out, keep)], [d["labels"][k] for d, k in zip(out, keep)]
    return model, x, boxes, labels, dag_detection(model, x, boxes, labels, gamma=G).perturbation


def test_report_table_2_1_shape(own_truth):
    model, x, boxes, labels, r = own_truth
    rep = detection_report(model, x, boxes, labels, gamma=G)  # DAG made inside, dense proposals
    assert rep["orig"] == pytest.approx(1.0)
    assert rep["adv"] < 0.3 and rep["perm"] > rep["adv"] + 0.3 and rep["perceptibility"] > 0 and rep["iterations"] > 0
    assert detection_report(model, x, boxes, labels, r) == {k: v for k, v in rep.items() if k != "iterations"}
    zero = detection_report(model, x, boxes, labels, torch.zeros_like(x))
    assert zero["adv"] == zero["perm"] == zero["orig"] and zero["perceptibility"] == 0
    with pytest.raises(ValueError, match="r must have the shape of x"):
        detection_report(model, x, boxes, labels, r[:1])
    with pytest.raises(TypeError, match="boxes must be a list of 2"):
        detection_report(model, x, boxes[:1], labels, r)


def test_transfer_table_and_nms_iou_curve(own_truth):
    model, x, boxes, labels, r = own_truth
    other = detector(seed=1)
    perturbations = {"r": r, "r (permute)": permute_perturbation(r, torch.Generator().manual_seed(0))}
    table = detection_transfer_table(perturbations, {"a": model, "b": other}, x, boxes, labels)
    assert set(table) == {"ORIG", "r", "r (permute)"} and set(table["r"]) == {"a", "b"}
    assert table["ORIG"]["a"] == pytest.approx(1.0) and table["r"]["a"] < 0.3 < table["r (permute)"]["a"]
    assert table["ORIG"]["b"] == pytest.approx(mean_ap(detect(other, x), boxes, labels))
    curve = nms_iou_curve(model, x, boxes, labels, (0.5, 0.9), victims={"a": model, "b": other}, gamma=G,
                          max_iter=3, post_nms_top_n=500)
    assert list(curve) == [0.5, 0.9] and set(curve[0.9]) == {"proposals", "a", "b"}
    assert curve[0.5]["proposals"] < curve[0.9]["proposals"] <= 500
