"""Distillation with unlabelled examples, after Chen et al. (2020b), "Big Self-Supervised Models are
Strong Semi-Supervised Learners" (SimCLRv2), the setting the MCMI paper's Figure 9 (appendix A.9)
says it follows: the student learns every training image from the frozen teacher's soft labels."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mcmi.data.batch import Batch
from mcmi.data.subsets import labelled_indices
from mcmi.distill.base import DistillMethod, PairContext, register
from mcmi.models.base import Features, ZooModel
from mcmi.objectives import StepOutput


@register
class SemiKD(DistillMethod):
    """Semi-supervised distillation: the student sees all images, their labels only where labelled.

    L = distill_weight · (1/B) Σ_{x ∈ batch} −Σ_y P^T(y|x; τ) log P^S(y|x; τ)
        + labeled_ce_weight · (1/B) Σ_{(x, y) ∈ batch, x labelled} −log P^S(y|x),

    P(y|x; τ) = softmax(z/τ). Chen et al.'s loss is the first term (a cross-entropy with the teacher's
    soft labels, no τ² factor), optionally plus the labelled cross-entropy, with sums over the data
    sets; per batch both sums are divided by the batch size, so the labelled term is an unbiased
    estimate of theirs. The labelled images are ``labeled_count`` class-balanced training images drawn
    with ``labeled_seed`` (``data.subsets.labelled_indices``, the teacher's subset); needed only when
    ``labeled_ce_weight`` > 0. The default, distillation only at τ = 1, is ours: the MCMI paper states
    neither loss nor τ, and we could not confirm SimCLRv2's τ. The labels of unlabelled images never
    enter the loss (the trainer's training accuracy is still measured against every image's label).
    """

    name: ClassVar[str] = "SemiKD"
    defaults: ClassVar[dict[str, Any]] = {"tau": 1.0, "distill_weight": 1.0, "labeled_ce_weight": 0.0,
                                          "labeled_count": 0, "labeled_seed": 0}
    positive: ClassVar[tuple[str, ...]] = ("tau",)

    def __init__(self, ctx: PairContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        labelled = torch.zeros(ctx.num_train, dtype=torch.bool)
        if self.hparams["labeled_ce_weight"] > 0:
            if self.hparams["labeled_count"] <= 0:
                raise ValueError(f"method {self.name}: labeled_ce_weight > 0 needs labeled_count > 0 "
                                 f"(the number of labelled images)")
            labelled[labelled_indices(ctx.train_labels, self.hparams["labeled_count"],
                                      self.hparams["labeled_seed"], ctx.num_classes)] = True
        self.register_buffer("labelled", labelled, persistent=False)

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        tau = float(self.hparams["tau"])
        soft_ce = -(F.softmax(t.logits / tau, dim=1) * F.log_softmax(s.logits / tau, dim=1)).sum(dim=1).mean()
        return {"soft_ce": self.hparams["distill_weight"] * soft_ce}

    def step(self, student: ZooModel, teacher: ZooModel, batch: Batch, epoch: int) -> StepOutput:
        s = student.extract(batch.x)
        with torch.no_grad():
            t = teacher.extract(batch.x)
        terms = self.distill(s, t, batch, epoch)
        if self.hparams["labeled_ce_weight"] > 0:
            mask = self.labelled[batch.index.to(self.labelled.device)].to(s.logits.dtype)
            per_sample = F.cross_entropy(s.logits, batch.y, reduction="none")
            terms["labeled_ce"] = self.hparams["labeled_ce_weight"] * (per_sample * mask).sum() / len(batch)
        return StepOutput(terms=terms, logits=s.logits)
