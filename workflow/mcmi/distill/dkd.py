"""Zhao et al. (2022), "Decoupled Knowledge Distillation"."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mcmi.data.batch import Batch
from mcmi.distill._common import tempered_kl
from mcmi.distill.base import DistillMethod, register
from mcmi.models.base import Features

GT_LOGIT_SHIFT = 1000.0  # subtracted from the gt logit (after /T) to drop it from the non-target softmax


def binary_log_probs(logits: torch.Tensor, gt_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """log [p_gt, 1 − p_gt] of softmax(logits / T), computed stably with logsumexp; shape (B, 2)."""
    z = logits / temperature
    log_total = torch.logsumexp(z, dim=1, keepdim=True)
    log_gt = torch.logsumexp(z.masked_fill(~gt_mask, float("-inf")), dim=1, keepdim=True)
    log_other = torch.logsumexp(z.masked_fill(gt_mask, float("-inf")), dim=1, keepdim=True)
    return torch.cat([log_gt, log_other], dim=1) - log_total


def tckd(s_logits: torch.Tensor, t_logits: torch.Tensor, gt_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Target-class KD: T² · batch-mean KL(b_t || b_s) of the binary (gt, rest) distributions."""
    log_b_s = binary_log_probs(s_logits, gt_mask, temperature)
    b_t = binary_log_probs(t_logits, gt_mask, temperature).exp()
    return tempered_kl(log_b_s, b_t, temperature)


def nckd(s_logits: torch.Tensor, t_logits: torch.Tensor, gt_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Non-target KD: T² · batch-mean KL over the classes other than gt (gt logit pushed to −1000)."""
    shift = GT_LOGIT_SHIFT * gt_mask.to(s_logits.dtype)
    log_p_s = F.log_softmax(s_logits / temperature - shift, dim=1)
    p_t = F.softmax(t_logits / temperature - shift, dim=1)
    return tempered_kl(log_p_s, p_t, temperature)


@register
class DKD(DistillMethod):
    """Decoupled KD: KD = TCKD + (1 − b_t^gt) · NCKD, re-weighted as α · TCKD + β · NCKD.

    L = ce_weight · CE + min(epoch / warmup, 1) · (alpha · TCKD + beta · NCKD), both at temperature
    T and scaled by T² (``tckd``, ``nckd``); epochs are counted from 1. Returned as two terms,
    ``tckd`` and ``nckd``, each already carrying the warm-up factor and its weight.

    Reference: mdistiller ``mdistiller/distillers/DKD.py`` (gt / non-gt masks, −1000 · gt-mask
    logit shift, linear warm-up over 20 epochs) with its CIFAR config (CE 1, α 1, β 8, T 4; β is
    chosen per pair in the paper's tables). The binary log-probabilities are computed with
    logsumexp instead of log of summed probabilities: the same value, without underflow.
    The paper and the reference agree.
    """

    name: ClassVar[str] = "DKD"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20}
    positive: ClassVar[tuple[str, ...]] = ("T",)

    def warmup_factor(self, epoch: int) -> float:
        warmup = self.hparams["warmup"]
        return min(epoch / warmup, 1.0) if warmup > 0 else 1.0

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        temperature = float(self.hparams["T"])
        classes = torch.arange(s.logits.shape[1], device=batch.y.device)
        gt_mask = batch.y.unsqueeze(1) == classes          # one-hot, without F.one_hot's range check (a host read)
        factor = self.warmup_factor(epoch)
        return {
            "tckd": factor * self.hparams["alpha"] * tckd(s.logits, t.logits, gt_mask, temperature),
            "nckd": factor * self.hparams["beta"] * nckd(s.logits, t.logits, gt_mask, temperature),
        }
