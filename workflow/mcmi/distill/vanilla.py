"""The student baseline: cross-entropy only, no teacher signal."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, register
from mcmi.models.base import Features, ZooModel
from mcmi.objectives import StepOutput


@register
class Vanilla(DistillMethod):
    """Plain training of the student: loss = ce_weight · CE; the teacher is never run."""

    name: ClassVar[str] = "vanilla"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0}
    needs_teacher: ClassVar[bool] = False

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {}

    def step(self, student: ZooModel, teacher: ZooModel, batch: Batch, epoch: int) -> StepOutput:
        logits = student(batch.x)
        return StepOutput({"ce": self.hparams["ce_weight"] * F.cross_entropy(logits, batch.y)}, logits)
