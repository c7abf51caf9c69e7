"""A tiny torchvision Faster R-CNN with random weights for the DAG detection tests (importable from every test
directory: pytest puts tests/, the conftest's folder, on sys.path)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign


def tiny_faster_rcnn(num_classes: int = 4, size: int = 32, seed: int = 0) -> FasterRCNN:
    """Two stride-2 convs, 8 channels, anchors of 8 and 16 px; ``size`` is the transform's min/max size (a size
    other than the images' makes it resize them). Every detection is kept (score threshold 0)."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
    backbone.out_channels = 8
    return FasterRCNN(backbone, None, min_size=size, max_size=size, box_score_thresh=0.0,
                      rpn_anchor_generator=AnchorGenerator(sizes=((8, 16),), aspect_ratios=((0.5, 1.0, 2.0),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], output_size=3, sampling_ratio=2),
                      box_head=TwoMLPHead(8 * 3 * 3, 32), box_predictor=FastRCNNPredictor(32, num_classes)).eval()
