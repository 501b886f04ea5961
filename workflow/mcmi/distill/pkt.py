"""Passalis & Tefas (2018), "Learning Deep Representations with Probabilistic Knowledge Transfer"."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, register
from mcmi.models.base import Features


def cosine_conditional(f: torch.Tensor, eps: float) -> torch.Tensor:
    """P[i, j] ∝ (1 + cos(f_i, f_j)) / 2, each row normalised to sum to one."""
    unit = f / (f.norm(dim=1, keepdim=True) + eps)
    affinity = (unit @ unit.t() + 1.0) / 2.0
    return affinity / affinity.sum(dim=1, keepdim=True)


@register
class PKT(DistillMethod):
    """Probabilistic knowledge transfer on the pooled features.

    With P_s, P_t from ``cosine_conditional``,
    L = ce_weight · CE + gamma · mean_{i,j} P_t[i,j] · log((P_t[i,j] + eps) / (P_s[i,j] + eps)).

    Reference: RepDistiller ``distiller_zoo/PKT.py`` (the authors' code) and ``train_student.py``
    (gamma 30000, eps 1e-7). The mean over all B² entries (not a per-row sum) is the reference's
    reduction; the paper's KL sums, a constant factor absorbed by gamma.
    """

    name: ClassVar[str] = "PKT"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0, "gamma": 30000.0, "eps": 1e-7}

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        eps = float(self.hparams["eps"])
        p_s = cosine_conditional(s.pooled, eps)
        p_t = cosine_conditional(t.pooled, eps)
        loss = (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()
        return {"pkt": self.hparams["gamma"] * loss}
