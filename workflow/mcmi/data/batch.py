"""A batch of samples with their dataset indices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Batch:
    """Inputs ``x`` (normalised float), labels ``y`` (int64) and dataset indices ``index`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    _derived: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def derived(self, name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``make(x)`` computed once per batch (e.g. HSAKD's rotated copies): every student of a group
        gets the same tensor, so the shared teacher's forward pass on it is computed once too."""
        if name not in self._derived:
            self._derived[name] = make(self.x)
        return self._derived[name]
