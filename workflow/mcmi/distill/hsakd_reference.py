"""HSAKD's auxiliary heads as its reference defines them per architecture (winycg/HSAKD ``models/``).

The reference builds each ``*_aux`` network's ``Auxiliary_Classifier`` from the backbone's own
blocks; these builders make the same layers (so the same parameter counts) from the zoo's blocks:

- CIFAR ResNets (``models/resnet.py``: resnet20_aux, resnet56_aux, resnet8x4_aux, resnet32x4_aux):
  on f1, f2, f3 (the stage outputs), extractor 1 = stage-2 and stage-3 layers (n basic blocks each,
  stride 2), extractor 2 = a stage-3 layer (stride 2), extractor 3 = a stage-3-width layer (stride 1);
  then global average pooling and one linear layer each to 4·C.
- Wide ResNets (``models/wrn.py``: wrn_40_2_aux, wrn_40_1_aux, wrn_16_2_aux): the same pattern with
  wide blocks (NetworkBlock), then BN-ReLU (its own BN per head), pooling, linear.
- VGGs with BN (``models/vgg.py``: vgg13_bn_aux, vgg8_bn_aux): four heads on f0, f1, f2 and the
  block-4 output; each head max-pools and runs the later conv blocks (ReLU after each), the last
  head re-runs block-3 and block-4 widths on the 512-channel map; pooling; linear 512 -> 4·C.
- ShuffleV1 (``models/ShuffleNetv1.py``), ShuffleV2 (``models/ShuffleNetv2.py``), MobileNetV2
  (``models/mobilenetv2.py``, mobilenetV2_aux) and ResNet50 (``models/resnetv2.py``, ResNet50_aux):
  see the builders' docstrings. The reference's
  MobileNetV2 has a stride-1 stem where the zoo's (RepDistiller's) has stride 2: the heads' layers
  and parameters are the same, their maps are half the size.

Every other model (resnet110, resnet32, resnet14, ImageNet models, ...) gets the generic heads
(``hsakd.AuxiliaryHeads``), and every run records which kind it used.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from mcmi.distill._common import init_heads
from mcmi.models.mobilenetv2 import InvertedResidual
from mcmi.models.resnet import BasicBlock
from mcmi.models.resnetv2 import Bottleneck
from mcmi.models.shufflenetv1 import ShuffleUnit
from mcmi.models.shufflenetv2 import BasicUnit, DownUnit
from mcmi.models.vgg import _CONFIGS as VGG_CONFIGS
from mcmi.models.vgg import _make_block as vgg_block
from mcmi.models.wrn import WideStage

HSAKD_NUM_ROTATIONS = 4


class ReferenceHeads(nn.Module):
    """Heads ``extractors[i]`` on ``stages[stage_ids[i]]``, each followed by global average pooling
    and ``classifiers[i]`` (width -> 4·C)."""

    kind = "reference"

    def __init__(self, extractors: list[nn.Module], stage_ids: list[int], width: int, num_classes: int) -> None:
        super().__init__()
        self.extractors = nn.ModuleList(extractors)
        self.stage_ids = list(stage_ids)
        self.classifiers = nn.ModuleList(nn.Linear(width, HSAKD_NUM_ROTATIONS * num_classes) for _ in extractors)
        init_heads(self)

    @property
    def num_heads(self) -> int:
        return len(self.extractors)

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """``stages`` is the model's full ``Features.stages``; one (N, 4·C) per head."""
        out = []
        for extractor, classifier, index in zip(self.extractors, self.classifiers, self.stage_ids):
            out.append(classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(extractor(stages[index]), 1), 1)))
        return out


def _resnet_layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_planes, planes, stride), *[BasicBlock(planes, planes, 1) for _ in range(blocks - 1)])


def resnet_heads(num_classes: int, depth: int, widths: tuple[int, int, int, int]) -> ReferenceHeads:
    """``models/resnet.py`` ``Auxiliary_Classifier`` (basic blocks, n = (depth − 2) / 6)."""
    n = (depth - 2) // 6
    _, c1, c2, c3 = widths
    extractors = [
        nn.Sequential(_resnet_layer(c1, c2, n, 2), _resnet_layer(c2, c3, n, 2)),
        _resnet_layer(c2, c3, n, 2),
        _resnet_layer(c3, c3, n, 1),
    ]
    return ReferenceHeads(extractors, [1, 2, 3], c3, num_classes)


def wrn_heads(num_classes: int, depth: int, widen: int) -> ReferenceHeads:
    """``models/wrn.py`` ``Auxiliary_Classifier``: NetworkBlocks, then BN-ReLU per head."""
    n = (depth - 4) // 6
    c1, c2, c3 = 16 * widen, 32 * widen, 64 * widen

    def tail() -> list[nn.Module]:
        return [nn.BatchNorm2d(c3), nn.ReLU(inplace=True)]

    extractors = [
        nn.Sequential(WideStage(n, c1, c2, 2), WideStage(n, c2, c3, 2), *tail()),
        nn.Sequential(WideStage(n, c2, c3, 2), *tail()),
        nn.Sequential(WideStage(n, c3, c3, 1), *tail()),
    ]
    return ReferenceHeads(extractors, [1, 2, 3], c3, num_classes)


def vgg_heads(num_classes: int, config: tuple[tuple[int, ...], ...]) -> ReferenceHeads:
    """``models/vgg.py`` ``Auxiliary_Classifier`` (batch-norm VGG, 32×32 inputs): four heads."""

    def blocks(first: int, last: int) -> list[nn.Module]:
        """Max-pool before blocks 1..3 (as the backbone), conv block k, ReLU, for k = first..last."""
        layers: list[nn.Module] = []
        for k in range(first, last + 1):
            if k <= 3:
                layers.append(nn.MaxPool2d(2, 2))
            layers += [vgg_block(config[k - 1][-1], config[k]), nn.ReLU(inplace=True)]
        return layers

    extractors = [
        nn.Sequential(*blocks(1, 4)),
        nn.Sequential(*blocks(2, 4)),
        nn.Sequential(*blocks(3, 4)),
        nn.Sequential(vgg_block(config[4][-1], config[3]), nn.ReLU(inplace=True),
                      vgg_block(config[3][-1], config[4]), nn.ReLU(inplace=True)),
    ]
    return ReferenceHeads(extractors, [0, 1, 2, 4], config[4][-1], num_classes)


def shufflev1_heads(num_classes: int, widths: tuple[int, int, int] = (240, 480, 960),
                    blocks: tuple[int, int, int] = (4, 8, 4), groups: int = 3) -> ReferenceHeads:
    """``models/ShuffleNetv1.py`` ``Auxiliary_Classifier``: the later stages' shuffle units (a
    stride-2 concatenating unit first) on f1, f2; on f3 ``blocks[2]`` stride-1 units at full width."""

    def stage(in_planes: int, width: int, num_blocks: int) -> nn.Sequential:
        units = [ShuffleUnit(in_planes, width - in_planes, 2, groups)]
        return nn.Sequential(*units, *[ShuffleUnit(width, width, 1, groups) for _ in range(num_blocks - 1)])

    c1, c2, c3 = widths
    extractors = [
        nn.Sequential(stage(c1, c2, blocks[1]), stage(c2, c3, blocks[2])),
        stage(c2, c3, blocks[2]),
        nn.Sequential(*[ShuffleUnit(c3, c3, 1, groups) for _ in range(blocks[2])]),
    ]
    return ReferenceHeads(extractors, [1, 2, 3], c3, num_classes)


def shufflev2_heads(num_classes: int, widths: tuple[int, int, int] = (116, 232, 464),
                    blocks: tuple[int, int, int] = (3, 7, 3), head: int = 1024) -> ReferenceHeads:
    """``models/ShuffleNetv2.py`` ``Auxiliary_Classifier``: later stages (down unit + basic units),
    the last head's down unit at stride 1; each head ends with 1×1 conv to ``head``, BN, ReLU."""

    def stage(in_channels: int, width: int, num_blocks: int, stride: int = 2) -> list[nn.Module]:
        return [DownUnit(in_channels, width, stride), *[BasicUnit(width) for _ in range(num_blocks)]]

    def tail() -> list[nn.Module]:
        return [nn.Conv2d(widths[2], head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU(inplace=True)]

    c1, c2, c3 = widths
    extractors = [
        nn.Sequential(*stage(c1, c2, blocks[1]), *stage(c2, c3, blocks[2]), *tail()),
        nn.Sequential(*stage(c2, c3, blocks[2]), *tail()),
        nn.Sequential(*stage(c3, c3, blocks[2], stride=1), *tail()),
    ]
    return ReferenceHeads(extractors, [1, 2, 3], head, num_classes)


def mobilenetv2_heads(num_classes: int, expansion: int = 6, width_mult: float = 0.5) -> ReferenceHeads:
    """``models/mobilenetv2.py`` ``Auxiliary_Classifier`` (T 6, width 0.5): on f1..f4 (12, 16, 48,
    160 channels) the later inverted-residual groups (the last head: (160, 3, stride 1), (320, 1, 1));
    each head ends with 1×1 conv to 1280, BN, ReLU."""
    settings = [  # (channels before width scaling, blocks, first stride) per head
        [(32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)],
        [(64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)],
        [(160, 3, 2), (320, 1, 1)],
        [(160, 3, 1), (320, 1, 1)],
    ]
    inputs = [int(c * width_mult) for c in (24, 32, 96, 320)]   # 12, 16, 48, 160
    last = int(320 * width_mult)
    extractors = []
    for in_channels, setting in zip(inputs, settings):
        layers: list[nn.Module] = []
        for channels, num_blocks, first_stride in setting:
            out_channels = int(channels * width_mult)
            for stride in [first_stride] + [1] * (num_blocks - 1):
                layers.append(InvertedResidual(in_channels, out_channels, stride, expansion))
                in_channels = out_channels
        layers += [nn.Conv2d(last, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU(inplace=True)]
        extractors.append(nn.Sequential(*layers))
    return ReferenceHeads(extractors, [1, 2, 3, 4], 1280, num_classes)


def resnet50_heads(num_classes: int, blocks: tuple[int, int, int, int] = (3, 4, 6, 3)) -> ReferenceHeads:
    """``models/resnetv2.py`` ``Auxiliary_Classifier`` (ResNet50_aux): on f1..f4 the later stages of
    bottleneck blocks (stride 2 first), the last head a stride-1 stage of width 512·4; linear 2048 -> 4·C."""

    def layer(in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        units = [Bottleneck(in_planes, planes, stride)]
        return nn.Sequential(*units, *[Bottleneck(4 * planes, planes, 1) for _ in range(num_blocks - 1)])

    extractors = [
        nn.Sequential(layer(256, 128, blocks[1], 2), layer(512, 256, blocks[2], 2), layer(1024, 512, blocks[3], 2)),
        nn.Sequential(layer(512, 256, blocks[2], 2), layer(1024, 512, blocks[3], 2)),
        layer(1024, 512, blocks[3], 2),
        layer(2048, 512, blocks[3], 1),
    ]
    return ReferenceHeads(extractors, [1, 2, 3, 4], 2048, num_classes)


# Model name -> builder(num_classes), exactly the ``*_aux`` networks of the reference's CIFAR models.
REFERENCE_HEADS: dict[str, Callable[[int], ReferenceHeads]] = {
    "resnet20": partial(resnet_heads, depth=20, widths=(16, 16, 32, 64)),
    "resnet56": partial(resnet_heads, depth=56, widths=(16, 16, 32, 64)),
    "resnet8x4": partial(resnet_heads, depth=8, widths=(32, 64, 128, 256)),
    "resnet32x4": partial(resnet_heads, depth=32, widths=(32, 64, 128, 256)),
    "wrn_40_2": partial(wrn_heads, depth=40, widen=2),
    "wrn_40_1": partial(wrn_heads, depth=40, widen=1),
    "wrn_16_2": partial(wrn_heads, depth=16, widen=2),
    "vgg13": partial(vgg_heads, config=VGG_CONFIGS["vgg13"]),
    "vgg8": partial(vgg_heads, config=VGG_CONFIGS["vgg8"]),
    "ShuffleV1": shufflev1_heads,
    "ShuffleV2": shufflev2_heads,
    "MobileNetV2": mobilenetv2_heads,
    "ResNet50": resnet50_heads,
}
