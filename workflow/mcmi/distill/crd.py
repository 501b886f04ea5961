"""Tian et al. (2019), "Contrastive Representation Distillation" (CRD)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mcmi import distributed
from mcmi.data.batch import Batch
from mcmi.distill.base import DistillMethod, PairContext, register
from mcmi.models.base import Features


class Embed(nn.Module):
    """Linear projection of a flattened feature followed by L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), p=2, dim=1)


def nce_loss(probs: torch.Tensor, num_data: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss (its eq. 18) for one anchor side.

    ``probs`` is (B, 1 + K): column 0 the positive, the rest the K negatives, each already divided
    by the normalising constant Z. With the noise distribution P_n = 1/N:
    h(x) = x / (x + K·P_n), loss = -(Σ_b log h(pos_b) + Σ_b Σ_k log(1 - h(neg_bk))) / B.
    """
    batch_size, num_neg = probs.shape[0], probs.shape[1] - 1
    noise = num_neg / float(num_data)
    positive = probs[:, 0]
    negatives = probs[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + eps))
    log_d0 = torch.log(noise / (negatives + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / batch_size


@register
class CRD(DistillMethod):
    """Contrastive representation distillation with two momentum memory banks.

    Pooled features are embedded (linear to ``feat_dim``, L2-normalised): v_s, v_t. Memory bank
    M_s holds student embeddings, M_t teacher embeddings, one row per training sample. For sample i
    with dataset index n_i, rows idx_i = [n_i, neg_1..neg_K] (K = ``nce_k`` negatives of other
    classes); scores o_s = exp(M_t[idx_i]·v_s / τ) / Z_s and o_t = exp(M_s[idx_i]·v_t / τ) / Z_t,
    with Z fixed on the first batch to mean(exp(·/τ))·N. Then
    L = ce_weight · CE + weight · (NCE(o_s) + NCE(o_t)), and the banks' positive rows are updated:
    M[n_i] ← normalise(m · M[n_i] + (1 - m) · v).

    Reference: RepDistiller ``crd/criterion.py``, ``crd/memory.py``, ``dataset/cifar100.py``
    (``CIFAR100InstanceSample``, mode 'exact') and ``train_student.py`` (``-r 1 -a 0 -b 0.8``,
    nce_k 16384, nce_t 0.07, nce_m 0.5, feat_dim 128). Negatives are drawn uniformly from the other
    classes without replacement, or with replacement when fewer than K such samples exist, as the
    reference's ``np.random.choice`` does; when no other class exists they come from the whole set.
    """

    name: ClassVar[str] = "CRD"
    defaults: ClassVar[dict[str, Any]] = {
        "ce_weight": 1.0,
        "weight": 0.8,
        "feat_dim": 128,
        "nce_k": 16384,
        "nce_t": 0.07,
        "nce_m": 0.5,
    }
    positive: ClassVar[tuple[str, ...]] = ("feat_dim", "nce_k", "nce_t")
    draws_random: ClassVar[bool] = True        # the negatives

    def __init__(self, ctx: PairContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        feat_dim = int(self.hparams["feat_dim"])
        self.embed_s = Embed(ctx.student.pooled_dim, feat_dim)
        self.embed_t = Embed(ctx.teacher.pooled_dim, feat_dim)
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(ctx.num_train, feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(ctx.num_train, feat_dim) * 2 * bound - bound)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        labels = torch.as_tensor(ctx.train_labels, dtype=torch.long).reshape(-1)
        if labels.numel() != ctx.num_train:
            raise ValueError(f"CRD: {labels.numel()} training labels for num_train={ctx.num_train}")
        self.register_buffer("train_labels", labels, persistent=False)
        # Whether a sample has at least K samples of other classes to draw from without replacement is
        # a property of its label, so it is known here, once: a step never asks the device for it.
        others = labels.numel() - torch.bincount(labels)[labels] if labels.numel() else labels
        enough = others >= int(self.hparams["nce_k"])
        self.without_replacement: bool | None = (True if bool(enough.all()) else False if not bool(enough.any())
                                                 else None)     # None: it depends on the batch's labels
        self.register_buffer("enough_negatives", enough, persistent=False)

    def compile_problem(self) -> str | None:
        if self.without_replacement is None:
            return ("some classes have K negatives and others not, so every step reads which of the batch's "
                    "samples have enough (a host read of a device mask)")
        return None

    def sample_contrast_indices(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K) memory rows: each sample's own index, then K indices of other classes."""
        k = int(self.hparams["nce_k"])
        labels = self.train_labels
        index = index.to(labels.device)
        other = labels.unsqueeze(0) != labels[index].unsqueeze(1)  # (B, N)
        pool = other.sum(dim=1)
        allowed = torch.where(pool.unsqueeze(1) > 0, other, torch.ones_like(other))
        without_replacement = self.without_replacement
        if without_replacement is None:      # labels of unequal class sizes around K: one read per step
            without_replacement = bool(self.enough_negatives[index].all())
        if without_replacement:
            scores = torch.rand(allowed.shape, device=labels.device).masked_fill_(~allowed, -1.0)
            negatives = scores.topk(k, dim=1).indices
        else:
            negatives = torch.multinomial(allowed.float(), k, replacement=True)
        return torch.cat([index.unsqueeze(1), negatives], dim=1)

    def _scores(self, memory: torch.Tensor, rows: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """exp(memory[rows] · anchor / τ) for every sample: (B, 1 + K).

        Scores every bank row against the B anchors with one (N, D)·(D, B) product and gathers the
        sampled ones, which equals the reference's batched product of gathered rows without
        materialising the (B, 1 + K, D) tensor. The backward pass reads this bank: the momentum
        update replaces the banks with updated copies instead of writing into them
        (:meth:`_update_memory`).
        """
        dots = anchor @ memory.detach().T  # (B, N)
        return torch.exp(dots.gather(1, rows) / self.hparams["nce_t"])

    @staticmethod
    @torch.no_grad()
    def _fix_normaliser(z: torch.Tensor, mean_score: torch.Tensor, num_train: int) -> None:
        """Z = mean score · N on the first batch (a negative Z marks it unset), then kept: chosen on the
        device, so no step waits to read Z. mean·N is rounded once to float32, as the reference's
        ``.item() * N`` written into the float buffer is (N < 2^24 makes both products exact first).
        ``mean_score`` is the mean over the global batch (every process's shard in a distributed job)."""
        z.copy_(torch.where(z < 0, mean_score.to(z.dtype) * num_train, z))

    @torch.no_grad()
    def _update_memory(self, name: str, index: torch.Tensor, value: torch.Tensor) -> None:
        """Momentum update of the rows of the batch in bank ``name``; in a distributed job with the rows
        of every process's shard (gathered), so each process's banks stay the single process's. The bank
        is replaced by an updated copy, not written into: the step's backward pass reads the bank the
        scores were computed with (a compiled step whose backward read a bank updated in place got wrong
        gradients from torch.compile; eagerly the two are the same numbers)."""
        memory = getattr(self, name)
        index, value = distributed.gather_rows(index), distributed.gather_rows(value.detach())
        momentum = float(self.hparams["nce_m"])
        mixed = memory[index] * momentum + value.detach() * (1.0 - momentum)
        setattr(self, name, memory.index_copy(0, index, F.normalize(mixed, p=2, dim=1)))

    def contrast(self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The CRD loss (unweighted) for pooled features and dataset indices; updates the banks."""
        v_s = self.embed_s(f_s)
        v_t = self.embed_t(f_t.detach())
        index = index.to(self.memory_s.device)
        rows = self.sample_contrast_indices(index)
        out_s = self._scores(self.memory_t, rows, v_s)
        out_t = self._scores(self.memory_s, rows, v_t)
        num_train = self.memory_s.shape[0]
        # normalising constants from the first (global) batch
        self._fix_normaliser(self.z_s, distributed.global_mean(out_s.detach()), num_train)
        self._fix_normaliser(self.z_t, distributed.global_mean(out_t.detach()), num_train)
        loss = nce_loss(out_s / self.z_s, num_train) + nce_loss(out_t / self.z_t, num_train)
        self._update_memory("memory_s", index, v_s)
        self._update_memory("memory_t", index, v_t)
        return loss

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {"crd": self.hparams["weight"] * self.contrast(s.pooled, t.pooled, batch.index)}
