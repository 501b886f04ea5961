"""Park et al. (2019), "Relational Knowledge Distillation"."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, register
from mcmi.models.base import Features


def normalised_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances (zero diagonal) divided by their mean over non-zero entries.

    The clamp makes every off-diagonal distance positive, so the non-zero entries are the off-diagonal
    ones, a fixed set: they are taken by a view (row-major, as the reference's ``d[d > 0]`` takes them,
    so the mean adds the same numbers in the same order) rather than by a mask, whose size the host
    would have to wait for on a GPU."""
    b = e.shape[0]
    sq_norm = e.pow(2).sum(dim=1)
    sq_dist = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * (e @ e.t())).clamp(min=eps)
    off_diagonal = 1.0 - torch.eye(b, dtype=e.dtype, device=e.device)
    dist = sq_dist.sqrt() * off_diagonal
    # row-major, the flat matrix without its first entry is (b - 1) rows of b off-diagonal entries and a diagonal one
    off_diagonal_entries = dist.flatten()[1:].view(b - 1, b + 1)[:, :b].reshape(-1)
    return dist / off_diagonal_entries.mean()


def triplet_angles(e: torch.Tensor) -> torch.Tensor:
    """cos∠(e_j − e_i, e_k − e_i) for every anchor i and pair (j, k), flattened (B³ values)."""
    directions = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [i, j] = unit(e_j − e_i)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


@register
class RKD(DistillMethod):
    """Distance- and angle-wise relational distillation on the pooled features.

    L = ce_weight · CE + distance_weight · smoothL1(ψ_D(s), ψ_D(t)) + angle_weight · smoothL1(ψ_A(s), ψ_A(t)),
    ψ_D the pairwise distances normalised by their batch mean over distinct pairs, ψ_A the cosines of
    all triplet angles (``triplet_angles``); smooth-L1 (Huber, δ = 1) averaged over entries.

    Reference: RepDistiller ``distiller_zoo/RKD.py`` (weights 25 and 50, used with beta 1 in
    ``train_student.py``). The paper's formulas are the same; its metric-learning weights
    (λ_D = 1, λ_A = 2) are superseded by the reference's for classification.
    """

    name: ClassVar[str] = "RKD"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        f_s, f_t = s.pooled.flatten(1), t.pooled.flatten(1)
        loss_distance = F.smooth_l1_loss(normalised_distances(f_s), normalised_distances(f_t))
        loss_angle = F.smooth_l1_loss(triplet_angles(f_s), triplet_angles(f_t))
        return {
            "rkd_distance": self.hparams["distance_weight"] * loss_distance,
            "rkd_angle": self.hparams["angle_weight"] * loss_angle,
        }
