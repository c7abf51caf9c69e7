"""Input-transformation defenses, as black-box targets of §3.4.5 (Table 3.4).

The NIPS 2017 defense track's top entries put a transformation in front of
the classifier, and Table 3.4 scores transferred adversarial examples on
them. Two are rebuilt here around any classifier:

- ``randomization`` (entry No. 2, *iyswim*: Xie et al., "Mitigating
  adversarial effects through randomization", ICLR 2018): each image is
  resized to rnd × rnd, rnd uniform in [S, S·331/299), then zero-padded at a
  random position to S·331/299 (299 → 331 on ImageNet), a fresh draw per
  image and per forward pass. Nearest-neighbour resizing, as the authors'
  input-diversity code uses; the network's global pooling takes the larger
  input.
- ``jpeg`` (a step of entry No. 3, *Anil Thomas*, whose pipeline also
  rotates, shifts and zooms; JPEG alone is Guo et al.'s 2018 defense): a
  JPEG round trip at ``quality`` (75, libjpeg's default) through
  ``torchvision.io`` on uint8 images.

Neither is differentiable end to end in a useful way (JPEG's quantization
has zero gradient almost everywhere; randomization changes the model's input
each pass), so they are for scoring examples made elsewhere, not for a
white-box attack; :func:`robustlab.eval.evaluate` flags the randomized one.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustlab._checks import check_number
from robustlab.attacks.diversity import InputDiversity
from robustlab.data.corruptions import jpeg_round_trip

#: Xie et al. 2018: 299×299 inputs resized to rnd ∈ [299, 331) and padded to 331×331.
RANDOMIZATION_SCALE = 331 / 299
#: libjpeg's (and PIL's) default quality.
JPEG_QUALITY = 75


class Randomization(nn.Module):
    """``model`` behind Xie et al.'s random resize and random zero padding.

    Args:
        model: the classifier; it must accept inputs ``scale`` times larger
            (global pooling).
        scale: padded size over input size (331/299).
        seed: seed of the defense's own generator; every forward pass draws
            anew from it, so a fixed call sequence is reproducible.
        resize_back: resize the padded image back to the input size, for a
            model that only takes its training size (no global pooling).
    """

    def __init__(self, model: nn.Module, *, scale: float = RANDOMIZATION_SCALE, seed: int = 0,
                 resize_back: bool = False) -> None:
        super().__init__()
        if not isinstance(resize_back, bool):
            raise TypeError(f"resize_back must be true or false; got {resize_back!r}")
        self.model = model
        self.transform = InputDiversity(1.0, scale=check_number(scale, "scale", low=1.0, low_open=True),
                                        resize_back=resize_back)
        self.seed = int(check_number(seed, "seed", low=0, integer=True))
        self.generator = torch.Generator().manual_seed(self.seed)

    def extra_repr(self) -> str:
        return f"scale={self.transform.scale:.4f}, seed={self.seed}, resize_back={self.transform.resize_back}"

    def forward(self, x: Tensor) -> Tensor:
        draw = self.transform.draw(x.shape[0], x.shape[-2], x.shape[-1], self.generator, "cpu")
        for f in ("apply", "height", "width", "top", "left"):
            setattr(draw, f, getattr(draw, f).to(x.device))
        x_t = self.transform.transform(x, draw)
        try:
            return self.model(x_t)
        except RuntimeError as err:
            if self.transform.resize_back:
                raise
            raise RuntimeError(f"the randomization defense feeds the model {tuple(x_t.shape[-2:])} images for "
                               f"{tuple(x.shape[-2:])} inputs and the model failed on them ({err}); a model "
                               "without global pooling needs resize_back=True") from err


class JPEG(nn.Module):
    """``model`` behind a JPEG round trip at ``quality`` (1–100; 75)."""

    def __init__(self, model: nn.Module, *, quality: int = JPEG_QUALITY) -> None:
        super().__init__()
        self.model = model
        self.quality = int(check_number(quality, "quality", low=1, high=100, integer=True))

    def extra_repr(self) -> str:
        return f"quality={self.quality}"

    def forward(self, x: Tensor) -> Tensor:
        return self.model(jpeg_round_trip(x, self.quality))


#: name → defense class; each takes the model and keyword options.
DEFENSES: dict[str, type[nn.Module]] = {"randomization": Randomization, "jpeg": JPEG}


def defended(model: nn.Module, defense: str, **options: Any) -> nn.Module:
    """``model`` behind the input-transformation ``defense`` (``randomization``
    or ``jpeg``) with its ``options``; errors name the defense and its options."""
    import inspect

    if defense not in DEFENSES:
        raise ValueError(f"defense must be one of {sorted(DEFENSES)}; got {defense!r}")
    cls = DEFENSES[defense]
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"defense {defense!r}: unknown option(s) {unknown}; it takes {known}")
    return cls(model, **options)
