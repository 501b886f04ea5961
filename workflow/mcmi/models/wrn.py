"""Wide ResNets for CIFAR (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2), pre-activation blocks.

Module names follow RepDistiller: conv1, block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut},
bn1, fc. Features as RepDistiller: f0 = conv1(x), f1..f3 = the raw stage outputs (the residual sums,
before any BN/ReLU); the pre-activation of stage k is that output passed through the *next* BN
(block{k+1}.layer.0.bn1, or the final bn1 for the last stage), without ReLU. Each such BN runs once
per pass: the next stage's first block reuses its result.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.models.base import Features, ZooModel
from mcmi.models.blocks import global_avg_pool, init_conv_bn


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; the shortcut is identity or a 1x1 conv of the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.convShortcut: nn.Conv2d | None = None  # RepDistiller's key name
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(x, self.bn1(x))

    def forward_normalized(self, x: torch.Tensor, x_normalized: torch.Tensor) -> torch.Tensor:
        """Forward given ``x`` and ``bn1(x)`` already computed."""
        activated = F.relu(x_normalized)
        out = self.conv2(F.relu(self.bn2(self.conv1(activated)), inplace=True))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class WideStage(nn.Module):
    """A sequence of wide blocks, held as ``layer`` (RepDistiller's NetworkBlock)."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        blocks = [WideBasicBlock(in_planes, out_planes, stride)]
        blocks += [WideBasicBlock(out_planes, out_planes, 1) for _ in range(num_blocks - 1)]
        self.layer = nn.Sequential(*blocks)

    @property
    def input_bn(self) -> nn.BatchNorm2d:
        """The BN the stage applies first to its input."""
        return self.layer[0].bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def forward_normalized(self, x: torch.Tensor, x_normalized: torch.Tensor) -> torch.Tensor:
        """Forward given ``x`` and ``input_bn(x)`` already computed."""
        first, *rest = self.layer
        out = first.forward_normalized(x, x_normalized)
        for block in rest:
            out = block(out)
        return out


class WideResNet(ZooModel):
    """WRN-depth-widen: three stages of (depth-4)/6 blocks, widths 16k, 32k, 64k."""

    def __init__(self, num_classes: int, depth: int, widen_factor: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        num_blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = WideStage(num_blocks, widths[0], widths[1], stride=1)
        self.block2 = WideStage(num_blocks, widths[1], widths[2], stride=2)
        self.block3 = WideStage(num_blocks, widths[2], widths[3], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def extract(self, x: torch.Tensor) -> Features:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        pre1 = self.block2.input_bn(f1)
        f2 = self.block2.forward_normalized(f1, pre1)
        pre2 = self.block3.input_bn(f2)
        f3 = self.block3.forward_normalized(f2, pre2)
        pre3 = self.bn1(f3)
        pooled = global_avg_pool(F.relu(pre3))
        return Features([f0, f1, f2, f3], [f0, pre1, pre2, pre3], pooled, self.fc(pooled))


BUILDERS = {
    "wrn_16_1": partial(WideResNet, depth=16, widen_factor=1),
    "wrn_16_2": partial(WideResNet, depth=16, widen_factor=2),
    "wrn_40_1": partial(WideResNet, depth=40, widen_factor=1),
    "wrn_40_2": partial(WideResNet, depth=40, widen_factor=2),
}
