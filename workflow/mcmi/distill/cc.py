"""Peng et al. (2019), "Correlation Congruence for Knowledge Distillation"."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, PairContext, register
from mcmi.models.base import Features

FORMS = ("reference", "taylor_rbf")


def taylor_rbf_correlation(e: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """The paper's correlation matrix: a P-order Taylor expansion of the Gaussian RBF kernel.

    For unit vectors exp(−γ‖x − y‖²) = exp(−2γ) exp(2γ xᵀy) ≈ Σ_{p≤P} exp(−2γ) (2γ)^p / p! (xᵀy)^p.
    """
    unit = F.normalize(e, dim=1)
    cosine = unit @ unit.t()
    scale = math.exp(-2.0 * gamma)
    terms = [scale * (2.0 * gamma) ** p / math.factorial(p) * cosine.pow(p) for p in range(order + 1)]
    return torch.stack(terms).sum(dim=0)


@register
class CC(DistillMethod):
    """Correlation congruence on linearly embedded pooled features.

    Both pooled features pass through their own trainable ``nn.Linear(D, embed_dim)`` (teacher's
    included, as RepDistiller's ``LinearEmbed`` pair), optionally followed by L2 normalisation.

    ``form="reference"`` (default), RepDistiller ``distiller_zoo/CC.py`` ("code emailed by the
    original author") and ``train_student.py`` (gamma 0.02, embed 128): with δ_i = |e_s,i − e_t,i|,
    L = ce_weight · CE + gamma · mean_i Σ_k δ_i,k · δ_{i+1},k over consecutive batch samples.

    ``form="taylor_rbf"``, the paper's Eq. with the Taylor-expanded Gaussian RBF kernel:
    L = ce_weight · CE + gamma · mean_{i,j} (C_s − C_t)²_ij, C from ``taylor_rbf_correlation``
    (``rbf_gamma``, ``taylor_order``; the embeddings are unit-normalised inside the kernel).

    ``l2_normalize``: RepDistiller's ``LinearEmbed`` does *not* normalise, so the default is False.
    """

    name: ClassVar[str] = "CC"
    defaults: ClassVar[dict[str, Any]] = {
        "ce_weight": 1.0,
        "gamma": 0.02,
        "embed_dim": 128,
        "l2_normalize": False,
        "form": "reference",
        "rbf_gamma": 0.4,
        "taylor_order": 2,
    }
    positive: ClassVar[tuple[str, ...]] = ("embed_dim",)

    def __init__(self, ctx: PairContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        if self.hparams["form"] not in FORMS:
            raise ValueError(f"CC: form must be one of {FORMS}, got {self.hparams['form']!r}")
        dim = int(self.hparams["embed_dim"])
        self.embed_s = nn.Linear(ctx.student.pooled_dim, dim)
        self.embed_t = nn.Linear(ctx.teacher.pooled_dim, dim)

    def _embed(self, layer: nn.Linear, f: torch.Tensor) -> torch.Tensor:
        e = layer(f.flatten(1))
        return F.normalize(e, dim=1) if self.hparams["l2_normalize"] else e

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        e_s = self._embed(self.embed_s, s.pooled)
        e_t = self._embed(self.embed_t, t.pooled)
        if self.hparams["form"] == "reference":
            delta = (e_s - e_t).abs()
            loss = (delta[:-1] * delta[1:]).sum(dim=1).mean()
        else:
            gamma, order = float(self.hparams["rbf_gamma"]), int(self.hparams["taylor_order"])
            loss = F.mse_loss(
                taylor_rbf_correlation(e_s, gamma, order), taylor_rbf_correlation(e_t, gamma, order)
            )
        return {"cc": self.hparams["gamma"] * loss}
