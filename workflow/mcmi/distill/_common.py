"""Small helpers shared by more than one distillation method."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def batchmean_kl(log_p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) summed over the last axis and averaged over the batch (dim 0)."""
    return F.kl_div(log_p_student, p_teacher, reduction="sum") / log_p_student.shape[0]


def tempered_kl(log_p_student: torch.Tensor, p_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher || p_student) summed over the last axis, averaged over the batch, times T².

    Used by DKD (binary and non-target distributions); ``kd_loss`` is the same on the full softened
    distributions. The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al., 2015).
    """
    return batchmean_kl(log_p_student, p_teacher) * temperature**2


def softened_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """KL(softmax(z_t/T_t) || softmax(z_s/T_s)), summed over the classes (dim 1) and averaged over the
    batch (dim 0), without any temperature factor; a scalar. Teacher and student temperatures may
    differ (post-hoc smoothing, appendix A.7)."""
    return batchmean_kl(F.log_softmax(student_logits / student_temperature, dim=1),
                        F.softmax(teacher_logits / teacher_temperature, dim=1))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s (2015) KD loss: T² · KL(softmax(z_t/T) || softmax(z_s/T)), summed over the
    classes (dim 1) and averaged over the batch (dim 0); a scalar.

    The one softened-logit KL of KD, CRD+KD and HSAKD (logits and auxiliary-head logits). Their
    references agree on the reduction: RepDistiller's ``DistillKL`` (used by KD and CRD+KD) divides
    the summed KL by the batch size, and winycg/HSAKD's ``KLDivLoss(reduction="batchmean")`` is the
    same sum divided by the batch size (PyTorch computes it exactly so). DKD applies
    ``tempered_kl`` to other distributions (binary and non-target) and does not use this.
    """
    return softened_kl(student_logits, teacher_logits, temperature, temperature) * temperature**2


def pool_to_smaller(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool whichever of two maps is spatially larger to the other's size.

    Used by AT and VID, as RepDistiller does, when student and teacher maps differ in size.
    """
    s_size, t_size = tuple(f_s.shape[2:]), tuple(f_t.shape[2:])
    if s_size == t_size:
        return f_s, f_t
    if f_s.shape[2] > f_t.shape[2]:
        return F.adaptive_avg_pool2d(f_s, t_size), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, s_size)


def init_heads(heads: nn.Module) -> None:
    """HSAKD's initialisation of auxiliary heads (generic and reference alike): Kaiming-normal
    (fan-out, ReLU) convolutions and zero classifier biases."""
    for module in heads.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
