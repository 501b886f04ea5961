"""Chen et al. (2021), "Distilling Knowledge via Knowledge Review" (ReviewKD)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, PairContext, register
from mcmi.models.base import Features

Size = tuple[int, int]


class AttentionFusion(nn.Module):
    """ABF: 1×1 conv to ``mid`` channels, fused with the deeper level's map by two sigmoid attention
    maps (when ``fuse``), resized to the teacher's spatial size, then 3×3 conv to the teacher's
    channels. Returns (output for the loss, fused map handed to the next shallower level)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channels),
        )
        self.project = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.attention = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.project[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, out_size: Size, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the deeper level's map")
            residual = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            gates = self.attention(torch.cat([x, residual], dim=1))
            x = x * gates[:, 0:1] + residual * gates[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.project(x), x


def hierarchical_context_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], levels: tuple[int, ...] = (4, 2, 1)
) -> torch.Tensor:
    """HCL: per level, (MSE + Σ_j w_j · MSE(pool_{l_j}(s), pool_{l_j}(t))) / (1 + Σ_j w_j), with
    w = 1/2, 1/4, 1/8 for the pooled sizes 4, 2, 1 kept (a size is skipped when it is not smaller
    than the map's height, and the weights of the kept ones keep halving); summed over levels."""
    total = student[0].new_zeros(())
    for fs, ft in zip(student, teacher):
        loss = F.mse_loss(fs, ft)
        weight, weight_sum = 1.0, 1.0
        for size in levels:
            if size >= fs.shape[2]:
                continue
            weight /= 2.0
            pooled_s = F.adaptive_avg_pool2d(fs, (size, size))
            pooled_t = F.adaptive_avg_pool2d(ft, (size, size))
            loss = loss + weight * F.mse_loss(pooled_s, pooled_t)
            weight_sum += weight
        total = total + loss / weight_sum
    return total


@register
class ReviewKD(DistillMethod):
    """Knowledge review: student features fused from deep to shallow match the teacher's stages.

    Levels, shallow to deep: stages 1..k, then the pooled feature as a 1×1 map. Going deep to
    shallow, ABF_l turns the student's level-l map (fused with the deeper ABF's map) into F_l of the
    teacher's channels and spatial size; L = ce_weight · CE + weight · min(epoch / warmup, 1) ·
    Σ_l HCL(F_l, T_l), epochs counted from 1.

    Reference: mdistiller ``mdistiller/distillers/ReviewKD.py`` and ``configs/cifar100/reviewkd.yaml``
    (weight 5.0, warm-up 20, mid channels min(512, student pooled dim)); dvlab-research/ReviewKD
    ``CIFAR-100/model/reviewkd.py``. The teacher side is ``preact_stages[1:] + [pooled]``; the
    student side is the post-activation ``stages[1:] + [pooled]`` (mdistiller's default
    ``STU_PREACT=False``; dvlab's ``is_feat=True`` without ``preact``) — ``student_preact=True`` uses
    the pre-activation maps instead. The references hard-code channel and shape lists for a few
    pairs; here in/out channels and the teacher's sizes come from the two models' ``FeatureShapes``
(the deeper map is resized to the student's own map at run time, the fused map to the teacher's). When
    the two models have different numbers of stages, the deepest ones are paired (as the
    reference's ``zip`` drops the student's shallowest extra map).
    """

    name: ClassVar[str] = "ReviewKD"
    defaults: ClassVar[dict[str, Any]] = {
        "ce_weight": 1.0,
        "weight": 5.0,
        "warmup_epochs": 20,
        "max_mid_channels": 512,
        "student_preact": False,
    }
    positive: ClassVar[tuple[str, ...]] = ("max_mid_channels",)

    def __init__(self, ctx: PairContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        student_stages = ctx.student.preact_stages if self.hparams["student_preact"] else ctx.student.stages
        num_levels = min(len(student_stages), len(ctx.teacher.preact_stages)) - 1
        if num_levels < 1:
            raise ValueError("ReviewKD needs at least one stage after the stem in both models")
        self.num_levels = num_levels
        s_maps = list(student_stages[-num_levels:])
        t_maps = list(ctx.teacher.preact_stages[-num_levels:])
        # Shallow to deep, the pooled feature last (a 1×1 map).
        self.in_channels = [shape[0] for shape in s_maps] + [ctx.student.pooled_dim]
        self.out_channels = [shape[0] for shape in t_maps] + [ctx.teacher.pooled_dim]
        self.out_shapes: list[Size] = [(shape[1], shape[2]) for shape in t_maps] + [(1, 1)]
        mid_channels = min(int(self.hparams["max_mid_channels"]), self.in_channels[-1])
        last = len(self.in_channels) - 1
        self.abfs = nn.ModuleList(
            AttentionFusion(c_in, mid_channels, c_out, fuse=i < last)
            for i, (c_in, c_out) in enumerate(zip(self.in_channels, self.out_channels))
        )

    def warmup_factor(self, epoch: int) -> float:
        """min(epoch / warmup_epochs, 1), epochs counted from 1."""
        warmup = float(self.hparams["warmup_epochs"])
        return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)

    def review(self, s: Features) -> list[torch.Tensor]:
        """The fused student maps, shallow to deep, each of the teacher's level shape."""
        maps = s.preact_stages if self.hparams["student_preact"] else s.stages
        inputs = list(maps[-self.num_levels:]) + [s.pooled.reshape(*s.pooled.shape, 1, 1)]
        outputs: list[torch.Tensor] = []
        residual: torch.Tensor | None = None
        for level in reversed(range(len(inputs))):
            out, residual = self.abfs[level](inputs[level], self.out_shapes[level], residual)
            outputs.insert(0, out)
        return outputs

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        targets = [f.detach() for f in t.preact_stages[-self.num_levels:]]
        targets.append(t.pooled.detach().reshape(*t.pooled.shape, 1, 1))
        loss = hierarchical_context_loss(self.review(s), targets)
        return {"reviewkd": self.hparams["weight"] * self.warmup_factor(epoch) * loss}
