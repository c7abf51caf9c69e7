"""ImageFolder trees (ImageNet layout: ROOT/SPLIT/CLASS/IMAGE).

A split folder that holds its images itself is read with the labels of
Kaggle's ImageNet release, ``LOC_SPLIT_solution.csv`` (``ImageId`` and a
``PredictionString`` that begins with the image's wnid), found in the folder
or one of the four above it; the Kaggle root itself, ``ROOT/ILSVRC/Data/
CLS-LOC/{train,val}``, is found from ``ROOT``. Its classes are the wnids of
its images, sorted, as the class folders of the training split are. A flat
``val`` folder of image-net.org's validation images is read with its ILSVRC2012
devkit (``ILSVRC2012_devkit_t12``, extracted or the ``.tar.gz``) found the same
way (:func:`read_devkit`).

Evaluation pre-processing is the standard one: resize the shorter side to
size·256/224, centre crop to size (float [0, 1] images). Training data
(``augment=`` given) is decoded and cropped where it is loaded — in the
DataLoader workers — and returned as uint8 (C, H, W), a quarter of the bytes
to move between processes and to the GPU; the trainer scales it to [0, 1] on
the device, and normalization stays inside the model. Its random draws come
from (seed, epoch, index) (:mod:`robustlab.data.streaming`), so a resumed
run, or one with another worker count, sees the same crops.

Training transforms by ``augment``:

* ``random_resized_crop`` (the default for ImageFolder): the torchvision/timm
  ImageNet recipe, ``RandomResizedCrop(size)`` on the decoded image (8–100% of
  its area, aspect 3/4–4/3) and a horizontal flip;
* ``autoaugment``: the same, then AutoAugment's ImageNet policy (AdvProp's
  EfficientNets, §7.5.1);
* ``flip_crop``: the evaluation resize and centre crop, then the CIFAR
  recipe (zero-pad 4, random crop, flip);
* ``none``: the evaluation pre-processing.
"""
from __future__ import annotations

import functools
import itertools
import logging
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from robustlab.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from robustlab.data.sources import DataNotFoundError
from robustlab.data.streaming import SeededTransform

_logger = logging.getLogger(__name__)

TRAIN_AUGMENTS = ("none", "flip_crop", "random_resized_crop", "autoaugment")


SPLIT_NAMES = ("train", "val", "test")


def _has_class_dirs(path: Path) -> bool:
    """``path`` is a folder with a visible sub-folder (``.ipynb_checkpoints``
    and other hidden folders are no classes)."""
    return path.is_dir() and any(c.is_dir() and not c.name.startswith(".") for c in path.iterdir())


KAGGLE_TREE = Path("ILSVRC", "Data", "CLS-LOC")  # the images of Kaggle's ImageNet release, under its root
DEVKIT = "ILSVRC2012_devkit_t12"  # image-net.org's development kit: the validation labels
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"  # in its data/: line N, image N's ILSVRC2012_ID


def split_root(root: str | Path) -> Path:
    """The folder whose split folders are read: ``root``, or the images'
    folder of Kaggle's ImageNet release given its root (``root``/ILSVRC/Data/
    CLS-LOC, when ``root`` holds no split folder itself)."""
    root = Path(root).expanduser()
    if (root / KAGGLE_TREE).is_dir() and not any((root / s).is_dir() for s in SPLIT_NAMES):
        return root / KAGGLE_TREE
    return root


def _find_split(root: Path, split: str) -> Path:
    """ROOT/SPLIT (``test`` also tries ``val``), or ROOT itself when it holds
    class folders and no split folder at all; a tree with other splits only
    (``train/`` without ``val/``) is refused rather than read as classes."""
    names = (split, "val") if split == "test" else (split,)
    folder = next((root / s for s in names if _has_class_dirs(root / s)), None)
    if folder is not None:
        return folder
    empty = next((root / s for s in names if (root / s).is_dir()), None)
    if empty is not None:
        raise DataNotFoundError(f"imagefolder: {empty} holds no class folders; expected {empty}/CLASS/IMAGE "
                                f"(hidden folders such as .ipynb_checkpoints are not classes){_flat_hint(empty)}")
    splits = sorted(c.name for c in root.iterdir() if c.is_dir() and c.name in SPLIT_NAMES) if root.is_dir() else []
    if splits:
        raise DataNotFoundError(f"imagefolder: {root} has no {' or '.join(f'{n}/' for n in names)} split (it has "
                                f"{', '.join(f'{s}/' for s in splits)}): give the {split} images their own "
                                "folder of class folders")
    if _has_class_dirs(root):
        return root  # ROOT/CLASS/IMAGE: one set of images, every split
    tried = [root / s for s in names] + [root]
    raise DataNotFoundError("imagefolder: no class folders found. Paths tried:\n" + "\n".join(f"  {p}" for p in tried)
                            + _flat_hint(root))


def _flat_hint(folder: Path) -> str:
    """When ``folder`` holds images itself, not in class folders: what that
    layout is (ImageNet's validation set as downloaded) and what to do."""
    if not folder.is_dir():
        return ""
    images = sum(1 for f in itertools.islice(folder.iterdir(), 100_000) if visible_image(f.name) and f.is_file())
    if not images:
        return ""
    return (f"\n{folder} holds {images} images itself, none in a class folder, and an image's class is the folder "
            f"it is in, or the line of a LOC_{folder.name}_solution.csv (Kaggle's ImageNet labels: ImageId,"
            "PredictionString beginning with its wnid) in this folder or one of the four above it, or, for a val "
            f"folder of ImageNet's validation images as image-net.org gives them, its devkit there ({DEVKIT}/ or "
            f"{DEVKIT}.tar.gz). Else move each image into a folder named by its class, as in training "
            "(val/n01440764/...)")


def _labels_file(folder: Path) -> Path | None:
    """The labels of the flat split folder ``folder``, in it or one of the
    four folders above: Kaggle's ``LOC_{folder.name}_solution.csv``, else
    (a ``val`` folder) image-net.org's devkit, extracted or as downloaded."""
    names = [f"LOC_{folder.name}_solution.csv"] + ([DEVKIT, f"{DEVKIT}.tar.gz"] if folder.name == "val" else [])
    return next((d / name for name in names for d in [folder, *folder.parents][:5] if (d / name).exists()), None)


def _flat_split(root: Path, split: str) -> tuple[Path, Path] | None:
    """(folder, labels) of a split whose images lie in one folder with
    Kaggle's labels or the devkit's (``test`` also tries ``val``); None when
    there is none."""
    for base in (root, root / KAGGLE_TREE):
        for name in (split, "val") if split == "test" else (split,):
            folder = base / name
            if folder.is_dir() and not _has_class_dirs(folder):
                labels = _labels_file(folder)
                if labels is not None:
                    return folder, labels
    return None


def flat_labels(labels: Path, folder: Path) -> list[tuple[str, str]]:
    """(image path, wnid) of each image of the flat ``folder``, sorted by wnid
    then file name (ImageFolder's order), from ``labels``: Kaggle's CSV
    (:func:`read_solution`) or the devkit (:func:`read_devkit`)."""
    files = read_solution(labels, folder) if labels.name.endswith(".csv") else read_devkit(labels, folder)
    return sorted(files, key=lambda s: (s[1], Path(s[0]).name))


def _images(folder: Path, labels: Path) -> list[Path]:
    images = sorted(f for f in folder.iterdir() if f.is_file() and visible_image(f.name))
    if not images:
        raise DataNotFoundError(f"imagefolder: {folder} holds no images (labels: {labels})")
    return images


def _devkit_member(devkit: Path, member: str) -> bytes:
    """The bytes of ``data/{member}`` of the devkit, a folder or its
    ``.tar.gz`` as downloaded (read, not extracted)."""
    import tarfile

    if devkit.is_dir():
        path = devkit / "data" / member
        if not path.is_file():
            raise DataNotFoundError(f"imagefolder: the ImageNet devkit {devkit} has no data/{member}")
        return path.read_bytes()
    try:
        with tarfile.open(devkit, "r:gz") as tar:
            f = tar.extractfile(f"{DEVKIT}/data/{member}")
            if f is None:
                raise KeyError(member)
            return f.read()
    except (tarfile.TarError, OSError, KeyError) as err:
        raise ValueError(f"imagefolder: {devkit} is not ImageNet's devkit archive with {DEVKIT}/data/{member} "
                         f"({type(err).__name__}: {err})") from None


def read_devkit(devkit: Path, folder: Path) -> list[tuple[str, str]]:
    """(image path, wnid) of each ``ILSVRC2012_val_NNNNNNNN`` image of the
    flat ``folder``, from image-net.org's
    ILSVRC2012 devkit (``ILSVRC2012_devkit_t12``, a folder or its
    ``.tar.gz``): line N of ``data/ILSVRC2012_validation_ground_truth.txt``
    is image N's ILSVRC2012_ID, which ``data/meta.mat``'s synsets name by
    wnid. The IDs are the devkit's own order, not the wnids' sorted one
    (ID 1 is n02119789, kit fox); reading ``meta.mat`` needs scipy
    (``pip install 'robustlab[imagenet]'``), as torchvision's ``ImageNet``.

    Raises:
        ImportError: scipy is not installed.
        ValueError: a file of the devkit that is not what it should be, an
            image not named ``ILSVRC2012_val_NNNNNNNN``, or one past the
            ground truth's lines.
    """
    import io
    import re

    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise ImportError(f"imagefolder: reading the labels of ImageNet's devkit ({devkit}/data/meta.mat) needs "
                          f"scipy: pip install 'robustlab[imagenet]' ({err}); or move each validation image "
                          "into a folder named by its class") from None
    try:
        synsets = loadmat(io.BytesIO(_devkit_member(devkit, "meta.mat")), squeeze_me=True)["synsets"]
        wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"imagefolder: {devkit}'s data/meta.mat is not the devkit's synsets (ILSVRC2012_ID, WNID, "
                         f"num_children) ({type(err).__name__}: {err})") from None
    ids = _devkit_member(devkit, GROUND_TRUTH).decode("ascii", "replace").split()
    bad = next((i for i in ids if not (i.isdigit() and int(i) in wnid_of)), None)
    if bad is not None:
        raise ValueError(f"imagefolder: {devkit}'s data/{GROUND_TRUTH} holds {bad!r}, no ILSVRC2012_ID of "
                         f"meta.mat's {len(wnid_of)} classes")
    files = []
    for image in _images(folder, devkit):
        number = re.fullmatch(r"ILSVRC2012_val_(\d{8})", image.stem)
        if number is None or not 1 <= int(number.group(1)) <= len(ids):
            raise ValueError(f"imagefolder: {image} is no ILSVRC2012_val_NNNNNNNN image of the devkit's "
                             f"{len(ids)} labels ({devkit}); a flat val folder labelled by the devkit holds "
                             "ImageNet's validation images under their own names")
        files.append((str(image), wnid_of[int(ids[int(number.group(1)) - 1])]))
    return files


def read_solution(labels: Path, folder: Path) -> list[tuple[str, str]]:
    """(image path, wnid) of each image of the flat ``folder``, from
    Kaggle's ``labels`` file.

    Raises:
        ValueError: a line that is no ``ImageId,WNID ...`` (file and line
            named), an image the file does not label, or no image at all.
    """
    import csv

    wnid_of: dict[str, str] = {}
    with open(labels, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if number == 1 and row[:1] == ["ImageId"]:
                continue
            words = row[1].split() if len(row) == 2 else []
            if not row[0].strip() or not words:
                raise ValueError(f"imagefolder: {labels} line {number}: expected ImageId,PredictionString (the "
                                 f"image's name and its wnid first, as in Kaggle's ImageNet labels); got {row!r}")
            wnid_of[row[0].strip()] = words[0]
    images = _images(folder, labels)
    unlabelled = [f.name for f in images if f.stem not in wnid_of]
    if unlabelled:
        raise ValueError(f"imagefolder: {len(unlabelled)} image(s) of {folder} have no line in {labels} "
                         f"({', '.join(unlabelled[:3])}{', ...' if len(unlabelled) > 3 else ''}); each needs "
                         "ImageId,WNID ... with ImageId its file name without the suffix")
    return [(str(f), wnid_of[f.stem]) for f in images]


class LabelledImages(Dataset):
    """(image, label) of a list of image files and their class names: a flat
    split folder read with its labels file, as torchvision's ImageFolder
    gives a class-folder tree (``samples``, ``targets``, ``classes``,
    ``class_to_idx``; ``transform`` applied to the PIL image when given)."""

    def __init__(self, files: list[tuple[str, str]], *, transform: Any = None, loader: Any = None) -> None:
        self.classes = sorted({wnid for _, wnid in files})
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(path, self.class_to_idx[wnid]) for path, wnid in files]
        self.targets = [label for _, label in self.samples]
        self.transform, self.loader = transform, loader if loader is not None else load_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        img = self.loader(path)
        return (self.transform(img) if self.transform is not None else img), label


def spread_indices(n: int, limit: int | None) -> list[int] | None:
    """``limit`` of ``n`` indices, evenly spaced (every k-th image): a
    class-mixed subset of class-sorted images rather than the first classes
    only; None when ``limit`` keeps them all."""
    if limit is None or limit >= n:
        return None
    step = n / limit
    return [int(i * step) for i in range(limit)]


def load_image(path: str, mode: str = "RGB") -> Any:
    """The image at ``path`` in ``mode`` (``RGB``, as torchvision's loader, or
    ``L``: grayscale), or a ValueError naming the file when it is not a
    readable image (truncated, not an image at all)."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: RGB conversion would clip it to white
                import numpy as np

                a = np.asarray(img, dtype=np.float64)
                img = Image.fromarray((a * (255 / 65535)).clip(0, 255).round().astype(np.uint8))
            return img.convert(mode)
    except (OSError, SyntaxError, ValueError) as err:  # what PIL raises (UnidentifiedImageError is an OSError)
        raise ValueError(f"imagefolder: {path} is not a readable image ({type(err).__name__}: {err}); remove or "
                         "replace it") from None


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def visible_image(path: str) -> bool:
    """An image file that is not hidden: macOS's ``._x.png`` resource forks and
    other dot-files are not images of the dataset (GIFs are: their first frame)."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


@functools.cache
def _image_folder_class() -> type:
    """torchvision's ImageFolder whose classes are the folders that are not
    hidden (a ``.ipynb_checkpoints`` folder is not a class); made on first use
    (torchvision loads then), found again by pickle as ``_Folder`` (a
    DataLoader worker started by spawn)."""
    from torchvision.datasets import ImageFolder

    class _Folder(ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            classes = sorted(e.name for e in Path(directory).iterdir() if e.is_dir() and not e.name.startswith("."))
            if not classes:
                raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
            return classes, {c: i for i, c in enumerate(classes)}

    _Folder.__module__, _Folder.__qualname__ = __name__, "_Folder"
    return _Folder


def __getattr__(name: str) -> Any:  # PEP 562: pickle's lookup of the class made above
    if name == "_Folder":
        return _image_folder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def eval_transform(size: int) -> Any:
    import torchvision.transforms as T

    return T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), T.ToTensor()])


def train_transform(size: int, augment: str) -> Any:
    """The PIL pipeline of one training image, ending in a uint8 (C, H, W) tensor."""
    import torchvision.transforms as T

    if augment not in TRAIN_AUGMENTS:
        raise ValueError(f"augment must be one of {TRAIN_AUGMENTS}; got {augment!r}")
    resize = [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)]
    steps = {
        "none": resize,
        "flip_crop": resize + [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()],
        "random_resized_crop": [T.RandomResizedCrop(size), T.RandomHorizontalFlip()],
        "autoaugment": [T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                        T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)],
    }[augment]
    return T.Compose([*steps, T.PILToTensor()])


def image_folder(root: str | Path, split: str, *, limit: int | None = None, size: int = 224,
                 augment: str | None = None, channels: int = 3) -> Dataset:
    """Images of ROOT/SPLIT (``test`` also tries ``val``).

    Without ``augment``: evaluation images, float [0, 1]. With it: training
    images (uint8, keyed by (seed, epoch, index); see the module docstring).
    ``channels``: 3 (RGB) or 1 (grayscale, normalized by the mean of
    ImageNet's channel statistics, as timm adapts a model to one channel)."""
    if not str(root).strip():
        raise ValueError("imagefolder: give the dataset's root folder (imagefolder:/data/imagenet); got an empty path")
    if channels not in (1, 3):
        raise ValueError(f"channels: an ImageFolder gives RGB (3) or grayscale (1) images; got channels={channels!r}")
    root = split_root(root)
    flat = _flat_split(root, split)
    folder = flat[0] if flat is not None else _find_split(root, split)
    loader = functools.partial(load_image, mode="RGB" if channels == 3 else "L")
    transform = eval_transform(size) if augment is None else None
    if flat is not None:
        ds: Dataset = LabelledImages(flat_labels(flat[1], folder), transform=transform, loader=loader)
        _logger.info("[data] %s holds its %d images itself: labelled by %s (%d classes)", folder, len(ds), flat[1],
                     len(ds.classes))
    else:
        try:
            ds = _image_folder_class()(str(folder), transform=transform, loader=loader, is_valid_file=visible_image)
        except FileNotFoundError as err:  # a class folder holding no image: torchvision's message names no folder
            raise DataNotFoundError(f"imagefolder: {folder}: {err}") from None
    classes = tuple(ds.classes)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else \
        ((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))
    info = DatasetInfo(f"imagefolder:{root}", len(classes), channels, size, mean, std, classes)
    indices = spread_indices(len(ds), limit)
    if augment is not None:
        return SeededTransform(ds, train_transform(size, augment), indices=indices, info=info)
    if indices is not None:
        ds = Subset(ds, indices)
    ds.info = info
    return ds
