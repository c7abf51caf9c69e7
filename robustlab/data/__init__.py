"""Datasets and loaders: Fashion-MNIST, MNIST, CIFAR-10/100, ImageFolder, digits; training-time
augmentations and the 15 ImageNet-C corruptions on tensors; scenes with masks and boxes for the
dense attacks (ch. 2)."""
from robustlab.data.augment import augment_names, create_augment
from robustlab.data.corruptions import CORRUPTIONS, corrupt, corruption_names
from robustlab.data.datasets import (
    TensorBatches,
    TensorImageDataset,
    dataset_info,
    dataset_names,
    load_dataset,
    load_tensors,
    make_loader,
)
from robustlab.data.info import INFO, DatasetInfo, imagenet_wnids, subset_indices
from robustlab.data.scenes import SceneDetection, Scenes, detection_collate, make_scenes
from robustlab.data.sources import DataNotFoundError, read_idx
from robustlab.data.streaming import Augmented, SeededTransform, augmented

__all__ = [
    "CORRUPTIONS", "INFO", "DataNotFoundError", "augment_names", "corrupt", "corruption_names", "create_augment",
    "DatasetInfo", "TensorBatches", "TensorImageDataset",
    "dataset_info", "dataset_names", "load_dataset", "load_tensors", "make_loader", "read_idx",
    "SceneDetection", "Scenes", "detection_collate", "make_scenes",
    "Augmented", "SeededTransform", "augmented", "imagenet_wnids", "subset_indices",
]
