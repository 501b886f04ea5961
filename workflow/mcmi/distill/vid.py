"""Ahn et al. (2019), "Variational Information Distillation for Knowledge Transfer"."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.data.batch import Batch
from mcmi.distill._common import pool_to_smaller
from mcmi.distill.base import DistillMethod, PairContext, register
from mcmi.models.base import Features


class GaussianRegressor(nn.Module):
    """q(t | s) = N(μ(s), diag σ²): μ a 3-layer 1×1-conv net, σ² = softplus(ρ) + eps per channel."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_var: float, eps: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=False),
        )
        inverse_softplus = math.log(math.expm1(init_var - eps))  # softplus(ρ) + eps == init_var
        self.rho = nn.Parameter(torch.full((out_channels,), inverse_softplus))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        return F.softplus(self.rho) + self.eps

    def nll(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """Mean over all elements of ½((t − μ)²/σ² + log σ²) (the Gaussian NLL without ½log 2π)."""
        var = self.variance().view(1, -1, 1, 1)
        return (0.5 * ((self.mean(f_s) - f_t).pow(2) / var + var.log())).mean()


@register
class VID(DistillMethod):
    """Variational information distillation on every stage pair of ``stages[1:]``.

    L = ce_weight · CE + gamma · Σ_j NLL_j, one ``GaussianRegressor`` per stage pair (in order, up to
    the shorter list), mid channels = teacher channels, σ² initialised to ``init_pred_var``; when
    the maps differ in size the larger is adaptive-average-pooled to the smaller first.

    Reference: RepDistiller ``distiller_zoo/VID.py`` (the authors' code, ``VIDLoss(s, t, t)``) and
    ``train_student.py`` (``feat[1:-1]``, gamma 1). The paper and the reference agree.
    """

    name: ClassVar[str] = "VID"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0, "gamma": 1.0, "init_pred_var": 5.0, "eps": 1e-5}
    positive: ClassVar[tuple[str, ...]] = ("init_pred_var",)

    def __init__(self, ctx: PairContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        init_var, eps = float(self.hparams["init_pred_var"]), float(self.hparams["eps"])
        self.regressors = nn.ModuleList(
            GaussianRegressor(s_shape[0], t_shape[0], t_shape[0], init_var, eps)
            for s_shape, t_shape in zip(ctx.student.stages[1:], ctx.teacher.stages[1:])
        )

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        total = s.logits.new_zeros(())
        for regressor, f_s, f_t in zip(self.regressors, s.stages[1:], t.stages[1:]):
            total = total + regressor.nll(*pool_to_smaller(f_s, f_t))
        return {"vid": self.hparams["gamma"] * total}
