"""Models: built-in small nets, timm/torchvision by name, input normalization, checkpoints; small
dense models (FCN, Faster R-CNN) for the ch. 2 attacks."""
from robustlab.models.checkpoint import load_model, save_model
from robustlab.models.dense import SmallFCN, small_faster_rcnn
from robustlab.models.factory import create_model, load_state_dict, model_names
from robustlab.models.normalize import Normalize, NormalizedModel
from robustlab.models.resolve import resolve_model
from robustlab.models.small import BasicBlock, CifarResNet, SmallCNN

__all__ = [
    "BasicBlock", "CifarResNet", "Normalize", "NormalizedModel", "SmallCNN",
    "create_model", "load_model", "load_state_dict", "model_names", "resolve_model", "save_model",
    "SmallFCN", "small_faster_rcnn",
]
