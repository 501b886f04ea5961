"""Training a :class:`~mcmi.synthetic.stack.MLPStack`: every member one epoch at a time, in C++ or torch.

Member m visits the data in ``randperm`` order from a generator seeded with its order seed, so a member
is the same computation as one model trained alone by the plain autograd + torch.optim loop (the test
oracle ``tests/synthetic_oracle.py``). Two kernels run an epoch: the fused C++ one
(``mcmi/kernels/mlp_stack.cpp``; each member runs its whole epoch with its weights and Adam state in
cache, and the matrix products are register-blocked) and the batched torch one
(:meth:`MLPStack.step_grads` plus a stacked optimizer). Both are tested against torch.optim.
"""

from __future__ import annotations

import math
import time
from types import ModuleType
from typing import Any, Callable

import torch

from mcmi.kernels import mlp_stack
from mcmi.synthetic.stack import ADAM_BETAS, ADAM_EPS, MLPStack, make_optimizer

# One epoch: (perms (M, N) data order per member, lr) -> per-member loss sums (M,), float64.
EpochRunner = Callable[[torch.Tensor, float], torch.Tensor]


def select_kernel(choice: str, log: Callable[[str], None] = print) -> ModuleType | None:
    """The compiled epoch kernel for ``choice`` ("cpp": required, "auto": if it builds, "torch": none)."""
    if choice == "torch":
        return None
    try:
        return mlp_stack()
    except RuntimeError as error:
        if choice == "cpp":
            raise
        log(f"[synthetic] {error}; using the batched torch steps instead")
        return None


def epoch_lr(lr: float, epoch: int, epochs: int, schedule: str) -> float:
    """Learning rate of 0-based ``epoch``: constant, or cosine annealed per epoch to 0."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def train_stack(
    stack: MLPStack,
    x: torch.Tensor,
    targets: torch.Tensor,
    order_seeds: list[int],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adam",
    momentum: float = 0.9,
    schedule: str = "constant",
    lam: torch.Tensor | None = None,
    log_centroids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    kernel: ModuleType | None = None,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    stage: str = "train",
    log_every: int = 10,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every member of ``stack`` on shared inputs x (N, D) against its soft targets (M, N, K).

    Member m visits the data in ``randperm`` order from a generator seeded ``order_seeds[m]`` (members
    with the same seed share the order); batches of ``batch_size``, the last one partial. With ``lam``
    (M,), ``log_centroids`` (M, K, K) and ``labels`` (N,) the loss is the MCMI objective CE - lam * KL(P_x
    || Q_y). ``kernel`` (from :func:`mcmi.kernels.mlp_stack`) runs each epoch in fused C++; None runs the
    batched torch steps. With ``val_data`` (x_val (V, D), y_val (V,)) every member's validation accuracy is
    measured after each epoch and each member ends with the weights of its epoch of best validation accuracy
    (the first such epoch, as a strict ``>`` keeps it); the history's epochs then carry ``val_acc`` per member
    and the last one ``best_epochs``. Raises RuntimeError on a non-finite loss or validation output. Returns
    one summary dict per epoch."""
    if kernel is not None:
        run_epoch = _cpp_epoch_runner(kernel, stack, x, targets, batch_size, optimizer, momentum, lam,
                                      log_centroids, labels)
    else:
        run_epoch = _torch_epoch_runner(stack, x, targets, batch_size, optimizer, momentum, lam, log_centroids,
                                        labels)
    generators = {seed: torch.Generator().manual_seed(seed) for seed in dict.fromkeys(order_seeds)}
    history, start, num = [], time.perf_counter(), x.shape[0]
    best = None if val_data is None else BestValidation(stack)
    for epoch in range(epochs):
        perms_by_seed = {seed: torch.randperm(num, generator=gen) for seed, gen in generators.items()}
        perms = torch.stack([perms_by_seed[seed] for seed in order_seeds])
        rate = epoch_lr(lr, epoch, epochs, schedule)
        mean_loss = run_epoch(perms, rate) / num
        if not torch.isfinite(mean_loss).all():
            raise RuntimeError(f"non-finite loss in stage {stage!r} at epoch {epoch + 1}: {mean_loss.tolist()}")
        elapsed = time.perf_counter() - start
        entry = {"stage": stage, "epoch": epoch + 1, "lr": rate, "loss_mean": float(mean_loss.mean()),
                 "loss_min": float(mean_loss.min()), "loss_max": float(mean_loss.max()),
                 "elapsed_s": round(elapsed, 2)}
        if best is not None:
            entry["val_acc"] = best.update(epoch + 1, *val_data)
        history.append(entry)
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            log(f"[{stage}] epoch {epoch + 1}/{epochs} members={stack.size} "
                f"loss={float(mean_loss.mean()):.4f} elapsed={elapsed:.1f}s")
    if best is not None and history:
        history[-1]["best_epochs"] = best.restore()
    return history


class BestValidation:
    """Per-member copy of the weights of the epoch of best validation accuracy (``>``: the first best).

    The copy is one flat buffer like the stack's; after an epoch only the members that improved are
    copied (a masked copy per layer view), so it costs far less than the epoch itself."""

    def __init__(self, stack: MLPStack) -> None:
        self.stack = stack
        self.best_flat = stack.flat.clone()
        self.best_views = stack.views_of(self.best_flat)
        self.best_acc = torch.full((stack.size,), -math.inf, dtype=torch.float64)
        self.best_epoch = torch.zeros(stack.size, dtype=torch.long)

    @torch.no_grad()
    def update(self, epoch: int, x_val: torch.Tensor, y_val: torch.Tensor) -> list[float]:
        """Measure every member on the validation split; keep the weights of those that improved."""
        logits = torch.cat([self.stack.logits(part) for part in x_val.split(8192)], dim=1)
        if not torch.isfinite(logits).all():
            raise RuntimeError(f"non-finite validation output at epoch {epoch}")
        acc = 100.0 * (logits.argmax(-1) == y_val).to(torch.float64).mean(-1)
        improved = acc > self.best_acc
        if improved.any():
            for best_view, view in zip(self.best_views, self.stack.params):
                best_view[improved] = view[improved]
            self.best_acc[improved] = acc[improved]
            self.best_epoch[improved] = epoch
        return [round(float(a), 4) for a in acc]

    def restore(self) -> list[int]:
        """Put the best weights into the stack; return each member's best epoch (1-based)."""
        self.stack.flat.copy_(self.best_flat)
        return self.best_epoch.tolist()


def _cpp_epoch_runner(
    kernel: ModuleType, stack: MLPStack, x: torch.Tensor, targets: torch.Tensor, batch_size: int, optimizer: str,
    momentum: float, lam: torch.Tensor | None, log_centroids: torch.Tensor | None, labels: torch.Tensor | None,
) -> EpochRunner:
    """Epochs in the compiled kernel, which keeps the optimizer state (Adam moments, or SGD momentum in
    the first buffer) in tensors made here and counts the steps done for Adam's bias correction."""
    num, dtype = x.shape[0], stack.flat.dtype
    exp_avg, exp_avg_sq = stack.zeros_like_params(), stack.zeros_like_params()
    x, targets = x.contiguous(), targets.to(dtype)
    if lam is None:
        extras = (torch.empty(0, dtype=dtype), torch.empty(0, dtype=dtype), torch.empty(0, dtype=torch.long))
    else:
        extras = (lam.to(dtype).contiguous(), log_centroids.to(dtype).contiguous(), labels.contiguous())
    steps_done = [0]

    def cpp_epoch(perms: torch.Tensor, rate: float) -> torch.Tensor:
        losses = kernel.train_epoch(x, targets, perms.contiguous(), stack.params, exp_avg, exp_avg_sq,
                                    steps_done[0], rate, optimizer == "adam", *ADAM_BETAS, ADAM_EPS, momentum,
                                    batch_size, *extras)
        steps_done[0] += math.ceil(num / batch_size)
        return losses

    return cpp_epoch


def _torch_epoch_runner(
    stack: MLPStack, x: torch.Tensor, targets: torch.Tensor, batch_size: int, optimizer: str, momentum: float,
    lam: torch.Tensor | None, log_centroids: torch.Tensor | None, labels: torch.Tensor | None,
) -> EpochRunner:
    """Epochs of batched torch steps: :meth:`MLPStack.step_grads` then one stacked optimizer step."""
    num, dtype = x.shape[0], stack.flat.dtype
    opt = make_optimizer(stack, optimizer, momentum)
    members = torch.arange(stack.size).unsqueeze(1)
    lam_view = None if lam is None else lam.to(dtype).view(-1, 1, 1)

    def torch_epoch(perms: torch.Tensor, rate: float) -> torch.Tensor:
        x_epoch = x[perms]
        t_epoch = targets[members, perms]
        q_epoch = None if lam is None else log_centroids[members, labels[perms]]
        loss_sum = torch.zeros(stack.size, dtype=torch.float64)
        for begin in range(0, num, batch_size):
            end = begin + batch_size
            q_batch = None if q_epoch is None else q_epoch[:, begin:end]
            loss = stack.step_grads(x_epoch[:, begin:end], t_epoch[:, begin:end], lam_view, q_batch)
            loss_sum.add_(loss, alpha=min(end, num) - begin)
            opt.step(rate)
        return loss_sum

    return torch_epoch
