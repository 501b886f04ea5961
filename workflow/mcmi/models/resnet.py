"""CIFAR ResNets with basic blocks (resnet8 ... resnet110, resnet152, resnet8x4, resnet32x4).

Module names follow RepDistiller (conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample.0/1},
fc), so its checkpoints load unchanged. Features: f0 = ReLU(bn1(conv1(x))), f1..f3 = each stage's
output; the pre-activation of a stage is its last block's sum before the final ReLU.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.models.base import Features, ZooModel
from mcmi.models.blocks import PreactBlock, global_avg_pool, init_conv_bn, run_stage


class BasicBlock(PreactBlock):
    """Two 3x3 convolutions plus an identity or 1x1-projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        preact = self.bn2(self.conv2(out)) + self.downsample(x)
        return F.relu(preact), preact


class CifarResNet(ZooModel):
    """ResNet of depth 6n+2 with three stages of n basic blocks; ``widths`` = (stem, stage1..3)."""

    def __init__(self, num_classes: int, depth: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_stage(widths[0], widths[1], blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(widths[2], widths[3], blocks_per_stage, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def extract(self, x: torch.Tensor) -> Features:
        f0 = F.relu(self.bn1(self.conv1(x)), inplace=True)
        f1, pre1 = run_stage(self.layer1, f0)
        f2, pre2 = run_stage(self.layer2, f1)
        f3, pre3 = run_stage(self.layer3, f2)
        pooled = global_avg_pool(f3)
        return Features([f0, f1, f2, f3], [f0, pre1, pre2, pre3], pooled, self.fc(pooled))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

BUILDERS = {
    "resnet8": partial(CifarResNet, depth=8, widths=_NARROW),
    "resnet14": partial(CifarResNet, depth=14, widths=_NARROW),
    "resnet20": partial(CifarResNet, depth=20, widths=_NARROW),
    "resnet32": partial(CifarResNet, depth=32, widths=_NARROW),
    "resnet44": partial(CifarResNet, depth=44, widths=_NARROW),
    "resnet56": partial(CifarResNet, depth=56, widths=_NARROW),
    "resnet110": partial(CifarResNet, depth=110, widths=_NARROW),
    # Not in RepDistiller: the MCMI authors' own (ICLRMCMI models/resnet.py, resnet152), 25 blocks a stage,
    # the largest teacher of their teacher-size sweep (Figure 5).
    "resnet152": partial(CifarResNet, depth=152, widths=_NARROW),
    "resnet8x4": partial(CifarResNet, depth=8, widths=_WIDE),
    "resnet32x4": partial(CifarResNet, depth=32, widths=_WIDE),
}
