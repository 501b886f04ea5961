"""RepDistiller's ``models/resnetv2.py`` family: four-stage CIFAR ResNets of 64, 128, 256, 512 planes
with a 3x3 stem and no max-pool -- ``ResNet18`` (basic blocks [2, 2, 2, 2]) and ``ResNet50``
(bottleneck blocks [3, 4, 6, 3], outputs x4).

Module names: conv1, bn1, layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3],shortcut.0/1}, linear --
RepDistiller's, so its checkpoints load unchanged. Distinct from ``resnet.py`` (the 3-stage
resnet8..resnet152, whose projection is named ``downsample``) and from torchvision's ImageNet
``resnet18``/``resnet50`` (7x7 stem, max-pool). Features: f0 = ReLU(bn1(conv1(x))), f1..f4 = stage
outputs; pre-activations are the last blocks' sums before the final ReLU.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.models.base import Features, ZooModel
from mcmi.models.blocks import PreactBlock, global_avg_pool, init_conv_bn, run_stage


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity, or a 1x1 strided projection with batch norm where the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlockV2(PreactBlock):
    """Two 3x3 convolutions (the first strided) plus the shortcut; expansion 1."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact


class Bottleneck(PreactBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


class CifarResNetV2(ZooModel):
    """Four stages of ``block`` (64, 128, 256, 512 planes, times the block's expansion)."""

    def __init__(self, num_classes: int, block: type[BasicBlockV2 | Bottleneck],
                 blocks_per_stage: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            strides = [1 if index == 0 else 2] + [1] * (num_blocks - 1)
            blocks = []
            for stride in strides:
                blocks.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
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


BUILDERS = {
    "ResNet18": partial(CifarResNetV2, block=BasicBlockV2, blocks_per_stage=(2, 2, 2, 2)),
    "ResNet50": partial(CifarResNetV2, block=Bottleneck, blocks_per_stage=(3, 4, 6, 3)),
}
