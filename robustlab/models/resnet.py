"""Bottleneck ResNets of any depth at ImageNet shape (224×224 input, a 7×7
stem, four stages of 64–512 bottleneck widths): the "scaling up" networks of
§5.5.1 (ResNet-50 → 101 → 152, ResNeXt through ``groups``/``width_per_group``)
and the "going deeper" ones of §6.5 / Fig. 6.7 (ResNet-152 → 200 → 338 → 638).

Built as torchvision's ``ResNet(Bottleneck, layers)``, so the module tree is
the one of ``tv:resnet50``: ``layer1``…``layer4`` (res2…res5), ``fc``; every
surgery that works on torchvision ResNets (``convert_norm`` to mixture BN or
GroupNorm, ``swap_activation``, ``add_denoise_blocks``) works on it.

A bottleneck ResNet of blocks ``layers = [n2, n3, n4, n5]`` has
``depth = 3 · (n2 + n3 + n4 + n5) + 2`` layers (three convolutions per block,
the stem and the classifier). He et al.'s depths have fixed block counts
(:data:`BOTTLENECK_LAYERS`); the thesis does not list the per-stage blocks of
ResNet-338 and ResNet-638, so any other depth adds its extra blocks to res4
(the stage ResNet-101 and -152 deepen) of the largest tabulated depth below
it: ResNet-338 is ``[3, 24, 82, 3]``, ResNet-638 ``[3, 24, 182, 3]``. Give
``layers`` to choose the split yourself.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

#: He et al.'s bottleneck ResNets (ResNet-200: "Identity mappings in deep residual networks", 2016).
BOTTLENECK_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3),
}
#: Options passed on to torchvision's ResNet (ResNeXt: ``groups=32, width_per_group=8``).
RESNET_OPTIONS = ("groups", "width_per_group", "zero_init_residual")


def bottleneck_layers(depth: int) -> tuple[int, int, int, int]:
    """Blocks per stage of a bottleneck ResNet-``depth`` (see the module
    docstring for depths He et al. did not tabulate)."""
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ValueError(f"resnet depth must be an integer (50, 101, 152, 200, 338, 638, ...); got {depth!r}")
    if depth in BOTTLENECK_LAYERS:
        return BOTTLENECK_LAYERS[depth]
    if not is_bottleneck_depth(depth):
        raise ValueError(f"a bottleneck ResNet has depth 3·(blocks) + 2 >= 50 (50, 101, 152, 200, 338, 638, ...); "
                         f"got {depth}; give layers=[n2, n3, n4, n5] for another split")
    base = max(d for d in BOTTLENECK_LAYERS if d < depth)
    n2, n3, n4, n5 = BOTTLENECK_LAYERS[base]
    return n2, n3, n4 + (depth - base) // 3, n5


def is_bottleneck_depth(depth: int) -> bool:
    """Whether a bottleneck ResNet of ``depth`` layers exists (3·blocks + 2, at least ResNet-50)."""
    return depth in BOTTLENECK_LAYERS or (depth > 50 and (depth - 2) % 3 == 0)


def _check_layers(layers: Any) -> tuple[int, ...]:
    ok = isinstance(layers, (list, tuple)) and len(layers) == 4 and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in layers)
    if not ok:
        raise ValueError(f"layers must be four block counts >= 1, one per stage (res2..res5), e.g. [3, 4, 23, 3]; "
                         f"got {layers!r}")
    return tuple(layers)


def bottleneck_resnet(depth: int | None = None, *, layers: Sequence[int] | None = None, in_channels: int = 3,
                      num_classes: int = 1000, **options: Any) -> nn.Module:
    """torchvision's ``ResNet(Bottleneck, layers)`` with ``layers`` given or
    derived from ``depth`` (default 50), a stem for ``in_channels`` channels
    and ``num_classes`` logits. Expects normalized input: ``create_model``
    puts the ``Normalize`` layer in front."""
    from torchvision.models.resnet import Bottleneck, ResNet

    unknown = sorted(set(options) - set(RESNET_OPTIONS))
    if unknown:
        raise ValueError(f"resnet: unknown option(s) {unknown}; it takes depth or layers, "
                         f"{', '.join(RESNET_OPTIONS)}")
    if layers is not None:
        blocks = _check_layers(layers)
        if depth is not None and depth != 3 * sum(blocks) + 2:
            raise ValueError(f"resnet: layers {list(blocks)} make ResNet-{3 * sum(blocks) + 2}, not depth {depth}; "
                             "give one of the two")
    else:
        blocks = bottleneck_layers(50 if depth is None else depth)
    net = ResNet(Bottleneck, list(blocks), num_classes=num_classes, **options)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net
