"""Hinton et al. (2015), "Distilling the Knowledge in a Neural Network"; with separate teacher and
student temperatures for the post-hoc smoothing study (appendix A.7, Figure 8)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from mcmi.data.batch import Batch
from mcmi.distill._common import softened_kl
from mcmi.distill.base import DistillMethod, register
from mcmi.models.base import Features

# How the KL is scaled when the teacher's temperature T_t and the student's T_s differ; every choice
# is T² when they are equal except "none". Hinton et al.'s T² compensates the 1/T² that softening puts
# on the gradient with respect to the *student's* logits (∂/∂z_s carries 1/T_s, and the high-T
# expansion of the softmax difference another 1/T_s), hence the default T_s². No source states the
# scaling for T_t ≠ T_s (the paper does not; the authors' code has one temperature).
KD_SCALES: dict[str, Callable[[float, float], float]] = {
    "ts2": lambda t_teacher, t_student: t_student**2,
    "tt_ts": lambda t_teacher, t_student: t_teacher * t_student,
    "tt2": lambda t_teacher, t_student: t_teacher**2,
    "none": lambda t_teacher, t_student: 1.0,
}


@register
class KD(DistillMethod):
    """Vanilla knowledge distillation on softened logits.

    L = ce_weight · CE + alpha · s(T_t, T_s) · mean_batch KL(softmax(z_t/T_t) || softmax(z_s/T_s)),
    with T_t = ``T_teacher`` and T_s = ``T_student``, each ``T`` unless set, and the factor
    s = ``KD_SCALES[scale]`` (default ``ts2``: T_s²). With T_t = T_s = T every scale but ``none``
    gives s = T², Hinton et al.'s loss, computed bit for bit as before the two temperatures existed.

    Reference: RepDistiller ``distiller_zoo/KD.py`` (``DistillKL``: summed KL divided by the batch
    size, times T²) with ``train_student.py``'s weights 0.1 (CE) and 0.9 (KL), T = 4. The paper and
    the reference agree. Separate T_t, T_s: the paper's Figure 8 (after Liu et al., 2022, Meta KD);
    how they were scaled there is not stated.
    """

    name: ClassVar[str] = "KD"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 0.1, "alpha": 0.9, "T": 4.0,
                                          "T_teacher": None, "T_student": None, "scale": "ts2"}
    positive: ClassVar[tuple[str, ...]] = ("T", "T_teacher", "T_student")

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any]) -> list[str]:
        problems = super().check_hparams(hparams)
        scale = hparams.get("scale", cls.defaults["scale"])
        if isinstance(scale, str) and scale not in KD_SCALES:
            problems.append(f"scale: expected one of {sorted(KD_SCALES)}, got {scale!r}")
        return problems

    def __init__(self, ctx: Any, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        for side in ("T_teacher", "T_student"):   # unset: the common temperature T
            if self.hparams[side] is None:
                self.hparams[side] = self.hparams["T"]

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        t_teacher, t_student = float(self.hparams["T_teacher"]), float(self.hparams["T_student"])
        factor = KD_SCALES[self.hparams["scale"]](t_teacher, t_student)
        loss = softened_kl(s.logits, t.logits, t_student, t_teacher) * factor
        return {"kd": self.hparams["alpha"] * loss}
