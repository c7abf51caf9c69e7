"""Dense models for DAG (SmallFCN, small Faster R-CNN) and their training loops."""
from __future__ import annotations

import os

import pytest
import torch

from robustlab.data.scenes import make_scenes
from robustlab.data.sources import DataNotFoundError
from robustlab.eval.dense import mean_iou, segment
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


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ROBUSTLAB_LONG_TESTS"), reason="set ROBUSTLAB_LONG_TESTS=1 (5-7 minutes)")
def test_recommended_ch2_models_reach_target_accuracy():
    """The ch. 2 setting on 64×64 Fashion-MNIST scenes: the FCN on 3000 train
    scenes × 10 epochs (about 1 CPU minute), the detector on 2000 × 6 (about
    4), both measured on 500 held-out test scenes."""
    try:
        train = make_scenes(3000, split="train", seed=0, download=False)
        test = make_scenes(500, split="test", seed=0, download=False)
    except DataNotFoundError as err:
        pytest.skip(f"Fashion-MNIST files not installed: {err}")
    torch.manual_seed(0)
    fcn = train_segmenter(SmallFCN(3, train.num_classes, width=12), train, epochs=10, batch_size=16, seed=0).model
    assert mean_iou(segment(fcn, test.images), test.masks, test.num_classes) >= 0.7
    torch.manual_seed(0)
    det = train_detector(small_faster_rcnn(train.num_classes), train.subset(range(2000)), epochs=6, seed=0).model
    assert detection_map50(det, test) >= 0.7
