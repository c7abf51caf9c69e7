"""Models: built-in small nets, timm/torchvision by name, input normalization, checkpoints; small
dense models (FCN, Faster R-CNN) for the ch. 2 attacks."""
from robustlab.models.checkpoint import (
    KINDS,
    ModelInfo,
    load_checkpoint,
    load_model,
    load_weights_into,
    read_model_info,
    save_model,
    save_weights,
    update_meta,
)
from robustlab.models.dense import SmallFCN, create_dense, small_faster_rcnn
from robustlab.models.factory import create_model, load_state_dict, model_names
from robustlab.models.normalize import Normalize, NormalizedModel
from robustlab.models.resolve import normalized, resolve_model
from robustlab.models.small import BasicBlock, CifarResNet, SmallCNN
from robustlab.models.subset import ClassSubset, class_subset, narrow_classifier

__all__ = [
    "KINDS", "BasicBlock", "CifarResNet", "ClassSubset", "ModelInfo", "Normalize", "NormalizedModel", "SmallCNN",
    "class_subset", "create_model", "load_checkpoint", "load_model", "load_state_dict", "load_weights_into",
    "model_names", "narrow_classifier", "normalized", "read_model_info", "resolve_model", "save_model", "save_weights",
    "update_meta",
    "SmallFCN", "create_dense", "small_faster_rcnn",
]
