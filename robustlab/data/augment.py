"""Training-time augmentations on batches of [0, 1] image tensors.

They run on whatever device the batch is on, draw one set of parameters per
image, and take their randomness from an explicit ``torch.Generator`` (or the
global RNG, which the training loop checkpoints), so a resumed run augments
exactly as an uninterrupted one.

* ``flip_crop``: the CIFAR recipe — zero-pad 4, random crop, horizontal flip.
* ``autoaugment``: torchvision's AutoAugment (ImageNet policy), the
  augmentation AdvProp's EfficientNets are trained with (§7.5.1) and the one
  fine-grained AdvProp gives its own BN route (§7.5.4).
* ``none``: identity.
"""
from __future__ import annotations

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


_AUGMENTS: dict[str, Augment] = {"none": identity, "flip_crop": flip_crop, "autoaugment": autoaugment}


def augment_names() -> list[str]:
    return list(_AUGMENTS)


def create_augment(name: str | None) -> Augment:
    """The augmentation called ``name`` (None means ``none``)."""
    key = "none" if name is None else str(name).lower().replace("-", "_")
    if key not in _AUGMENTS:
        raise ValueError(f"augment must be one of {augment_names()}; got {name!r}")
    return _AUGMENTS[key]
