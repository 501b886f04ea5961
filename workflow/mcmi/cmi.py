"""Conditional mutual information (CMI) and log-likelihood (LL) of a classifier, and the MCMI objective.

Definitions (paper eqs. 12-13, natural log, nats):
    P_x  = softmax(logits(x) / T)
    Q_y  = mean of P_x over the samples x of class y                   (class centroid)
    CMI  = (1/N) sum_y sum_{x in D_y} KL(P_x || Q_y)
    CMI_y = (1/N_y) sum_{x in D_y} KL(P_x || Q_y)   (per class, Table 8; CMI = sum_y (N_y/N) CMI_y)
    LL   = (1/N) sum_x log P_x[y]                                       (<= 0)
    H    = (1/N) sum_x H(P_x), H(p) = -sum_k p_k log p_k                  (mean output entropy)
The MCMI fine-tuning objective maximises LL + lambda * CMI with Q fixed, i.e. minimises
CE(x, y) - lambda * KL(P_x || Q_y) per batch.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F

_EPS = 1e-12


def class_sums(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class y: the sum of ``probs`` over rows with label y (num_classes, K) and their number
    (num_classes, 1), in float64. Sums of disjoint parts of a dataset add up to the whole's."""
    probs = probs.to(torch.float64)
    sums = torch.zeros(num_classes, probs.shape[1], dtype=probs.dtype, device=probs.device)
    sums.index_add_(0, labels, probs)
    counts = torch.bincount(labels, minlength=num_classes).to(probs.dtype).unsqueeze(1)
    return sums, counts


def centroids_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Q[y] = sums[y] / counts[y] (:func:`class_sums`); a class without samples gets a uniform row (it
    contributes nothing to the CMI). Rows are re-normalised to sum to one."""
    q = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, 1.0 / sums.shape[1]))
    return q / q.sum(dim=1, keepdim=True)


def class_centroids(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Q[y] = mean of ``probs`` over rows with label y; (num_classes, K). Classes without samples get
    a uniform row (they contribute nothing to the CMI). Rows are re-normalised to sum to one."""
    return centroids_from_sums(*class_sums(probs, labels, num_classes))


def kl_to_centroids(probs: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(P_x || Q_{y_x}) in nats; 0 * log 0 is taken as 0."""
    q = centroids[labels].to(probs.dtype)
    terms = probs * (torch.log(probs.clamp_min(_EPS)) - torch.log(q.clamp_min(_EPS)))
    return torch.where(probs > 0, terms, torch.zeros_like(terms)).sum(dim=1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy H(P_x) = -sum_k p_k log p_k in nats over the last axis; 0 * log 0 is taken
    as 0. Differentiable (the entropy-regularised teacher's objective uses it too)."""
    terms = probs * torch.log(probs.clamp_min(_EPS))
    return -torch.where(probs > 0, terms, torch.zeros_like(terms)).sum(dim=-1)


def cmi_and_ll(
    probs: torch.Tensor, labels: torch.Tensor, num_classes: int, centroids: torch.Tensor | None = None
) -> tuple[float, float]:
    """Empirical CMI and LL of predictions ``probs`` (N, K) with labels (N,).

    Centroids are computed from the same predictions unless given."""
    probs = probs.to(torch.float64)
    if centroids is None:
        centroids = class_centroids(probs, labels, num_classes)
    cmi = kl_to_centroids(probs, labels, centroids.to(torch.float64)).mean()
    ll = torch.log(probs.gather(1, labels.unsqueeze(1)).clamp_min(_EPS)).mean()
    return float(cmi), float(ll)


def cmi_and_ll_from_shards(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """:func:`cmi_and_ll` of the whole dataset when each process of a distributed job holds its own
    rows (``probs``, ``labels``): the class sums, the KL sum, the log-likelihood sum and the count are
    summed over the processes (float64; equal to the single-process values up to the order of the
    additions)."""
    from mcmi.distributed import all_sum

    probs = probs.to(torch.float64)
    sums, counts = class_sums(probs, labels, num_classes)
    centroids = centroids_from_sums(all_sum(sums), all_sum(counts))
    kl = kl_to_centroids(probs, labels, centroids).sum()
    ll = torch.log(probs.gather(1, labels.unsqueeze(1)).clamp_min(_EPS)).sum()
    total = all_sum(torch.stack([kl, ll, torch.tensor(float(len(labels)), dtype=torch.float64)]))
    return float(total[0] / total[2]), float(total[1] / total[2])


def per_class_cmi(
    probs: torch.Tensor, labels: torch.Tensor, num_classes: int, centroids: torch.Tensor | None = None
) -> torch.Tensor:
    """CMI(f; Y=y) = I(X; Y_hat | Y=y) = (1/N_y) sum_{x in D_y} KL(P_x || Q_y) for every class y, as
    (num_classes,) float64; NaN for a class without samples. The mean over the class's own samples,
    not weighted by P(y) (paper eq. 10 and appendix A.4.1; Table 8's values, 0.29-1.23, are such
    means). Q_y depends on class y's samples only, so ``probs`` may hold just the classes of interest.
    Centroids are computed from the same predictions unless given."""
    probs = probs.to(torch.float64)
    if centroids is None:
        centroids = class_centroids(probs, labels, num_classes)
    kl = kl_to_centroids(probs, labels, centroids.to(torch.float64))
    sums = torch.zeros(num_classes, dtype=torch.float64, device=probs.device).index_add_(0, labels, kl)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))


@torch.no_grad()
def collect_probs(
    model: torch.nn.Module, batches: Iterable, temperature: float = 1.0, batches_per_copy: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax(logits / T) of ``model`` over ``batches`` (objects with .x and .y), on the CPU. On a GPU
    the results are copied to the host every ``batches_per_copy`` batches, not every batch (each copy
    waits for the device; the chunks bound the device memory they hold)."""
    probs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def copy() -> None:
        if pending:
            probs.append(torch.cat([p for p, _ in pending]).cpu())
            labels.append(torch.cat([y for _, y in pending]).cpu())
            pending.clear()

    for batch in batches:
        logits = model(batch.x)
        pending.append((F.softmax(logits.float() / temperature, dim=1), batch.y))
        if len(pending) == batches_per_copy:
            copy()
    copy()
    return torch.cat(probs), torch.cat(labels)


def mcmi_loss(
    logits: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, lam: float
) -> dict[str, torch.Tensor]:
    """The MCMI fine-tuning loss terms: CE and -lambda * KL(P_x || Q_y), Q fixed (no gradient)."""
    log_p = F.log_softmax(logits, dim=1)
    q = centroids.to(log_p.dtype).detach()[labels]
    kl = (log_p.exp() * (log_p - torch.log(q.clamp_min(_EPS)))).sum(dim=1).mean()
    return {"ce": F.cross_entropy(logits, labels), "cmi": -lam * kl}


@torch.no_grad()
def compute_centroids(model: torch.nn.Module, train: Any, batch_size: int, device: torch.device,
                      mode: str, generator: torch.Generator) -> torch.Tensor:
    """Q_y of ``model`` on the training set. ``mode`` 'eval': eval mode, no augmentation (the paper's
    reading); 'train_augmented': train mode with augmentation, as the authors' code (BatchNorm running
    statistics are updated as a side effect there)."""
    if mode not in ("eval", "train_augmented"):
        raise ValueError(f"mcmi centroid_pass must be 'eval' or 'train_augmented', got {mode!r}")
    from mcmi import distributed

    augmented = mode == "train_augmented"
    model.train(augmented)
    batches = train.batches(batch_size, shuffle=augmented, augment=augmented,
                            generator=generator if augmented else None, device=device, **distributed.shard_kwargs())
    probs, labels = collect_probs(model, batches)
    if not distributed.ranks().active:
        return class_centroids(probs, labels, train.num_classes)
    sums, counts = class_sums(probs, labels, train.num_classes)   # each process's rows, summed over them
    return centroids_from_sums(distributed.all_sum(sums), distributed.all_sum(counts))
