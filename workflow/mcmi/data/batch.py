"""A batch of samples with their dataset indices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Batch:
    """Inputs ``x`` (normalised float), labels ``y`` (int64) and dataset indices ``index`` (int64).
    In a job of several processes a batch is this rank's rows of a global batch of ``global_size``
    samples (``None``: the batch is the whole batch)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    global_size: int | None = None
    _derived: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def derived(self, name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``make(x)`` computed once per batch (e.g. HSAKD's rotated copies): every student of a group
        gets the same tensor, so the shared teacher's forward pass on it is computed once too."""
        if name not in self._derived:
            self._derived[name] = make(self.x)
        return self._derived[name]

    def derived_tensors(self) -> list[torch.Tensor]:
        """The tensors :meth:`derived` has made so far."""
        return list(self._derived.values())
