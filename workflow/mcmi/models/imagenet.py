"""torchvision's ImageNet models (resnet18, resnet34, resnet50, mobilenet_v2) with ``extract``.

They subclass torchvision's classes, so torchvision state dicts load unchanged (no weights are
downloaded here). Any input of at least 32x32 works.

Feature choices:
- ResNet: f0 = ReLU(bn1(conv1(x))) *before* the max-pool (stride 2), f1..f4 = layer1..4 outputs;
  pre-activations are the last blocks' residual sums before their final ReLU.
- MobileNetV2: f0 = features[0] (stride 2), f1..f4 = outputs of features[3], [6], [13], [17] -- the
  last block at strides 4, 8, 16, 32 (as in the CIFAR MobileNetV2); these end in a linear BN, so
  the pre-activation list equals the feature list. The pooled feature follows the 1x1 head conv.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenetv2 as tv_mobilenetv2
from torchvision.models import resnet as tv_resnet

from mcmi.models.base import Features, ZooModel
from mcmi.models.blocks import global_avg_pool, run_stage


def _last_block_with_preact(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's block forward, also returning the residual sum before the final ReLU."""
    shortcut = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, tv_resnet.Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        preact = block.bn3(block.conv3(out)) + shortcut
    else:
        preact = block.bn2(block.conv2(out)) + shortcut
    return F.relu(preact), preact


class TorchvisionResNet(ZooModel, tv_resnet.ResNet):
    """torchvision ResNet exposing stem and stage features."""

    def __init__(
        self,
        num_classes: int,
        block: type[tv_resnet.BasicBlock | tv_resnet.Bottleneck],
        layers: tuple[int, int, int, int],
    ) -> None:
        super().__init__(block, list(layers), num_classes=num_classes)

    def extract(self, x: torch.Tensor) -> Features:
        stem = self.relu(self.bn1(self.conv1(x)))
        out = self.maxpool(stem)
        stages, preacts = [stem], [stem]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out, preact = run_stage(stage, out, _last_block_with_preact)
            stages.append(out)
            preacts.append(preact)
        pooled = global_avg_pool(out)
        return Features(stages, preacts, pooled, self.fc(pooled))


_MOBILENET_STAGE_ENDS = (0, 3, 6, 13, 17)  # indices into ``features`` giving f0..f4


class TorchvisionMobileNetV2(ZooModel, tv_mobilenetv2.MobileNetV2):
    """torchvision MobileNetV2 (width 1.0) exposing stem and per-resolution features."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes=num_classes)

    def extract(self, x: torch.Tensor) -> Features:
        stages = []
        out = x
        for index, module in enumerate(self.features):
            out = module(out)
            if index in _MOBILENET_STAGE_ENDS:
                stages.append(out)
        pooled = global_avg_pool(out)
        return Features(stages, list(stages), pooled, self.classifier(pooled))


BUILDERS = {
    "resnet18": partial(TorchvisionResNet, block=tv_resnet.BasicBlock, layers=(2, 2, 2, 2)),
    "resnet34": partial(TorchvisionResNet, block=tv_resnet.BasicBlock, layers=(3, 4, 6, 3)),
    "resnet50": partial(TorchvisionResNet, block=tv_resnet.Bottleneck, layers=(3, 4, 6, 3)),
    "mobilenet_v2": TorchvisionMobileNetV2,
}
