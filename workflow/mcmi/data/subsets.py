"""Few-shot and zero-shot training sets for the student (the teacher always sees the full set), and
the class-balanced labelled subsets of semi-supervised distillation (the teacher sees only those)."""

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


def labelled_indices(labels: torch.Tensor, count: int, seed: int, num_classes: int | None = None) -> torch.Tensor:
    """``count`` class-balanced indices of labelled samples (semi-supervised distillation, Figure 9),
    chosen from ``seed`` alone and sorted ascending.

    Balanced: every class gets ``count // C`` samples, and ``count % C`` classes (picked by the seed)
    one more. Nested: for one seed, the subset of a smaller count is contained in that of a larger one
    -- each class's samples are taken in one seeded order, and the classes that get an extra sample
    in one seeded order too. So along Figure 9's axis (500, 1,000, 2,000, 4,000 labels) only the number
    of labels changes, not which images were drawn; a new seed draws everything anew. The same seed
    gives the same subset to the MLL and the MCMI teacher (it depends on nothing else).
    """
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if not num_classes <= count <= len(labels):
        raise ValueError(f"labelled count must be between the number of classes ({num_classes}) and the "
                         f"number of samples ({len(labels)}), got {count}")
    gen = torch.Generator().manual_seed(int(seed))
    extra_order = torch.randperm(num_classes, generator=gen)   # classes that get one more, in this order
    quota = torch.full((num_classes,), count // num_classes, dtype=torch.long)
    quota[extra_order[: count % num_classes]] += 1
    keep = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        order = idx[torch.randperm(len(idx), generator=gen)]
        if len(idx) < int(quota[c]):
            raise ValueError(f"labelled count {count}: class {c} has {len(idx)} samples, needs {int(quota[c])}")
        keep.append(order[: int(quota[c])])
    return torch.cat(keep).sort().values


def labelled_train_set(train: Any, count: int, seed: int) -> Any:
    """The ``count`` class-balanced labelled samples of ``train`` drawn with ``seed`` (see
    ``labelled_indices``): what a semi-supervised teacher is trained and fine-tuned on."""
    indices = labelled_indices(train.labels, count, seed, train.num_classes)
    return train.subset(indices, name=f"{train.name}[{count} labelled, seed {seed}]")


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
