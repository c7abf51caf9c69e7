"""Small dense-prediction models for the DAG experiments of thesis ch. 2,
trainable on a CPU in minutes on :func:`robustlab.data.make_scenes` canvases
(64×64 by default).

- :class:`SmallFCN`: the FCN pipeline the thesis attacks (§2.2, §2.3.3):
  class scores at a reduced resolution, up-sampled to the input. Every pixel
  is a DAG target (§2.3.1).
- :func:`small_faster_rcnn`: torchvision's Faster R-CNN (§2.3.3) with a small
  single-map backbone; its RPN proposals are the DAG targets (§2.3.2).

Both take images in [0, 1], as every robustlab model: the FCN standardizes inside
(``Normalize`` first layer), the detector through torchvision's transform
(``image_mean``, ``image_std``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.models.normalize import Normalize

SCENE_MEAN, SCENE_STD = (0.19, 0.19, 0.19), (0.16, 0.16, 0.16)  # about the pixel statistics of make_scenes


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallFCN(nn.Module):
    """An FCN-8s-style segmenter (§2.2: "predicting a class-dependent score
    map at a reduced resolution, and performing up-sampling").

    Conv-BN-ReLU stages at strides 2 (2w channels), 4 (4w, 4w) and 8 (4w and
    a dilated conv for context: receptive field 55 px, enough for the 20–32 px
    objects of the scenes). A 1×1 classifier on each stage; as in FCN-8s the
    coarse scores are up-sampled and added to the finer ones (8 → 4 → 2),
    then bilinearly up-sampled to the input size. No layer runs at full
    resolution: on a CPU the full-size activations cost more than the
    arithmetic.

    x: (N, C, H, W) in [0, 1] → logits (N, num_classes, H, W), or
    ``{"out": logits}`` with ``dict_output=True`` (torchvision's FCN interface).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 6, width: int = 12, *, dict_output: bool = False,
                 mean: Sequence[float] | None = SCENE_MEAN, std: Sequence[float] | None = SCENE_STD) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or width < 1:
            raise ValueError(f"in_channels >= 1, num_classes >= 2 and width >= 1 are required; got "
                             f"in_channels={in_channels}, num_classes={num_classes}, width={width}")
        self.dict_output = dict_output
        self.normalize: nn.Module = nn.Identity() if mean is None else Normalize(mean, std or (1.0,) * len(mean))
        w = width
        self.stride2 = _conv_bn(in_channels, 2 * w, 2)
        self.stride4 = nn.Sequential(_conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w))
        self.stride8 = nn.Sequential(_conv_bn(4 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, dilation=2))
        self.score2 = nn.Conv2d(2 * w, num_classes, 1)
        self.score4 = nn.Conv2d(4 * w, num_classes, 1)
        self.score8 = nn.Conv2d(4 * w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        f2 = self.stride2(self.normalize(x))
        f4 = self.stride4(f2)
        scores = self.score8(self.stride8(f4))
        scores = self.score4(f4) + _upsample(scores, f4)
        scores = self.score2(f2) + _upsample(scores, f2)
        out = _upsample(scores, x)
        return OrderedDict(out=out) if self.dict_output else out


def _upsample(scores: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(scores, size=like.shape[-2:], mode="bilinear", align_corners=False)


class SmallBackbone(nn.Sequential):
    """Conv-BN-ReLU stages to stride 4 with ``out_channels`` = 4·width
    channels, dilated 2 and 4 at the end (receptive field 55 px): one feature
    map for torchvision's detectors."""

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        w = width
        super().__init__(_conv_bn(in_channels, 2 * w, 2), _conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w),
                         _conv_bn(4 * w, 4 * w, dilation=2), _conv_bn(4 * w, 4 * w, dilation=4))
        self.out_channels = 4 * w


def small_faster_rcnn(
    num_classes: int,
    *,
    min_size: int = 64,
    max_size: int = 64,
    width: int = 16,
    anchor_sizes: Sequence[int] = (12, 20, 32, 48),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    representation_size: int = 128,
    roi_sampling_ratio: int = 1,
    image_mean: Sequence[float] = SCENE_MEAN,
    image_std: Sequence[float] = SCENE_STD,
    **kwargs: object,
) -> nn.Module:
    """torchvision's ``FasterRCNN`` (§2.3.3) on a :class:`SmallBackbone`.

    One stride-4 feature map, anchors of ``anchor_sizes`` × ``aspect_ratios``
    (h/w) on it, 7×7 RoIAlign, a two-layer box head of ``representation_size``.
    One RoIAlign sample per bin (``roi_sampling_ratio``) and 32 sampled RoIs
    per image: a 20–32 px object spans 5–8 feature cells, so more samples add
    little, and torchvision's CPU RoIAlign backward dominates the training
    step (2 samples and 64 RoIs train about 2× slower).
    ``num_classes`` includes the background (``Scenes.num_classes``). With
    ``min_size`` = ``max_size`` = the canvas side, torchvision's transform only
    standardizes (``image_mean``, ``image_std``) and never resizes, so boxes
    stay in input pixels. The RPN and box-sampling sizes are scaled down for
    ~2 objects per 64×64 image (16×16 positions × 12 anchors = 3072 anchors);
    ``kwargs`` go to ``FasterRCNN``, e.g. the dense proposals of §2.3.2 scaled
    to that anchor count: ``rpn_nms_thresh=0.9, rpn_pre_nms_top_n_test=3072,
    rpn_post_nms_top_n_test=1000``.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if num_classes < 2:
        raise ValueError(f"num_classes must count the background and at least one class (>= 2); got {num_classes}")
    backbone = SmallBackbone(3, width)
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    roi_pool = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=roi_sampling_ratio)
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, representation_size)
    options: dict[str, object] = {
        "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100,
        "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 32,
        "box_detections_per_img": 20,
    }
    options.update(kwargs)
    return FasterRCNN(backbone, min_size=min_size, max_size=max_size, image_mean=list(image_mean),
                      image_std=list(image_std), rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
                      box_head=box_head, box_predictor=FastRCNNPredictor(representation_size, num_classes),
                      **options)


def create_dense(task: str, num_classes: int, width: int) -> nn.Module:
    """The dense model of a DAG study: a :class:`SmallFCN` (``task="segmentation"``)
    or a :func:`small_faster_rcnn` (``"detection"``) on 3-channel images;
    what :func:`robustlab.models.load_model` rebuilds from a dense ``model.json``."""
    if task == "segmentation":
        return SmallFCN(3, num_classes, width)
    if task == "detection":
        return small_faster_rcnn(num_classes, width=width)
    raise ValueError(f"task must be segmentation or detection; got {task!r}")
