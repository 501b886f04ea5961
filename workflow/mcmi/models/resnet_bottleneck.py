"""RepDistiller's CIFAR ``ResNet50``: bottleneck blocks [3, 4, 6, 3], 3x3 stem without max-pool.

Module names: conv1, bn1, layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut.0/1}, linear.
Features: f0 = ReLU(bn1(conv1(x))), f1..f4 = stage outputs; pre-activations are the last blocks'
sums before the final ReLU.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.models.base import Features, ZooModel
from mcmi.models.blocks import PreactBlock, global_avg_pool, init_conv_bn, run_stage

_EXPANSION = 4


class Bottleneck(PreactBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus an identity or projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * _EXPANSION
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


class CifarBottleneckResNet(ZooModel):
    """Four stages of bottleneck blocks (64, 128, 256, 512 planes; x4 outputs)."""

    def __init__(self, num_classes: int, blocks_per_stage: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            strides = [1 if index == 0 else 2] + [1] * (num_blocks - 1)
            blocks = []
            for stride in strides:
                blocks.append(Bottleneck(in_planes, planes, stride))
                in_planes = planes * _EXPANSION
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(in_planes, num_classes)
        init_conv_bn(self)

    def extract(self, x: torch.Tensor) -> Features:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, preacts = [out], [out]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out, preact = run_stage(stage, out)
            stages.append(out)
            preacts.append(preact)
        pooled = global_avg_pool(out)
        return Features(stages, preacts, pooled, self.linear(pooled))


BUILDERS = {"ResNet50": partial(CifarBottleneckResNet, blocks_per_stage=(3, 4, 6, 3))}
