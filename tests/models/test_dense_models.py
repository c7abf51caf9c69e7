"""Dense models for DAG (SmallFCN, small Faster R-CNN) and their training loops."""
from __future__ import annotations

import pytest
import torch

from robustlab.attacks import dag_segmentation
from robustlab.data.scenes import make_scenes
from robustlab.data.sources import DataNotFoundError
from robustlab.eval.dense import detection_report, mean_iou, segment, segmentation_report
from robustlab.models.dense import SmallFCN, small_faster_rcnn
from robustlab.train.dense import train_detector, train_segmenter


@pytest.fixture(scope="module")
def train_scenes():
    return make_scenes(512, source="shapes", split="train", seed=0)


@pytest.fixture(scope="module")
def test_scenes():
    return make_scenes(64, source="shapes", split="test", seed=0)


def detection_map50(model, scenes) -> float:
    """VOC mAP at IoU 0.5 of a detector on scenes (``rl.eval.mean_ap``: torchmetrics with faster-coco-eval)."""
    from robustlab.eval.dense import detect, mean_ap

    return mean_ap(detect(model, scenes.images), scenes.boxes, scenes.labels)


@pytest.mark.parametrize("size", [64, 48, 50])
def test_fcn_output_shape_and_dict_mode(size):
    torch.manual_seed(0)
    model = SmallFCN(3, 6, width=4).eval()
    x = torch.rand(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 6, size, size)
    model.dict_output = True
    assert set(model(x)) == {"out"} and torch.equal(model(x)["out"], out)
    assert SmallFCN(1, 3, width=4, dict_output=True, mean=None)(torch.rand(1, 1, 32, 32))["out"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        SmallFCN(3, 1)


def test_detector_train_and_eval_forward(test_scenes):
    torch.manual_seed(0)
    model = small_faster_rcnn(test_scenes.num_classes, width=4, rpn_nms_thresh=0.9, rpn_post_nms_top_n_test=500)
    assert model.rpn.nms_thresh == 0.9 and model.rpn._post_nms_top_n["testing"] == 500  # kwargs reach FasterRCNN
    images, targets = list(test_scenes.images[:3]), [test_scenes.target(i) for i in range(3)]
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        detections = model.eval()(images)
    assert len(detections) == 3
    for d in detections:
        assert set(d) == {"boxes", "labels", "scores"} and d["boxes"].shape[1:] == (4,)
        # No resizing inside: boxes are in input pixels.
        assert d["boxes"].numel() == 0 or float(d["boxes"].max()) <= 64
    assert model.transform.min_size == (64,) and model.transform.max_size == 64
    with pytest.raises(ValueError, match="num_classes"):
        small_faster_rcnn(1)


def test_short_segmenter_training_learns(train_scenes, test_scenes):
    torch.manual_seed(0)
    model = SmallFCN(3, train_scenes.num_classes, width=8)
    before = mean_iou(segment(model, test_scenes.images), test_scenes.masks, test_scenes.num_classes)
    fit = train_segmenter(model, train_scenes, epochs=5, batch_size=16, lr=1e-2, seed=0)
    after = mean_iou(segment(fit.model, test_scenes.images), test_scenes.masks, test_scenes.num_classes)
    assert fit.model is model and not model.training and len(fit.history) == 5
    assert fit.history[-1] < 0.5 * fit.history[0]
    assert after > 0.45 and after > before + 0.3  # about 0.08 -> 0.61


def test_segmenter_training_is_deterministic(train_scenes):
    params = []
    for disturb in (1, 7):
        torch.manual_seed(0)
        model = SmallFCN(3, train_scenes.num_classes, width=4)
        torch.rand(disturb)  # a different global random state before training: the loop seeds itself
        model = train_segmenter(model, train_scenes.subset(range(32)), epochs=1, batch_size=16, seed=5).model
        params.append(torch.cat([p.flatten() for p in model.state_dict().values() if p.is_floating_point()]))
    assert torch.equal(params[0], params[1])


def test_short_detector_training_learns(train_scenes, test_scenes):
    torch.manual_seed(0)
    model = small_faster_rcnn(train_scenes.num_classes, width=8)
    assert detection_map50(model, test_scenes) < 0.05
    fit = train_detector(model, train_scenes, epochs=2, batch_size=16, lr=5e-3, seed=0)
    assert fit.model is model and not model.training
    assert fit.history[-1] < 0.7 * fit.history[0]
    assert detection_map50(model, test_scenes) > 0.25  # about 0.39


@pytest.mark.parametrize("kwargs,name", [({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"),
                                         ({"lr": 0.0}, "lr")])
def test_training_bad_arguments(train_scenes, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        train_segmenter(SmallFCN(3, train_scenes.num_classes, width=4), train_scenes, **kwargs)


@pytest.fixture(scope="module")
def fashion_scenes():
    """The ch. 2 scenes (64×64 Fashion-MNIST items, 5 classes + background):
    1500 train, 200 held-out test."""
    try:
        return (make_scenes(1500, split="train", seed=0, download=False),
                make_scenes(200, split="test", seed=0, download=False))
    except DataNotFoundError as err:
        pytest.skip(f"Fashion-MNIST files not installed: {err}")


@pytest.mark.slow
def test_fcn_learns_fashion_scenes_and_dag_destroys_it(fashion_scenes):
    """The README's segmenter, CI-sized (SmallFCN width 8, 1500 scenes × 5
    epochs, about 10 CPU seconds): mIoU about 0.68 on 200 held-out scenes
    (0.09 untrained); DAG (γ = 0.5, ≤ 200 iterations) on 8 of them takes it
    from about 0.72 to 0.03, the permuted perturbation leaves it near 0.66."""
    train, test = fashion_scenes
    k = train.num_classes
    torch.manual_seed(0)
    model = SmallFCN(3, k, width=8)
    before = mean_iou(segment(model, test.images), test.masks, k)
    fcn = train_segmenter(model, train, epochs=5, batch_size=16, seed=0).model
    after = mean_iou(segment(fcn, test.images), test.masks, k)
    assert after >= 0.6 and after > before + 0.4, (before, after)
    x, labels = test.images[:8], test.masks[:8]
    rep = segmentation_report(fcn, x, labels, dag_segmentation(fcn, x, labels).perturbation, k)
    assert rep["orig"] >= 0.6 and rep["adv"] < 0.2 * rep["orig"], rep
    assert abs(rep["perm"] - rep["orig"]) < 0.1, rep  # the structure of r matters, not its values


@pytest.mark.slow
def test_detector_learns_fashion_scenes_and_dag_destroys_it(fashion_scenes):
    """The README's detector, CI-sized (small Faster R-CNN width 8, 1000
    scenes × 3 epochs at lr 0.01, about 19 CPU seconds): VOC mAP@0.5 about 0.69
    on 200 held-out scenes (< 0.05 untrained); DAG (dense proposals, γ = 0.5,
    ≤ 150 iterations) on 8 of them takes it from about 0.69 to 0.33, the
    permuted perturbation leaves it near 0.67."""
    train, test = fashion_scenes
    torch.manual_seed(0)
    model = small_faster_rcnn(train.num_classes, width=8)
    assert detection_map50(model, test) < 0.05
    det = train_detector(model, train.subset(range(1000)), epochs=3, lr=1e-2, seed=0).model
    assert detection_map50(det, test) >= 0.6
    rep = detection_report(det, test.images[:8], test.boxes[:8], test.labels[:8])
    assert rep["orig"] >= 0.6 and rep["adv"] < 0.6 * rep["orig"], rep
    assert abs(rep["perm"] - rep["orig"]) < 0.1, rep
