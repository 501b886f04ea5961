"""What the one trainer minimises: an ``Objective`` turns (model, batch, epoch) into named loss terms.

Teachers use ``CrossEntropy``, MCMI fine-tuning uses ``MCMIObjective``, students use ``Distillation``
(a distillation method plus its frozen teacher). The teacher regularisers that Figure 7 (appendix
A.4.2) compares with CMI are objectives too: ``EntropyRegularized`` (confidence penalty),
``LabelSmoothing`` (cross-entropy on smoothed targets) and ``LabelSmoothingReverseKL`` (the form
in the authors' unused ``CE_KL_LS_loss``). An objective is an ``nn.Module``: the trainer optimises
its trainable parameters together with the model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.cmi import entropy, mcmi_loss
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

    def compile_problem(self) -> str | None:
        """Why this objective's step cannot be compiled (config ``compile``): a read of a device tensor
        on the host or a shape that depends on the data; ``None`` when it can (:mod:`mcmi.capture`)."""
        return None

    def draws_random(self) -> bool:
        """Whether the step draws random numbers (kept out of CUDA graphs: :mod:`mcmi.capture`)."""
        return False


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


class EntropyRegularized(Objective):
    """CE − beta · mean_x H(P_x): the confidence penalty of Pereyra et al. (2017), which *raises* the
    entropy of the teacher's outputs (the paper's "high entropy" teachers of Figure 7; the sign of the
    authors' unused ``CE_KL_ENP_loss``, whose entropy term is −mean H). P_x = softmax(logits), T = 1."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"entropy regulariser beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        mean_entropy = entropy(F.softmax(logits, dim=1)).mean()
        return StepOutput({"ce": F.cross_entropy(logits, batch.y), "entropy": -self.beta * mean_entropy}, logits)

    def describe(self) -> dict:
        return {"objective": "entropy", "beta": self.beta}


class LabelSmoothing(Objective):
    """Cross-entropy against smoothed targets (1 − eps) · onehot(y) + eps / C (Szegedy et al., 2016;
    the form of Müller et al., 2019 and of Tang et al., 2020, whom the paper cites for "label smoothing
    hurts KD"); equal to ``F.cross_entropy(..., label_smoothing=eps)``."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        if not 0 <= eps < 1:
            raise ValueError(f"label smoothing eps must be in [0, 1), got {eps}")
        self.eps = float(eps)

    def step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        return StepOutput({"ce_smoothed": F.cross_entropy(logits, batch.y, label_smoothing=self.eps)}, logits)

    def describe(self) -> dict:
        return {"objective": "label_smoothing", "eps": self.eps}


class LabelSmoothingReverseKL(Objective):
    """CE + weight · KL(P_x || q_eps(y)), q_eps = 1 − eps on the label and eps / (C − 1) elsewhere: the
    smoothing term of the authors' unused ``CE_KL_LS_loss`` (ICLRMCMI ``losses.py``), a KL from the
    model's output to the smoothed label -- the reverse direction of ``LabelSmoothing``'s cross-entropy.
    The code never wires it in, so its weight is not known; it is a parameter here."""

    def __init__(self, eps: float, weight: float) -> None:
        super().__init__()
        if not 0 < eps < 1:
            raise ValueError(f"label smoothing eps must be in (0, 1) for the reverse-KL form, got {eps}")
        if weight < 0:
            raise ValueError(f"label smoothing weight must be >= 0, got {weight}")
        self.eps, self.weight = float(eps), float(weight)

    def smoothed_targets(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """q_eps(y) for each label: (B, C), rows summing to one."""
        q = torch.full((labels.shape[0], num_classes), self.eps / (num_classes - 1), device=labels.device)
        return q.scatter(1, labels.unsqueeze(1), 1.0 - self.eps)

    def step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        log_p = F.log_softmax(logits, dim=1)
        log_q = self.smoothed_targets(batch.y, logits.shape[1]).log()
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
        return StepOutput({"ce": F.cross_entropy(logits, batch.y), "ls_kl": self.weight * kl}, logits)

    def describe(self) -> dict:
        return {"objective": "label_smoothing_reverse_kl", "eps": self.eps, "weight": self.weight}


# The teacher regularisers of Figure 7, by the name their ``describe()`` gives.
REGULARIZERS: dict[str, type[Objective]] = {"entropy": EntropyRegularized, "label_smoothing": LabelSmoothing,
                                             "label_smoothing_reverse_kl": LabelSmoothingReverseKL}


def regularizer(description: dict) -> Objective:
    """The regulariser an objective's ``describe()`` names, e.g. {"objective": "entropy", "beta": 0.15};
    a ValueError naming what is wrong (an unknown objective, a missing or unknown parameter)."""
    params = dict(description)
    name = params.pop("objective", None)
    if name not in REGULARIZERS:
        raise ValueError(f"unknown teacher regulariser {name!r}; known: {sorted(REGULARIZERS)}")
    try:
        built = REGULARIZERS[name](**params)
    except TypeError as error:
        raise ValueError(f"teacher regulariser {name!r}: {error}") from None
    return built
