"""RepDistiller's CIFAR MobileNetV2 (``mobile_half``: width 0.5, expansion 6), named ``MobileNetV2``.

Module names: conv1.{0,1}, blocks.{i}.{j}.conv.{k}, conv2.{0,1}, classifier.0. Features as
RepDistiller: f0 = conv1 output (stride 2, post-ReLU); f1..f4 = outputs of block groups 1, 2, 4, 6
(the last group at each resolution). Those end in a linear BN, so the pre-activation list equals
the feature list (RepDistiller ignores ``preact`` here).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from mcmi.models.base import Features, ZooModel
from mcmi.models.blocks import global_avg_pool, init_conv_bn

# (expansion, output channels before width scaling, blocks, first stride); expansion None = model's.
_GROUPS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
_STAGE_ENDS = (1, 2, 4, 6)  # block groups whose outputs are f1..f4
_LAST_CHANNELS = 1280


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, linear 1x1 project; residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + x if self.use_residual else out


class CifarMobileNetV2(ZooModel):
    """MobileNetV2 with a stride-2 stem for 32x32 inputs (final map 2x2)."""

    def __init__(self, num_classes: int, expansion: int, width_mult: float) -> None:
        super().__init__()
        in_channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for group_expansion, channels, num_blocks, first_stride in _GROUPS:
            out_channels = int(channels * width_mult)
            group = []
            for stride in [first_stride] + [1] * (num_blocks - 1):
                block_expansion = group_expansion or expansion
                group.append(InvertedResidual(in_channels, out_channels, stride, block_expansion))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        last_channels = int(_LAST_CHANNELS * width_mult) if width_mult > 1.0 else _LAST_CHANNELS
        self.conv2 = _conv_bn_relu(in_channels, last_channels, 1, stride=1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        init_conv_bn(self)
        nn.init.normal_(self.classifier[0].weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)

    def extract(self, x: torch.Tensor) -> Features:
        out = self.conv1(x)
        stages = [out]
        for index, group in enumerate(self.blocks):
            out = group(out)
            if index in _STAGE_ENDS:
                stages.append(out)
        pooled = global_avg_pool(self.conv2(out))
        return Features(stages, list(stages), pooled, self.classifier(pooled))


BUILDERS = {"MobileNetV2": partial(CifarMobileNetV2, expansion=6, width_mult=0.5)}
