"""Building pieces shared by several architecture families."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class PreactBlock(nn.Module):
    """A residual-style block whose output is ``relu(preact)`` and that can also return ``preact``.

    Subclasses implement ``forward_with_preact``; they may override ``forward`` where producing
    the pre-activation costs extra work.
    """

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(output, pre-activation output)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


PreactForward = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _preact_block_forward(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return block.forward_with_preact(x)


def run_stage(
    stage: nn.Sequential, x: torch.Tensor, last_block_forward: PreactForward = _preact_block_forward
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a stage of blocks; return its output and its last block's pre-activation output.

    ``last_block_forward(block, x)`` runs the last block giving both; by default the block's own
    ``PreactBlock.forward_with_preact``.
    """
    *leading, last = stage
    for block in leading:
        x = block(x)
    return last_block_forward(last, x)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: (N, g*c, H, W) -> interleave the g groups channel-wise."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def init_conv_bn(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions with zero bias, unit/zero batch norms (RepDistiller's init)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): the mean over all spatial positions."""
    return x.mean(dim=(2, 3))
