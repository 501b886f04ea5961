"""Tung & Mori (2019), "Similarity-Preserving Knowledge Distillation"."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, register
from mcmi.models.base import Features


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """Row-L2-normalised batch Gram matrix G = normalise_rows(Q Qᵀ), Q the flattened features."""
    q = f.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


@register
class SP(DistillMethod):
    """Similarity preservation on the last stage map (``stages[-1]``, RepDistiller's ``feat[-2]``).

    L = ce_weight · CE + gamma · ‖G_s − G_t‖_F² / B², G as in ``similarity_matrix``.

    Reference: RepDistiller ``distiller_zoo/SP.py`` and ``train_student.py`` (gamma 3000); the
    paper and the reference agree.
    """

    name: ClassVar[str] = "SP"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0, "gamma": 3000.0}

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        batch_size = s.stages[-1].shape[0]
        diff = similarity_matrix(s.stages[-1]) - similarity_matrix(t.stages[-1])
        return {"sp": self.hparams["gamma"] * diff.pow(2).sum() / batch_size**2}
