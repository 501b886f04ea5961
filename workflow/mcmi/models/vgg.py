"""CIFAR VGGs with batch norm and a single linear classifier (vgg8, vgg11, vgg13, vgg16, vgg19).

Module names follow RepDistiller: block{0..4}.{idx} (conv, BN, ReLU, ..., conv, BN -- each block
ends at a BN), classifier. Features as RepDistiller: f0 = ReLU(block0(x)) (also the f0 of the
pre-activation list), f1..f4 = ReLU(block_k(.)) with pre-activations block_k(.) before that ReLU.
A 2x2 max-pool follows blocks 0-2; the one after block 3 is applied only to inputs of 64 pixels or
more (RepDistiller's Tiny-ImageNet case), so at 32x32 f3 and f4 are both 4x4.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.models.base import Features, ZooModel
from mcmi.models.blocks import global_avg_pool, init_conv_bn

_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}

_LARGE_INPUT = 64  # input height from which the fourth max-pool is applied


def _make_block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv3x3-BN-ReLU repeated, without the final ReLU."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class CifarVGG(ZooModel):
    """Five conv blocks separated by max-pools, global average pooling, one linear layer."""

    def __init__(self, num_classes: int, config: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        in_channels = 3
        for index, widths in enumerate(config):
            self.add_module(f"block{index}", _make_block(in_channels, widths))
            in_channels = widths[-1]
        self.classifier = nn.Linear(in_channels, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def extract(self, x: torch.Tensor) -> Features:
        pool_after_block3 = x.shape[2] >= _LARGE_INPUT
        f0 = F.relu(self.block0(x), inplace=True)
        stages, preacts = [f0], [f0]
        out = f0
        for index, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            if index < 3 or pool_after_block3:
                out = F.max_pool2d(out, 2)
            preact = block(out)
            out = F.relu(preact)
            stages.append(out)
            preacts.append(preact)
        pooled = global_avg_pool(out)
        return Features(stages, preacts, pooled, self.classifier(pooled))


BUILDERS = {name: partial(CifarVGG, config=config) for name, config in _CONFIGS.items()}
