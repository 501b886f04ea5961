"""RepDistiller's CIFAR ShuffleNet V2 (``ShuffleV2``: net size 1, widths 116/232/464, 1024 head).

Module names: conv1, bn1, layer{1,2,3}.0 = down-sampling unit {conv1..5,bn1..5},
layer{1,2,3}.{1..} = basic units {conv1..3,bn1..3}, conv2, bn2, linear. Features: f0 =
ReLU(bn1(conv1(x))) with a 1x1 stem (32x32), f1..f3 = stage outputs (shuffled); the pre-activation
of a stage is, as in RepDistiller, its last unit's concatenation [passed-through half, branch before
its final ReLU], *not* channel-shuffled. The pooled feature is taken after the 1x1 head conv.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.models.base import Features, ZooModel
from mcmi.models.blocks import PreactBlock, channel_shuffle, global_avg_pool, run_stage

_STEM_CHANNELS = 24


class BasicUnit(PreactBlock):
    """Split channels in half; transform the second half (1x1, depthwise 3x3, 1x1); concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def _split_and_branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the passed-through half and the transformed half before its final ReLU."""
        half = x.shape[1] // 2
        kept, transformed = x[:, :half], x[:, half:]
        transformed = F.relu(self.bn1(self.conv1(transformed)), inplace=True)
        transformed = self.bn3(self.conv3(self.bn2(self.conv2(transformed))))
        return kept, transformed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, branch = self._split_and_branch(x)
        return channel_shuffle(torch.cat([kept, F.relu(branch, inplace=True)], dim=1), 2)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, branch = self._split_and_branch(x)
        out = channel_shuffle(torch.cat([kept, F.relu(branch)], dim=1), 2)
        return out, torch.cat([kept, branch], dim=1)


class DownUnit(nn.Module):
    """Two stride-2 branches over the full input, each giving half the output channels; shuffle.
    (``stride`` 1 only for HSAKD's reference auxiliary heads, which reuse this unit at full size.)"""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        half = out_channels // 2
        # left branch: depthwise 3x3 (stride 2), 1x1
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        # right branch: 1x1, depthwise 3x3 (stride 2), 1x1
        self.conv3 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = nn.Conv2d(half, half, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))), inplace=True)
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(ZooModel):
    """1x1 stem, three stages (down unit + basic units), 1x1 head conv, global pooling, linear."""

    def __init__(
        self, num_classes: int, widths: tuple[int, int, int], blocks: tuple[int, int, int], head: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        in_channels = _STEM_CHANNELS
        for index, (width, num_blocks) in enumerate(zip(widths, blocks)):
            units: list[nn.Module] = [DownUnit(in_channels, width)]
            units += [BasicUnit(width) for _ in range(num_blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*units))
            in_channels = width
        self.conv2 = nn.Conv2d(in_channels, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.linear = nn.Linear(head, num_classes)

    def extract(self, x: torch.Tensor) -> Features:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, preacts = [out], [out]
        for stage in (self.layer1, self.layer2, self.layer3):
            out, preact = run_stage(stage, out)
            stages.append(out)
            preacts.append(preact)
        pooled = global_avg_pool(F.relu(self.bn2(self.conv2(out)), inplace=True))
        return Features(stages, preacts, pooled, self.linear(pooled))


BUILDERS = {"ShuffleV2": partial(ShuffleNetV2, widths=(116, 232, 464), blocks=(3, 7, 3), head=1024)}
