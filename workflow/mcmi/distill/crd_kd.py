"""CRD combined with Hinton's KD, as in Tian et al. (2019), "CRD+KD"."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mcmi.data.batch import Batch
from mcmi.distill._common import kd_loss
from mcmi.distill.base import register
from mcmi.distill.crd import CRD
from mcmi.models.base import Features


@register
class CRDKD(CRD):
    """CRD plus the softened-logit KL term.

    L = ce_weight · CE + kd_weight · T² · KL(softmax(z_t/T) || softmax(z_s/T)) + weight · L_CRD,
    with L_CRD exactly as in ``CRD`` (same embeddings, memory banks and NCE).

    Reference: RepDistiller ``train_student.py --distill crd -r 1 -a 1 -b 0.8`` (CE 1, KD 1,
    CRD 0.8) with ``--kd_T 4``, the combination the CRD paper reports as "CRD+KD".
    """

    name: ClassVar[str] = "CRD+KD"
    defaults: ClassVar[dict[str, Any]] = {**CRD.defaults, "kd_weight": 1.0, "T": 4.0}
    positive: ClassVar[tuple[str, ...]] = (*CRD.positive, "T")

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        terms = super().distill(s, t, batch, epoch)
        kd = kd_loss(s.logits, t.logits, float(self.hparams["T"]))
        terms["kd"] = self.hparams["kd_weight"] * kd
        return terms
