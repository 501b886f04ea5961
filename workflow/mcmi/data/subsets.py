"""Few-shot and zero-shot training sets for the student (the teacher always sees the full set)."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def few_shot_indices(labels: torch.Tensor, alpha_percent: float, seed: int) -> torch.Tensor:
    """Indices keeping round(alpha% of each class), chosen at random from ``seed`` alone, so the
    partition is the same whichever teacher the student learns from. Sorted ascending."""
    if not 0 < alpha_percent <= 100:
        raise ValueError(f"few-shot alpha_percent must be in (0, 100], got {alpha_percent}")
    gen = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        count = max(1, int(round(len(idx) * alpha_percent / 100.0)))
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:count]])
    return torch.cat(keep).sort().values


def without_classes_indices(labels: torch.Tensor, removed: Sequence[int]) -> torch.Tensor:
    """Indices of the samples whose class is not in ``removed`` (zero-shot student training set)."""
    removed_t = torch.tensor(list(removed), dtype=labels.dtype)
    if removed_t.numel() and (removed_t.min() < 0 or removed_t.max() >= int(labels.max()) + 1):
        raise ValueError(f"zero-shot removed classes {list(removed)} out of range for {int(labels.max()) + 1} classes")
    kept = (~torch.isin(labels, removed_t)).nonzero().flatten()
    if kept.numel() == 0:
        raise ValueError(f"zero-shot removed classes {list(removed)} remove every training sample")
    return kept


def student_train_set(train: Any, *, alpha_percent: float | None = None, subset_seed: int = 0,
                      removed_classes: Sequence[int] | None = None) -> Any:
    """The student's training set: ``alpha_percent`` % of each class drawn with ``subset_seed``
    (few-shot), or every class but ``removed_classes`` (zero-shot), or all of ``train``."""
    if alpha_percent is not None:
        return train.subset(few_shot_indices(train.labels, alpha_percent, subset_seed),
                            name=f"{train.name}[{alpha_percent}%]")
    if removed_classes is not None:
        return train.subset(without_classes_indices(train.labels, removed_classes),
                            name=f"{train.name}[-{list(removed_classes)}]")
    return train
