"""Shrivastava, Qi, Ordonez (2023), "Estimating and Maximizing Mutual Information for Knowledge
Distillation" (MIMKD), CVPR workshops."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, PairContext, register
from mcmi.distill.crd import CRD
from mcmi.models.base import Features, FeatureShapes

GLOBAL_BOUNDS = ("nce", "jsd")
SAME_SIZE_MAPS = ("deepest", "shallowest")


def jsd_mi_bound(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The Jensen-Shannon lower bound on mutual information (the paper's eq. 2) from critic scores.

    Î_JSD = E_P[−softplus(−T(x, y))] − E_{P×P}[softplus(T(x, y'))], the means taken over every
    score (samples and locations) of the positive (joint) and negative (shuffled) pairs; over the
    m × m locations of a map this is the (1/m²) Σ_ij of eqs. (4) and (5).
    With all scores 0 it equals −2 log 2.
    """
    return -F.softplus(-positive).mean() - F.softplus(negative).mean()


def negative_offset(batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """A random offset in 1..B−1, drawn on ``device`` (``None`` for a batch of one). Rolling the teacher's
    side of the batch by it gives every sample x another sample x' of the batch: the one negative per
    positive (Fig. 2). The draw stays on the device, so no step waits to read it and a compiled step
    draws a new offset every step (on a CPU it is the draw ``torch.randint(1, B, ())`` of the host's
    generator, as before; on a GPU it comes from the GPU's generator)."""
    if batch_size < 2:
        return None
    return torch.randint(1, batch_size, (), device=device)


def roll_batch(x: torch.Tensor, offset: torch.Tensor | int | None) -> torch.Tensor:
    """Row b of the result is row (b − offset) mod B of ``x``: ``torch.roll`` along the batch, by
    gathering rows (the offset may be a device tensor), in the memory layout ``torch.roll`` gives (a
    channels-last map stays channels-last, so the critic's convolutions round as they did)."""
    if offset is None or (isinstance(offset, int) and offset == 0):
        return x
    rows = torch.remainder(torch.arange(x.shape[0], device=x.device) - offset, x.shape[0])
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return x.index_select(0, rows).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class ConvCritic(nn.Module):
    """The paper's local/feature critic (§3.6): on the channel-wise concatenation [f_t, f_s], two
    1×1 convolutions with ``hidden`` filters, each followed by ReLU, then a 1×1 convolution to one
    score per location: (B, C_t + C_s, m, m) -> (B, 1, m, m)."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def scores(self, f_t: torch.Tensor, f_s: torch.Tensor,
               offset: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of the positive pairs [f_t(x), f_s(x)] and of the negatives [f_t(x'), f_s(x)], x' the
        sample ``offset`` rows away; both maps (B, C, m, m), compared location by location."""
        return (self(torch.cat([f_t, f_s], dim=1)),
                self(torch.cat([roll_batch(f_t, offset), f_s], dim=1)))


class ShortcutProjection(nn.Module):
    """Projection of a vector with a linear shortcut, after Deep InfoMax's template: Linear → ReLU →
    Linear, plus a linear map of the input; (B, D) -> (B, units). The shortcut starts close to an
    embedding of the input (weights U(−0.01, 0.01) with 1 on the diagonal of the first min(D, units)
    units), as Deep InfoMax's does. Deep InfoMax also batch-normalises the hidden layer; we leave it
    out (the paper names no layers, and a training batch of one would break it)."""

    def __init__(self, in_dim: int, units: int) -> None:
        super().__init__()
        self.nonlinear = nn.Sequential(nn.Linear(in_dim, units), nn.ReLU(), nn.Linear(units, units))
        self.shortcut = nn.Linear(in_dim, units)
        with torch.no_grad():
            self.shortcut.weight.uniform_(-0.01, 0.01)
            diagonal = torch.arange(min(in_dim, units))
            self.shortcut.weight[diagonal, diagonal] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(x) + self.shortcut(x)


class ProjectDotCritic(nn.Module):
    """The paper's global JSD critic (§3.6, "project and dot"): each side's final representation is
    projected by its own ``ShortcutProjection`` and the score is the dot product of the projections."""

    def __init__(self, t_dim: int, s_dim: int, units: int) -> None:
        super().__init__()
        self.project_t = ShortcutProjection(t_dim, units)
        self.project_s = ShortcutProjection(s_dim, units)

    def scores(self, f_t: torch.Tensor, f_s: torch.Tensor,
               offset: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ⟨p_t(x), p_s(x)⟩ of the positives and ⟨p_t(x'), p_s(x)⟩ of the negatives; (B,) each.
        The critic is separable, so each side is projected once and the teacher's projection rolled."""
        p_t, p_s = self.project_t(f_t), self.project_s(f_s)
        return (p_t * p_s).sum(1), (roll_batch(p_t, offset) * p_s).sum(1)


def map_size(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Spatial size of a per-sample (C, H, W) shape."""
    return tuple(shape[1:])


def pairs_by_size(student: FeatureShapes, teacher: FeatureShapes, include_stem: bool,
                  same_size_map: str) -> list[tuple[int, int]]:
    """The set R: (student index, teacher index) into ``stages`` of maps of the same spatial size,
    one pair per size that both networks have, ordered from the student's shallowest to its deepest
    map (k = 1..K). Candidates are every stage output (the pooled vectors are not maps), from
    ``stages[0]`` (the stem) when ``include_stem`` else from ``stages[1]``; where one network has
    two candidate maps of one size, ``same_size_map`` picks its deepest or its shallowest."""
    if same_size_map not in SAME_SIZE_MAPS:
        raise ValueError(f"methods.MIMKD.same_size_map: must be one of {SAME_SIZE_MAPS}, got {same_size_map!r}")

    def by_size(stages: tuple[tuple[int, ...], ...]) -> dict[tuple[int, ...], int]:
        chosen: dict[tuple[int, ...], int] = {}
        for index in range(0 if include_stem else 1, len(stages)):
            size = map_size(stages[index])
            if size not in chosen or same_size_map == "deepest":
                chosen[size] = index
        return chosen

    s_maps, t_maps = by_size(student.stages), by_size(teacher.stages)
    return sorted((s_maps[size], t_maps[size]) for size in s_maps if size in t_maps)


@register
class MIMKD(DistillMethod):
    """Mutual-information maximisation between teacher and student at three levels.

    L = ce_weight · CE + lambda_g · L_global + lambda_l · L_local + lambda_f · L_feature, with
    - R (§3, Fig. 2c): K pairs (f_t^(k), f_s^(k)) of same-sized m_k × m_k maps, one per spatial size
      that both networks have (``pairs_by_size``); a size that only one network has gets no pair.
      Only the pooled final vectors f_t(x), f_s(x) are outside R, so each network's deepest map is
      a candidate. Two choices the paper leaves open are named: ``include_stem`` (default False:
      ``stages[0]``, the stem's output — VGG's first block — is not a candidate, as the stage lists
      RepDistiller's feature methods take) and ``same_size_map`` (default ``deepest``: of two candidate
      maps of one size in one network — VGG's last two blocks; with ``include_stem`` also a stem of
      stage 1's size, as in CIFAR ResNets and MobileNetV2 — the deeper one).
    - feature (eq. 5): −(1/K) Σ_k (1/m_k²) Σ_ij Î_JSD(f_t^(k)_ij, f_s^(k)_ij), a mean over the K pairs
      with a distinct ``ConvCritic`` per pair on [f_t^(k), f_s^(k)] (§3.6).
    - local (eq. 4): −(1/m_K²) Σ_ij Î_JSD(f_t(x), f_s^(K)_ij), f_s^(K) the student's map of the last
      (deepest) pair of R and f_t(x) the teacher's pooled vector replicated over its m_K × m_K
      locations, one ``ConvCritic``.
    - global (eq. 3): ``global_bound: nce`` (default; the paper's final models: "the infoNCE bound in
      CRD ... 4096 negatives") reuses ``CRD``'s embeddings, memory banks and NCE with ``nce_k``
      negatives; ``global_bound: jsd`` (the paper's ablation, §4.1) is −Î_JSD with the
      project-and-dot ``ProjectDotCritic``, Deep InfoMax's template with ``global_proj_dim`` units
      (default 2048, Deep InfoMax's width; the paper gives none).
    Every JSD term uses one negative per positive, the same x' for all of them in a step: the
    teacher's side rolled by one random offset (``negative_offset``).

    Reference: the paper (CVPR-W 2023, arXiv 2110.15946), eqs. (2)–(5), §3.3–3.7: critics of two
    1×1 convolutions with 512 filters and ReLU and a 1×1 convolution to one score; α = 1, λ_g = 1,
    λ_l = 0.75, λ_f = 1 (§4). No public code exists ("will be made public"). The paper trains every
    student with lr 0.05; the project's recipe (lr 0.01 for MobileNetV2 and the ShuffleNets) is the
    default, the paper's is ``config/mimkd_paper_lr.yaml`` (see docs/MIMKD.md).
    """

    name: ClassVar[str] = "MIMKD"
    defaults: ClassVar[dict[str, Any]] = {
        "ce_weight": 1.0,
        "lambda_g": 1.0,
        "lambda_l": 0.75,
        "lambda_f": 1.0,
        "global_bound": "nce",
        "include_stem": False,
        "same_size_map": "deepest",
        "critic_hidden": 512,
        "global_proj_dim": 2048,
        "feat_dim": 128,
        "nce_k": 4096,
        "nce_t": 0.07,
        "nce_m": 0.5,
    }
    positive: ClassVar[tuple[str, ...]] = ("critic_hidden", "global_proj_dim")
    draws_random: ClassVar[bool] = True        # the negative offset (and the NCE bound's negatives)

    def __init__(self, ctx: PairContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        hp = self.hparams
        if hp["global_bound"] not in GLOBAL_BOUNDS:
            raise ValueError(f"methods.MIMKD.global_bound: must be one of {GLOBAL_BOUNDS}, got {hp['global_bound']!r}")
        student, teacher = ctx.student, ctx.teacher
        self.feature_pairs = pairs_by_size(student, teacher, bool(hp["include_stem"]), hp["same_size_map"])
        if not self.feature_pairs:
            raise ValueError(
                f"methods.MIMKD: student {ctx.student_name or '?'} (map sizes "
                f"{[map_size(s) for s in student.stages]}) and teacher {ctx.teacher_name or '?'} "
                f"({[map_size(s) for s in teacher.stages]}) share no feature-map size with include_stem "
                f"{hp['include_stem']}; the feature and local terms need at least one")
        hidden = int(hp["critic_hidden"])
        if hp["global_bound"] == "nce":
            self.global_nce = CRD(ctx, **{k: hp[k] for k in ("feat_dim", "nce_k", "nce_t", "nce_m")})
        else:
            self.global_critic = ProjectDotCritic(teacher.pooled_dim, student.pooled_dim, int(hp["global_proj_dim"]))
        self.local_stage = self.feature_pairs[-1][0]
        self.local_critic = ConvCritic(teacher.pooled_dim + student.stages[self.local_stage][0], hidden)
        self.feature_critics = nn.ModuleList(
            ConvCritic(teacher.stages[j][0] + student.stages[i][0], hidden) for i, j in self.feature_pairs)

    def compile_problem(self) -> str | None:
        return self.global_nce.compile_problem() if self.hparams["global_bound"] == "nce" else None

    def feature_pairs_with_sizes(self) -> list[tuple[tuple[int, ...], int, int]]:
        """R as (spatial size, student index, teacher index), k = 1..K."""
        return [(map_size(self.ctx.student.stages[i]), i, j) for i, j in self.feature_pairs]

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        hp = self.hparams
        offset = negative_offset(s.pooled.shape[0], s.pooled.device)
        t_pooled = t.pooled.detach()
        if hp["global_bound"] == "nce":
            global_loss = self.global_nce.contrast(s.pooled, t_pooled, batch.index)
        else:
            global_loss = -jsd_mi_bound(*self.global_critic.scores(t_pooled, s.pooled, offset))
        local_map = s.stages[self.local_stage]
        replicated = t_pooled[:, :, None, None].expand(-1, -1, *local_map.shape[2:])
        local_loss = -jsd_mi_bound(*self.local_critic.scores(replicated, local_map, offset))
        feature_bounds = [jsd_mi_bound(*critic.scores(t.stages[j].detach(), s.stages[i], offset))
                          for critic, (i, j) in zip(self.feature_critics, self.feature_pairs)]
        feature_loss = -torch.stack(feature_bounds).mean()
        return {
            "mimkd_global": hp["lambda_g"] * global_loss,
            "mimkd_local": hp["lambda_l"] * local_loss,
            "mimkd_feature": hp["lambda_f"] * feature_loss,
        }
