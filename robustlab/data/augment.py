"""Training-time augmentations on batches of [0, 1] image tensors.

They run on whatever device the batch is on, draw one set of parameters per
image, and take their randomness from an explicit ``torch.Generator`` (or the
global RNG, which the training loop checkpoints), so a resumed run augments
exactly as an uninterrupted one.

* ``flip_crop``: the CIFAR recipe — zero-pad 4, random crop, horizontal flip.
* ``random_resized_crop``: the torchvision/timm ImageNet recipe — a crop of
  8–100% of the area and aspect 3/4–4/3, resized back to the image's size,
  then a horizontal flip. (ImageFolder training data crops the decoded image
  in the DataLoader workers instead: :mod:`robustlab.data.folder`.)
* ``autoaugment``: torchvision's AutoAugment (ImageNet policy), the
  augmentation AdvProp's EfficientNets are trained with (§7.5.1) and the one
  fine-grained AdvProp gives its own BN route (§7.5.4).
* ``none``: identity.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Augment = Callable[[Tensor, "torch.Generator | None"], Tensor]


def flip_crop(x: Tensor, generator: torch.Generator | None = None, padding: int = 4) -> Tensor:
    """Per-image random crop of the zero-padded image and horizontal flip (p = 0.5)."""
    n, _, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device="cpu").to(dev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device="cpu").to(dev)
    flip = (torch.rand(n, generator=generator, device="cpu") < 0.5).to(dev)
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + ox[:, None]
    rows = torch.arange(h, device=dev)[None] + oy[:, None]
    idx = torch.arange(n, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


#: RandomResizedCrop's defaults (torchvision, timm; Szegedy et al.'s Inception crop).
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def random_resized_crop_params(n: int, height: int, width: int, generator: torch.Generator | None = None,
                               scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO,
                               tries: int = 10) -> Tensor:
    """(N, 5) int64 rows ``(top, left, crop height, crop width, flip)``, drawn on
    the CPU as torchvision's ``RandomResizedCrop.get_params`` draws one crop:
    up to ``tries`` (area, log-aspect) candidates, the first that fits is
    kept, else the centre crop with the aspect clamped to ``ratio``."""
    area = height * width
    s = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator) * area
    r = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp_()
    cw, ch = (s * r).sqrt().round(), (s / r).sqrt().round()
    fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    first = fits.to(torch.uint8).argmax(1)
    rows = torch.arange(n)
    cw, ch = cw[rows, first], ch[rows, first]
    aspect = width / height
    if aspect < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    found = fits.any(1)
    cw = torch.where(found, cw, torch.full_like(cw, fw))
    ch = torch.where(found, ch, torch.full_like(ch, fh))
    u = torch.rand(n, 3, generator=generator)
    top = torch.where(found, (u[:, 0] * (height - ch + 1)).floor(), torch.div(height - ch, 2, rounding_mode="floor"))
    left = torch.where(found, (u[:, 1] * (width - cw + 1)).floor(), torch.div(width - cw, 2, rounding_mode="floor"))
    flip = u[:, 2] < 0.5
    return torch.stack([top, left, ch, cw, flip.double()], 1).long()


def random_resized_crop(x: Tensor, generator: torch.Generator | None = None,
                        scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO) -> Tensor:
    """Per-image Inception crop resized back to (H, W) (bilinear, as
    torchvision's ``resized_crop``), then a horizontal flip (p = 0.5)."""
    from torchvision.transforms.v2 import functional as TF

    n, _, h, w = x.shape
    params = random_resized_crop_params(n, h, w, generator, scale, ratio).tolist()
    out = []
    for img, (top, left, ch, cw, flip) in zip(x, params):
        crop = TF.resized_crop(img, top, left, ch, cw, [h, w], antialias=True)
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out).clamp_(0, 1)


def autoaugment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """torchvision's AutoAugment (ImageNet policy), one policy draw per image.

    torchvision draws from the global RNG; with a ``generator`` the global RNG
    is forked and seeded from it, so the result is still reproducible."""
    from torchvision.transforms import v2

    policy = v2.AutoAugment()
    as_bytes = (x.detach() * 255).round_().to(torch.uint8)
    if generator is None:
        out = torch.stack([policy(img) for img in as_bytes])
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device="cpu"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = torch.stack([policy(img) for img in as_bytes])
    return out.to(x.dtype) / 255


def identity(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return x


_AUGMENTS: dict[str, Augment] = {"none": identity, "flip_crop": flip_crop, "random_resized_crop": random_resized_crop,
                                  "autoaugment": autoaugment}


def augment_names() -> list[str]:
    return list(_AUGMENTS)


def create_augment(name: str | None) -> Augment:
    """The augmentation called ``name`` (None means ``none``)."""
    key = "none" if name is None else str(name).lower().replace("-", "_")
    if key not in _AUGMENTS:
        raise ValueError(f"augment must be one of {augment_names()}; got {name!r}")
    return _AUGMENTS[key]
