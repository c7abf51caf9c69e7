"""ImageFolder trees (ImageNet layout: ROOT/SPLIT/CLASS/IMAGE) with the standard
evaluation pre-processing: resize the shorter side to size·256/224, centre crop."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset, Subset

from robustlab.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from robustlab.data.sources import DataNotFoundError


def image_folder(root: str | Path, split: str, *, limit: int | None = None, size: int = 224) -> Dataset:
    """Images of ROOT/SPLIT (``test`` also tries ``val``), as [0, 1] tensors."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    names = (split, "val") if split == "test" else (split,)
    tried = [root / s for s in names] + [root]
    folder = next((p for p in tried if p.is_dir() and any(c.is_dir() for c in p.iterdir())), None)
    if folder is None:
        raise DataNotFoundError(
            "imagefolder: no class folders found. Paths tried:\n" + "\n".join(f"  {p}" for p in tried)
        )
    transform = T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), T.ToTensor()])
    ds = ImageFolder(str(folder), transform=transform)
    info = DatasetInfo(f"imagefolder:{root}", len(ds.classes), 3, size, IMAGENET_MEAN, IMAGENET_STD, tuple(ds.classes))
    if limit is not None and limit < len(ds):
        # A class-mixed subset: every k-th image rather than the first classes only.
        step = len(ds) / limit
        ds = Subset(ds, [int(i * step) for i in range(limit)])
    ds.info = info
    return ds
