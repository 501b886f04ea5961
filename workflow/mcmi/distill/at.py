"""Zagoruyko & Komodakis (2017), "Paying More Attention to Attention"."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mcmi.data.batch import Batch
from mcmi.distill._common import pool_to_smaller
from mcmi.distill.base import DistillMethod, register
from mcmi.models.base import Features


@register
class AT(DistillMethod):
    """Activation-based attention transfer.

    For each stage pair j of ``stages[1:]`` (RepDistiller's ``feat[1:-1]``, paired in order up to
    the shorter list), the attention map a = normalise_L2(mean_c f^p) flattened per sample, and
    L = ce_weight · CE + beta · Σ_j mean_{b,i} (a_s − a_t)².
    When the maps differ in size, the larger one is adaptive-average-pooled to the smaller one
    before computing attention.

    Reference: RepDistiller ``distiller_zoo/AT.py`` and ``train_student.py`` (beta 1000, p 2).
    Paper vs reference: the paper writes β/2 · ‖a_s − a_t‖_2 (a norm, with β "divided by the number
    of elements in the attention map and batch size"); the reference, like the authors' own code,
    averages squared differences, which is what is implemented.
    """

    name: ClassVar[str] = "AT"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0, "beta": 1000.0, "p": 2}
    positive: ClassVar[tuple[str, ...]] = ("p",)

    def _attention(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.pow(self.hparams["p"]).mean(dim=1).flatten(1), dim=1)

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        total = s.logits.new_zeros(())
        for f_s, f_t in zip(s.stages[1:], t.stages[1:]):
            f_s, f_t = pool_to_smaller(f_s, f_t)
            total = total + (self._attention(f_s) - self._attention(f_t)).pow(2).mean()
        return {"at": self.hparams["beta"] * total}
