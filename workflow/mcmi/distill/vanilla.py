"""The student baseline: cross-entropy only, no teacher signal."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, register
from mcmi.models.base import Features


@register
class Vanilla(DistillMethod):
    """Plain training of the student: loss = ce_weight · CE; ``distill`` adds nothing."""

    name: ClassVar[str] = "vanilla"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0}

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {}
