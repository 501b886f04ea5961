"""The one trainer: teachers, MCMI fine-tuning, HSAKD teacher heads and students all run through ``fit``.

Per epoch it checkpoints everything needed to resume (model, objective, optimiser, schedule,
random-number state, history) to ``resume_path`` -- a path that is not a declared Snakemake output --
so a killed job continues where it stopped and ends with the same result as an uninterrupted run.
A checkpoint carries the fingerprint of the job spec that wrote it (``resume_key``): one written by
another spec (an edited recipe, a fixed learning rate) or one that cannot be read is discarded with a
log line and the job starts afresh. Any NaN/inf -- in a training loss or in an evaluation (test loss,
accuracy, CMI, LL) -- fails the job with :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.cmi import cmi_and_ll, collect_probs
from mcmi.objectives import Objective
from mcmi.provenance import load_torch, save_torch_atomic


@dataclass
class Recipe:
    """An SGD recipe: step decay at ``milestones`` (x ``lr_decay``) or cosine annealing over the epochs."""

    epochs: int
    lr: float
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"                     # "step" | "cosine"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    lr_decay: float = 0.1
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"recipe needs epochs >= 1, batch_size >= 1, lr > 0; got {asdict(self)}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"recipe schedule must be 'step' or 'cosine', got {self.schedule!r}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate for 1-based ``epoch``."""
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * (epoch - 1) / self.epochs))
        return self.lr * self.lr_decay ** sum(epoch > m for m in self.milestones)


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss or an evaluated metric becomes NaN or infinite: the job stops instead of
    training on garbage or reporting it."""


def check_finite(values: dict[str, Any], what: str) -> None:
    """Raise :class:`NonFiniteLossError` naming every non-finite float among ``values``."""
    bad = {k: v for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(f"{what}: non-finite {bad}")


_GPU_LOCKS: list[Any] = []   # open lock files: a GPU stays claimed while this process lives


def _claim_free_gpu(count: int) -> int:
    """Index of the first visible GPU no other job of this machine has claimed (an flock per GPU), so
    N local jobs on N GPUs spread out although Snakemake sets no CUDA_VISIBLE_DEVICES. Falls back to 0."""
    import fcntl
    import tempfile

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "-")
    for index in range(count):
        handle = open(Path(tempfile.gettempdir()) / f"mcmi-gpu-{visible}-{index}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _GPU_LOCKS.append(handle)
        return index
    return 0


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (torch respects CUDA_VISIBLE_DEVICES; with several visible GPUs each job
    claims a free one), otherwise the CPU. ``requested`` other than 'auto' is used as given."""
    if requested and requested != "auto":
        return torch.device(requested)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    return torch.device(f"cuda:{_claim_free_gpu(count)}" if count > 1 else "cuda")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int, device: torch.device) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (%) of ``model`` on ``data`` in eval mode, no augmentation."""
    model.eval()
    total, loss, top1, top5 = 0, 0.0, 0, 0
    k = min(5, data.num_classes)
    for batch in data.batches(batch_size, device=device):
        logits = model(batch.x)
        loss += float(F.cross_entropy(logits, batch.y, reduction="sum"))
        top = logits.topk(k, dim=1).indices
        top1 += int((top[:, 0] == batch.y).sum())
        top5 += int((top == batch.y[:, None]).any(dim=1).sum())
        total += len(batch)
    result = {"loss": loss / total, "acc": 100.0 * top1 / total, "top5": 100.0 * top5 / total}
    check_finite(result, f"evaluation on {getattr(data, 'name', 'the test set')}")
    return result


@torch.no_grad()
def measure_cmi(model: nn.Module, data: Any, batch_size: int, device: torch.device,
                temperature: float = 1.0) -> dict[str, float]:
    """CMI and LL (nats) of ``model`` over ``data`` at ``temperature``: eval mode, no augmentation."""
    model.eval()
    probs, labels = collect_probs(model, data.batches(batch_size, device=device), temperature)
    cmi, ll = cmi_and_ll(probs, labels, data.num_classes)
    result = {"cmi": float(cmi), "ll": float(ll)}
    check_finite(result, f"CMI/LL on {getattr(data, 'name', 'the training set')} at T={temperature}")
    return result


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _log(message: str) -> None:
    print(message, file=sys.stdout, flush=True)


def _resumable_state(path: str | os.PathLike | None, key: str | None, label: str) -> dict[str, Any] | None:
    """The resume checkpoint at ``path`` if it exists, can be read and was written by the spec with
    fingerprint ``key``; otherwise ``None``, after discarding the file with a log line saying why."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = load_torch(path)
        needed = ("model", "objective", "optimizer", "data_generator", "rng", "history", "epoch")
        if not isinstance(state, dict) or any(k not in state for k in needed):
            raise ValueError("not a resume checkpoint of this trainer")
    except (ValueError, FileNotFoundError) as error:
        _log(f"[{label}] discarding unreadable resume checkpoint {path} ({error}); starting afresh")
        Path(path).unlink(missing_ok=True)
        return None
    if state.get("spec_fingerprint") != key:
        _log(f"[{label}] discarding resume checkpoint {path}: it was written by another job spec "
             f"(fingerprint {str(state.get('spec_fingerprint'))[:12]}, this job {str(key)[:12]}); starting afresh")
        Path(path).unlink(missing_ok=True)
        return None
    return state


def fit(
    model: nn.Module,
    objective: Objective,
    train: Any,
    test: Any,
    recipe: Recipe,
    *,
    seed: int,
    device: torch.device,
    resume_path: str | os.PathLike | None = None,
    resume_key: str | None = None,
    augment: bool = True,
    cmi_every: int = 0,
    stop_after_epoch: int | None = None,
    label: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` (and the objective's own parameters) and return the per-epoch history.

    ``cmi_every`` > 0 adds the training-set CMI/LL every that many epochs (Figure 2);
    ``stop_after_epoch`` ends early with the schedule of the full recipe (early-stopped teacher).
    The data order and augmentation come from a generator seeded with ``seed``. ``resume_key``
    (the job spec's fingerprint) is stored with each resume checkpoint; only a checkpoint with the
    same key is resumed."""
    model.to(device)
    objective.to(device)
    params = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
    if not params:
        raise ValueError(f"{label}: nothing to train (no parameter requires grad)")
    optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    data_gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    start_epoch = 1
    last_epoch = min(recipe.epochs, stop_after_epoch or recipe.epochs)

    state = _resumable_state(resume_path, resume_key, label)
    if state is not None:
        model.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        data_gen.set_state(state["data_generator"])
        _set_rng_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        _log(f"[{label}] resuming from {resume_path} after epoch {state['epoch']}")

    for epoch in range(start_epoch, last_epoch + 1):
        lr = recipe.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        objective.train()
        tic = time.time()
        seen, correct, loss_sum = 0, 0, 0.0
        term_sums: dict[str, float] = {}
        for step, batch in enumerate(train.batches(recipe.batch_size, shuffle=True, augment=augment,
                                                   generator=data_gen, device=device)):
            out = objective.step(model, batch, epoch)
            loss = out.loss
            if not torch.isfinite(loss):
                terms = {k: v.item() for k, v in out.terms.items()}
                raise NonFiniteLossError(f"[{label}] non-finite loss at epoch {epoch}, step {step}: {terms}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(batch)
            seen += n
            loss_sum += loss.item() * n
            correct += int((out.logits.argmax(dim=1) == batch.y[: out.logits.shape[0]]).sum())
            for name, value in out.terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + value.item() * n
        evaluation = evaluate(model, test, max(recipe.batch_size, 256), device)
        record = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                  "test_loss": evaluation["loss"], "test_acc": evaluation["acc"], "test_top5": evaluation["top5"],
                  **{f"loss_{k}": v / seen for k, v in term_sums.items()}, "seconds": time.time() - tic}
        if cmi_every and (epoch % cmi_every == 0 or epoch == last_epoch):
            cmi = measure_cmi(model, train, max(recipe.batch_size, 256), device)
            record.update(train_cmi=cmi["cmi"], train_ll=cmi["ll"])
        check_finite(record, f"[{label}] epoch {epoch}")
        history.append(record)
        eta = record["seconds"] * (last_epoch - epoch)
        _log(f"[{label}] epoch {epoch}/{last_epoch} lr {lr:.4g} loss {record['train_loss']:.4f} "
             f"train {record['train_acc']:.2f}% test {record['test_acc']:.2f}% "
             f"({record['seconds']:.1f}s, eta {eta / 60:.1f} min)"
             + (f" cmi {record['train_cmi']:.4f} ll {record['train_ll']:.4f}" if "train_cmi" in record else ""))
        if resume_path is not None:
            save_torch_atomic(resume_path, {
                "model": model.state_dict(), "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(), "data_generator": data_gen.get_state(),
                "rng": _rng_state(), "history": history, "epoch": epoch, "spec_fingerprint": resume_key,
            })
    return history
