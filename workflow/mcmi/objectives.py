"""What the one trainer minimises: an ``Objective`` turns (model, batch, epoch) into named loss terms.

Teachers use ``CrossEntropy``, MCMI fine-tuning uses ``MCMIObjective``, students use ``Distillation``
(a distillation method plus its frozen teacher). An objective is an ``nn.Module``: the trainer
optimises its trainable parameters together with the model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.cmi import mcmi_loss
from mcmi.data.batch import Batch


@dataclass
class StepOutput:
    """Named, already weighted loss terms (their sum is minimised) and the model's logits for the
    batch's own samples (used for the training accuracy)."""

    terms: dict[str, torch.Tensor]
    logits: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return torch.stack(list(self.terms.values())).sum()


class Objective(nn.Module):
    """Base class of everything the trainer can minimise."""

    def step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        """What goes into the metrics file about this objective."""
        return {"objective": type(self).__name__}


class CrossEntropy(Objective):
    """Plain maximum log-likelihood training (the MLL teacher)."""

    def step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        return StepOutput({"ce": F.cross_entropy(logits, batch.y)}, logits)


class MCMIObjective(Objective):
    """CE - lambda * KL(P_x || Q_y) with the class centroids Q fixed (buffer, no gradient)."""

    def __init__(self, centroids: torch.Tensor, lam: float) -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"MCMI lambda must be >= 0, got {lam}")
        self.lam = float(lam)
        self.register_buffer("centroids", centroids.detach().float().clone())

    def step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        return StepOutput(mcmi_loss(logits, batch.y, self.centroids, self.lam), logits)

    def describe(self) -> dict:
        return {"objective": "MCMI", "lam": self.lam}
