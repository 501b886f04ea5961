"""Hinton et al. (2015), "Distilling the Knowledge in a Neural Network"."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mcmi.data.batch import Batch
from mcmi.distill._common import kd_loss
from mcmi.distill.base import DistillMethod, register
from mcmi.models.base import Features


@register
class KD(DistillMethod):
    """Vanilla knowledge distillation on softened logits.

    L = ce_weight · CE + alpha · T² · mean_batch KL(softmax(z_t/T) || softmax(z_s/T)).

    Reference: RepDistiller ``distiller_zoo/KD.py`` (``DistillKL``: summed KL divided by the batch
    size, times T²) with ``train_student.py``'s weights 0.1 (CE) and 0.9 (KL), T = 4. The paper and
    the reference agree.
    """

    name: ClassVar[str] = "KD"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 0.1, "alpha": 0.9, "T": 4.0}
    positive: ClassVar[tuple[str, ...]] = ("T",)

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        loss = kd_loss(s.logits, t.logits, float(self.hparams["T"]))
        return {"kd": self.hparams["alpha"] * loss}
