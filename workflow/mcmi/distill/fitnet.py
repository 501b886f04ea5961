"""Romero et al. (2015), "FitNets: Hints for Thin Deep Nets"."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, PairContext, register
from mcmi.models.base import Features


def hint_regressor(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> nn.Sequential:
    """Conv regressor + BN + ReLU mapping a student map (C, H, W) onto the teacher's map shape.

    Follows RepDistiller's ``ConvReg``: a 3×3 stride-2 conv when the student map is twice the
    teacher's size, a 4×4 stride-2 transposed conv when it is half, otherwise a "valid" conv with
    kernel (1 + H_s − H_t, 1 + W_s − W_t) when it is at least as large (1×1 for equal sizes).
    Beyond the reference, a student map smaller by any integer factor k gets a k×k stride-k
    transposed conv; other ratios are rejected.
    """
    s_c, s_h, s_w = s_shape
    t_c, t_h, t_w = t_shape
    conv: nn.Module
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif (2 * s_h, 2 * s_w) == (t_h, t_w):
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    elif s_h >= t_h and s_w >= t_w:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    elif t_h % s_h == 0 and t_w % s_w == 0 and t_h // s_h == t_w // s_w:
        factor = t_h // s_h
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=factor, stride=factor)
    else:
        raise ValueError(f"FitNet: no regressor from student map {s_shape} to teacher map {t_shape}")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), nn.ReLU(inplace=True))


@register
class FitNet(DistillMethod):
    """Hint learning: L = ce_weight · CE + weight · MSE(r(f_s[h]), f_t[h]), h = ``hint_layer``.

    ``f[h]`` is ``stages[hint_layer]`` (RepDistiller's ``feat[hint_layer]``, default 2, the middle
    stage of a CIFAR ResNet) and r is the trainable regressor of ``hint_regressor``. Reference:
    RepDistiller ``distiller_zoo/FitNet.py`` (``nn.MSELoss``, mean over all elements),
    ``models/util.py`` (``ConvReg``) and ``train_student.py``, weight 100.

    Paper vs reference: the paper trains in two stages (hint pre-training of the lower layers,
    then KD) with loss ½‖·‖²; the reference, followed here, optimises the hint loss jointly with CE
    from the start and averages the squared error over elements (scale absorbed by ``weight``).
    """

    name: ClassVar[str] = "FitNet"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0, "weight": 100.0, "hint_layer": 2}

    def __init__(self, ctx: PairContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        layer = int(self.hparams["hint_layer"])
        n_stages = min(len(ctx.student.stages), len(ctx.teacher.stages))
        if not 0 <= layer < n_stages:
            raise ValueError(f"FitNet: hint_layer {layer} outside the {n_stages} stages both models have")
        self.hint_layer = layer
        self.regressor = hint_regressor(ctx.student.stages[layer], ctx.teacher.stages[layer])

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        regressed = self.regressor(s.stages[self.hint_layer])
        return {"hint": self.hparams["weight"] * F.mse_loss(regressed, t.stages[self.hint_layer])}
