"""Small built-in networks for 8×8 to 32×32 data, trainable on a CPU.

Every net ends in global average pooling, so it accepts inputs larger than
its training size: the input-diversity transform (§3.4.1) pads images beyond
their size and, as in the thesis, is not resized back.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ConvBlock(nn.Module):
    """3×3 conv (no bias), BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    """Three stages of ``depth`` conv blocks (widths w, 2w, 4w; 2×2 max-pool
    between stages), global average pooling, linear head. With width 16 and
    depth 1 it reaches about 0.8 top-1 on Fashion-MNIST after one epoch on 10k
    images, in seconds on 2 cores.

    ``stages`` > 3 puts more stages of width w in front (widths w, …, w, 2w,
    4w), one more 2×2 pool each: the net for 4× larger inputs (``stages=5`` at
    112 px) ends on the same feature-map size and costs a few times, not 16
    times, the 28 px one (the ch. 3 resolution sweep)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, depth: int = 1,
                 stages: int = 3) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1; got width={width}, depth={depth}")
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 3:
            raise ValueError(f"stages must be a whole number >= 3; got {stages!r}")
        widths = (width,) * (stages - 2) + (2 * width, 4 * width)
        stages, cin = [], in_channels
        for i, w in enumerate(widths):
            blocks: list[nn.Module] = [nn.MaxPool2d(2)] if i else []
            for _ in range(depth):
                blocks.append(ConvBlock(cin, w))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs with BN, identity or 1×1 projection shortcut."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: 3×3 stem without max-pool, stages of basic
    blocks, global pooling (He et al.; the usual CIFAR ResNet-18 layout)."""

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"blocks and widths must have the same length; got {len(blocks)} and {len(widths)}")
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0]))
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, w, stride=2 if (j == 0 and i > 0) else 1))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))
