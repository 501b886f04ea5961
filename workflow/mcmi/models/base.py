"""The one feature interface every model of the zoo exposes to the KD methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Features:
    """Everything a distillation method may read from one forward pass.

    stages:        [f0, f1, ..., fk] -- the stem output and each stage's output (post-activation),
                   as RepDistiller's ``feat[:-1]``.
    preact_stages: the same positions taken before the stage's last ReLU (equal to ``stages`` where
                   the architecture has none there), as RepDistiller's ``preact=True``.
    pooled:        (B, D) globally pooled, flattened feature that the classifier reads.
    logits:        (B, num_classes).
    """

    stages: list[torch.Tensor]
    preact_stages: list[torch.Tensor]
    pooled: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class FeatureShapes:
    """Per-sample shapes of a model's Features, found by a probe forward pass."""

    stages: tuple[tuple[int, ...], ...]
    preact_stages: tuple[tuple[int, ...], ...]
    pooled_dim: int
    num_classes: int


class ZooModel(nn.Module):
    """Base class: subclasses implement ``extract``; ``forward`` returns logits only."""

    def extract(self, x: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(x).logits


@torch.no_grad()
def probe_shapes(model: ZooModel, input_shape: tuple[int, ...]) -> FeatureShapes:
    """Run one tiny forward pass (batch of 2, eval mode) and record the feature shapes."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = model.extract(torch.zeros(2, *input_shape, device=device))
    model.train(was_training)
    return FeatureShapes(
        stages=tuple(tuple(f.shape[1:]) for f in out.stages),
        preact_stages=tuple(tuple(f.shape[1:]) for f in out.preact_stages),
        pooled_dim=int(out.pooled.shape[1]),
        num_classes=int(out.logits.shape[1]),
    )
