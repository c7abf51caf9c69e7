"""Datasets and loaders: Fashion-MNIST, MNIST, CIFAR-10/100, ImageFolder, digits."""
from robustlab.data.datasets import (
    INFO,
    DatasetInfo,
    TensorBatches,
    TensorImageDataset,
    dataset_info,
    dataset_names,
    load_dataset,
    make_loader,
)
from robustlab.data.sources import DataNotFoundError, read_idx

__all__ = [
    "INFO", "DataNotFoundError", "DatasetInfo", "TensorBatches", "TensorImageDataset",
    "dataset_info", "dataset_names", "load_dataset", "make_loader", "read_idx",
]
