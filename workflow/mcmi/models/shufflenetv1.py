"""RepDistiller's CIFAR ShuffleNet V1 (``ShuffleV1``: groups 3, widths 240/480/960, blocks 4/8/4).

Module names: conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3}, linear. Features:
f0 = ReLU(bn1(conv1(x))) with a 1x1 stem (32x32), f1..f3 = stage outputs (each stage starts with a
stride-2 block whose output concatenates the branch with the avg-pooled input); pre-activations are
the last blocks' sums before the final ReLU.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.models.base import Features, ZooModel
from mcmi.models.blocks import PreactBlock, channel_shuffle, global_avg_pool, run_stage

_STEM_CHANNELS = 24


class ShuffleUnit(PreactBlock):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; add (stride 1) or concat (stride 2)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        self.first_groups = 1 if in_planes == _STEM_CHANNELS else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride, 1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1)
        else:
            preact = out + x
        return F.relu(preact), preact


class ShuffleNetV1(ZooModel):
    """1x1 stem, three stages of shuffle units, global average pooling, linear classifier."""

    def __init__(
        self, num_classes: int, widths: tuple[int, int, int], blocks: tuple[int, int, int], groups: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        in_planes = _STEM_CHANNELS
        for index, (width, num_blocks) in enumerate(zip(widths, blocks)):
            # the stride-2 unit's branch produces width - in_planes; the pooled input fills the rest
            units = [ShuffleUnit(in_planes, width - in_planes, 2, groups)]
            units += [ShuffleUnit(width, width, 1, groups) for _ in range(num_blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*units))
            in_planes = width
        self.linear = nn.Linear(in_planes, num_classes)

    def extract(self, x: torch.Tensor) -> Features:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, preacts = [out], [out]
        for stage in (self.layer1, self.layer2, self.layer3):
            out, preact = run_stage(stage, out)
            stages.append(out)
            preacts.append(preact)
        pooled = global_avg_pool(out)
        return Features(stages, preacts, pooled, self.linear(pooled))


BUILDERS = {"ShuffleV1": partial(ShuffleNetV1, widths=(240, 480, 960), blocks=(4, 8, 4), groups=3)}
