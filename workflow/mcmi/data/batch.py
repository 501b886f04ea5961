"""A batch of samples with their dataset indices."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Inputs ``x`` (normalised float), labels ``y`` (int64) and dataset indices ``index`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])
