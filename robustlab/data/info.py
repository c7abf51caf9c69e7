"""What a model needs to know about a dataset: classes, channels, size, and the
normalization statistics that go into the model's first layer."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = field(default=())


FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
INFO = {
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), FASHION_CLASSES),
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), tuple(str(i) for i in range(10))),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "digits": DatasetInfo("digits", 10, 1, 8, (0.3054,), (0.3759,), tuple(str(i) for i in range(10))),
}
DISPLAY_NAMES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                 "digits": "8×8 digits"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def display_name(dataset: str) -> str:
    """How a title writes a dataset: ``"fashion_mnist"`` → ``"Fashion-MNIST"``;
    any other name (an ImageFolder root) as given."""
    return DISPLAY_NAMES.get(dataset, dataset)


def class_difference(first: Sequence[str], second: Sequence[str], first_name: str, second_name: str) -> str:
    """How two lists of class names differ, as a refusal says it: ``only in
    train: [...], only in val: [...]`` (three of each), or the same names in
    another order."""
    only = sorted(set(first) - set(second))[:3], sorted(set(second) - set(first))[:3]
    if not any(only):
        return "the same names in another order"
    return f"only in {first_name}: {only[0]}, only in {second_name}: {only[1]}"


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """ImageNet-1k's 1000 WordNet ids in class-index order: sorted, the order
    of an ImageFolder of its ``train`` folder and of torchvision's and timm's
    ImageNet weights (``n01440764`` tench is 0, ``n15075141`` toilet tissue
    999). Read from the package's ``imagenet_wnids.txt`` (the list timm ships
    as ``imagenet_synsets.txt``)."""
    text = resources.files("robustlab.data").joinpath("imagenet_wnids.txt").read_text()
    return tuple(text.split())


def subset_indices(classes: Sequence[str], of: Sequence[str]) -> tuple[int, ...] | None:
    """The index in ``of`` of each class of ``classes``, when every one of them
    is in ``of`` and the two lists differ (fewer classes, or another order);
    None when they are the same list or some class is not in ``of``."""
    where = {c: i for i, c in enumerate(of)}
    if not classes or list(classes) == list(of) or any(c not in where for c in classes):
        return None
    return tuple(where[c] for c in classes)
