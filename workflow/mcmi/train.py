"""The one trainer: teachers, MCMI fine-tuning, HSAKD teacher heads and students all run through ``fit``.

Per epoch it checkpoints everything needed to resume (model, objective, optimiser, schedule,
random-number state, history) to ``resume_path`` -- a path that is not a declared Snakemake output --
so a killed job continues where it stopped and ends with the same result as an uninterrupted run.
A checkpoint carries the key of the job that wrote it (``resume_key``; the workflow's stages pass their
content identity, :mod:`mcmi.identity`: spec, code and the digests of every input file): one written by
another job (an edited recipe, a retrained teacher under the same path, changed code) or one that cannot
be read is discarded with a log line saying what changed, and the job starts afresh. Any NaN/inf -- in a training loss or in an evaluation (test loss,
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

from mcmi import capture, distributed
from mcmi.cmi import cmi_and_ll, cmi_and_ll_from_shards, collect_probs, entropy
from mcmi.identity import Identity
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


def _claim_free_gpu(count: int, strict: bool = False) -> int | None:
    """Index of the first visible GPU no other job of this machine has claimed (an flock per GPU), so
    N local jobs on N GPUs spread out although Snakemake sets no CUDA_VISIBLE_DEVICES (and the N
    processes of a distributed job take N different GPUs). Falls back to 0, or ``None`` when ``strict``."""
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
    return None if strict else 0


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (torch respects CUDA_VISIBLE_DEVICES; with several visible GPUs each job
    claims a free one), otherwise the CPU. ``requested`` other than 'auto' is used as given. On a
    GPU, cuDNN benchmarks its kernels once for the fixed input shapes (``cudnn.benchmark``)."""
    if requested and requested != "auto":
        from mcmi.pipeline.config import check_device_here

        check_device_here(requested, "the job's device")     # one line, not torch's error, where it is missing
        device = torch.device(requested)
    elif not torch.cuda.is_available():
        device = torch.device("cpu")
    else:
        count = torch.cuda.device_count()
        device = torch.device(f"cuda:{_claim_free_gpu(count)}" if count > 1 else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@torch.no_grad()
def confusion_matrix(model: nn.Module, data: Any, device: torch.device) -> list[list[int]]:
    """Counts of (true class, predicted class) of ``model`` on ``data`` in eval mode (each process of
    a distributed job counts its rows; the counts are summed). Counted on the device and read once."""
    model.eval()
    c = data.num_classes
    counts = torch.zeros(c * c, dtype=torch.int64, device=device)
    for batch in data.batches(256, device=device, **distributed.shard_kwargs()):
        cells = batch.y * c + model(batch.x).argmax(dim=1)
        counts.index_add_(0, cells, torch.ones_like(cells))      # bincount's size would be read on the host
    return distributed.all_sum(counts).view(c, c).tolist()


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int, device: torch.device) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (%) of ``model`` on ``data`` in eval mode, no augmentation. The
    sums are kept on the device (float64: the loss summed as before, the counts exact) and read once.
    In a distributed job each process evaluates its rows of every batch and the sums are all-reduced
    (the counts exactly; the loss up to the order of its float additions)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)     # loss, top-1, top-5
    total = 0
    k = min(5, data.num_classes)
    for batch in data.batches(batch_size, device=device, **distributed.shard_kwargs()):
        logits = model(batch.x)
        top = logits.topk(k, dim=1).indices
        sums += torch.stack([F.cross_entropy(logits, batch.y, reduction="sum").to(torch.float64),
                             (top[:, 0] == batch.y).sum().to(torch.float64),
                             (top == batch.y[:, None]).any(dim=1).sum().to(torch.float64)])
        total += len(batch)
    if distributed.ranks().active:
        sums = distributed.all_sum(torch.cat([sums, torch.tensor([float(total)], dtype=torch.float64,
                                                                 device=device)]))
    loss, top1, top5, *rest = sums.tolist()
    total = int(rest[0]) if rest else total
    result = {"loss": loss / total, "acc": 100.0 * int(top1) / total, "top5": 100.0 * int(top5) / total}
    check_finite(result, f"evaluation on {getattr(data, 'name', 'the test set')}")
    return result


@torch.no_grad()
def measure_cmi(model: nn.Module, data: Any, batch_size: int, device: torch.device,
                temperature: float = 1.0) -> dict[str, float]:
    """CMI, LL and the mean output entropy H(P_x) (nats) of ``model`` over ``data`` at ``temperature``,
    from one pass in eval mode without augmentation. In a distributed job each process takes its rows
    and the class sums, KL, log-likelihood and entropy sums are all-reduced
    (:func:`mcmi.cmi.cmi_and_ll_from_shards`)."""
    model.eval()
    probs, labels = collect_probs(model, data.batches(batch_size, device=device, **distributed.shard_kwargs()),
                                  temperature)
    combine = cmi_and_ll_from_shards if distributed.ranks().active else cmi_and_ll
    cmi, ll = combine(probs, labels, data.num_classes)
    entropy_and_count = torch.stack([entropy(probs.to(torch.float64)).sum(),
                                     torch.tensor(float(len(labels)), dtype=torch.float64)])
    if distributed.ranks().active:
        entropy_and_count = distributed.all_sum(entropy_and_count)
    result = {"cmi": float(cmi), "ll": float(ll), "entropy": float(entropy_and_count[0] / entropy_and_count[1])}
    check_finite(result, f"CMI/LL/entropy on {getattr(data, 'name', 'the training set')} at T={temperature}")
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
    """A progress line (in a distributed job, rank 0's only)."""
    if distributed.ranks().main:
        print(message, file=sys.stdout, flush=True)


def _resumable_state(path: str | os.PathLike | None, key: str | None, label: str,
                     parts: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The resume checkpoint at ``path`` if it exists, can be read and was written by the job with
    key ``key``; otherwise ``None``, after discarding the file with a log line saying why (what
    changed, when ``parts``, the identity behind the key, is given)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = load_torch(path)
        needed = ("model", "objective", "optimizer", "data_generator", "rng", "history", "epoch")
        if not isinstance(state, dict) or any(k not in state for k in needed):
            raise ValueError("not a resume checkpoint of this trainer")
    except (ValueError, FileNotFoundError) as error:
        _log(f"[{label}] discarding unreadable resume checkpoint {path} ({error}); starting afresh")
        _discard(path)
        return None
    if state.get("resume_key") != key:
        why = (f"key {str(state.get('resume_key'))[:12]}, this job {str(key)[:12]}" if parts is None else
               Identity.from_dict(parts).changes_from(state.get("resume_parts")))
        _log(f"[{label}] discarding resume checkpoint {path}: it was written by another job ({why}); "
             f"starting afresh")
        _discard(path)
        return None
    return state


def _discard(path: str | os.PathLike) -> None:
    """Delete a resume checkpoint that will not be used (rank 0 alone deletes; every rank decides alike)."""
    if distributed.ranks().main:
        Path(path).unlink(missing_ok=True)


@dataclass
class Precision:
    """Numerics of training steps: ``fp32`` (the reference code's) or ``bf16`` autocast, the
    channels-last memory layout for convolutions, and whether steps are compiled (``compile``:
    ``none`` | ``default`` | ``reduce-overhead``, :mod:`mcmi.capture`). Evaluation always runs eagerly
    in fp32."""

    dtype: str = "fp32"                    # "fp32" | "bf16"
    channels_last: bool = False
    compile: str = "none"

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.dtype!r}")
        capture.check_mode(self.compile)

    def autocast(self, device: torch.device) -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16")

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x


class Member:
    """One model being trained with its objective, optimiser, data-order generator, random-number
    state, history and resume checkpoint. :func:`fit_members` trains several at once; members at the
    same epoch see the same batches (and share a frozen teacher's forward pass)."""

    def __init__(self, model: nn.Module, objective: Objective, recipe: Recipe, *, seed: int,
                 device: torch.device, label: str, resume_path: str | os.PathLike | None = None,
                 resume_key: str | None = None, resume_parts: dict[str, Any] | None = None, cmi_every: int = 0,
                 stop_after_epoch: int | None = None) -> None:
        self.model, self.objective, self.recipe, self.label = model, objective, recipe, label
        self.resume_path, self.resume_key, self.resume_parts = resume_path, resume_key, resume_parts
        self.cmi_every = cmi_every
        model.to(device)
        objective.to(device)
        params = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
        if not params:
            raise ValueError(f"{label}: nothing to train (no parameter requires grad)")
        self.optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                                         weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
        self.data_gen = torch.Generator().manual_seed(seed)
        self.rng = _rng_state()            # this member's own stream for the objective's sampling
        ranks = distributed.ranks()
        if ranks.rank > 0:                 # each process of a distributed job draws its own numbers
            outer = _rng_state()
            seed_everything(distributed.rank_seed(seed, ranks.rank))
            self.rng = _rng_state()
            _set_rng_state(outer)
        self.history: list[dict[str, float]] = []
        self.epochs_done = 0
        self.last_epoch = min(recipe.epochs, stop_after_epoch or recipe.epochs)
        self.failure: str | None = None
        self.sums: _StepSums | None = None     # this epoch's running sums (set by the epoch loop)
        self.tic = 0.0
        self.step_module: nn.Module | None = None   # the DistributedDataParallel step of a distributed job
        self.step_fn: Any = objective.step           # (model, batch, epoch) -> StepOutput; compiled or not
        self.compile_mode = "none"                   # how step_fn runs (mcmi.capture)
        state = _resumable_state(resume_path, resume_key, label, resume_parts)
        if state is not None:
            model.load_state_dict(state["model"])
            objective.load_state_dict(state["objective"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.data_gen.set_state(state["data_generator"])
            self.rng = state["rng_by_rank"][ranks.rank] if ranks.active else state["rng"]
            self.history = list(state["history"])
            self.epochs_done = int(state["epoch"])
            _log(f"[{label}] resuming from {resume_path} after epoch {state['epoch']}")
        if ranks.active:
            distributed.check_same(self.epochs_done, f"the epoch [{label}] resumes after (resume checkpoint "
                                                     f"{resume_path})")

    @property
    def done(self) -> bool:
        return self.failure is not None or self.epochs_done >= self.last_epoch

    def save(self) -> None:
        """Write the resume checkpoint (rank 0 writes it, with every rank's random stream)."""
        if self.resume_path is None:
            return
        ranks = distributed.ranks()
        extra = {"rng_by_rank": distributed.gather_objects(self.rng)} if ranks.active else {}
        if ranks.main:
            save_torch_atomic(self.resume_path, {
                "model": self.model.state_dict(), "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(), "data_generator": self.data_gen.get_state(),
                "rng": self.rng, "history": self.history, "epoch": self.epochs_done,
                "resume_key": self.resume_key, "resume_parts": self.resume_parts, **extra,
            })


class _StepSums:
    """Per-epoch sums kept on the device (float64, as the host sums they replace), so a step never
    waits for the device; read once at the end of the epoch (:meth:`failure`, then :meth:`means`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seen = 0
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.terms: dict[str, torch.Tensor] = {}
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_terms: dict[str, torch.Tensor] = {}

    def add(self, step: int, out: Any, y: torch.Tensor) -> None:
        n = len(y)
        self.seen += n
        loss = out.loss.detach()
        bad = ~torch.isfinite(loss)
        first = (self.first_bad_step < 0) & bad
        self.first_bad_step = torch.where(first, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        for name, value in out.terms.items():
            value = value.detach().to(torch.float64)
            self.terms[name] = self.terms.get(name, torch.zeros((), dtype=torch.float64, device=self.device)) + value * n
            held = self.bad_terms.get(name, torch.zeros((), dtype=torch.float64, device=self.device))
            self.bad_terms[name] = torch.where(first, value, held)
        self.loss += loss.to(torch.float64) * n
        self.correct += (out.logits.detach().argmax(dim=1) == y[: out.logits.shape[0]]).sum()

    def failure(self, label: str, epoch: int) -> str | None:
        """The epoch's first non-finite loss, named (``None``: every loss was finite): one read."""
        names = list(self.bad_terms)
        step, *values = torch.stack([self.first_bad_step.to(torch.float64),
                                     *[self.bad_terms[k] for k in names]]).tolist()
        if step < 0:
            return None
        where = f" ({distributed.ranks()})" if distributed.ranks().active else ""
        return f"[{label}] non-finite loss at epoch {epoch}, step {int(step)}{where}: {dict(zip(names, values))}"

    def reduce(self) -> None:
        """Sum this epoch's sums over the processes of a distributed job (counts exactly)."""
        names = sorted(self.terms)
        local = torch.stack([self.loss, self.correct.to(torch.float64),
                             torch.tensor(float(self.seen), dtype=torch.float64, device=self.device),
                             *[self.terms[k] for k in names]])
        total = distributed.all_sum(local)
        self.loss, self.correct, self.seen = total[0], total[1].round().to(torch.int64), int(total[2].round())
        self.terms = {k: total[3 + i] for i, k in enumerate(names)}

    def means(self) -> dict[str, float]:
        """The epoch's mean loss, training accuracy (%) and mean loss terms (``loss_<term>``): one read."""
        names = list(self.terms)
        loss, correct, *terms = torch.stack([self.loss, self.correct.to(torch.float64),
                                             *[self.terms[k] for k in names]]).tolist()
        return {"train_loss": loss / self.seen, "train_acc": 100.0 * int(correct) / self.seen,
                **{f"loss_{k}": v / self.seen for k, v in zip(names, terms)}}


def fit_members(members: list[Member], train: Any, test: Any, *, device: torch.device, augment: bool = True,
                teacher_cache: Any = None, precision: Precision | None = None) -> None:
    """Train every member to its last epoch. Members at the same epoch form a cohort that shares
    each batch (their data-order generators are in the same state: same seed, batch size and epoch)
    and, through ``teacher_cache`` (cleared per batch), the frozen teacher's forward pass. Each member
    draws its objective's own random numbers from its own stream, so a member trained in a group
    equals the same member trained alone. A member whose loss goes non-finite stops (its last good
    checkpoint stays); the others go on and are saved; then :class:`NonFiniteLossError` names it."""
    precision = precision or Precision()
    _prepare_steps(members, teacher_cache, precision.compile)
    if distributed.ranks().active:
        _prepare_distributed(members, train)
    while not all(m.done for m in members):
        epoch = min(m.epochs_done for m in members if not m.done) + 1
        cohort = [m for m in members if not m.done and m.epochs_done + 1 == epoch]
        batch_sizes = {m.recipe.batch_size for m in cohort}
        if len(batch_sizes) != 1:
            raise ValueError(f"members trained together need one batch size, got {sorted(batch_sizes)}")
        _train_epoch(cohort, epoch, train, device, augment, teacher_cache, precision)
        for member in cohort:
            if member.failure is None:
                _end_epoch(member, epoch, train, test, device)
    failed = [m.failure for m in members if m.failure]
    if failed:
        raise NonFiniteLossError("; ".join(failed))


def _prepare_steps(members: list[Member], teacher_cache: Any, mode: str) -> None:
    """Compile the shared teacher's forward pass and each member's step in ``mode`` (``none``: eager;
    :mod:`mcmi.capture`); a member whose step cannot be compiled, or not captured as asked, is named in
    the log with why."""
    if mode == "none":
        return
    capture.configure(len(members))
    if teacher_cache is not None and hasattr(teacher_cache, "set_compile"):
        teacher_cache.set_compile(mode)
    for index, member in enumerate(members):
        if member.done or member.compile_mode != "none":
            continue
        member.compile_mode, why = capture.member_mode(member.objective, mode)
        if why:
            _log(f"[{member.label}] compile {mode}: {why}")
        if member.compile_mode != "none":
            member.step_fn = capture.compile_step(member.objective, member.compile_mode, f"member{index}_step")


def _prepare_distributed(members: list[Member], train: Any) -> None:
    """Before a distributed job trains: every batch can give each process a sample, BatchNorm layers
    follow the job's mode, and each member steps through its own DistributedDataParallel module."""
    ranks = distributed.ranks()
    for member in members:
        distributed.check_batches(len(train), member.recipe.batch_size, ranks.world, member.label)
        if member.step_module is None and not member.done:
            distributed.sync_batchnorm(member.model)
            for name, child in list(member.objective.named_children()):
                if name != "teacher":     # a frozen teacher runs in eval mode: plain BatchNorm
                    setattr(member.objective, name, distributed.sync_batchnorm(child))
            member.step_module = distributed.data_parallel(member.model, member.objective, member.step_fn)


def _train_epoch(cohort: list[Member], epoch: int, train: Any, device: torch.device, augment: bool,
                 teacher_cache: Any, precision: Precision) -> None:
    data_gen = torch.Generator().manual_seed(0)
    data_gen.set_state(cohort[0].data_gen.get_state())
    for member in cohort:
        lr = member.recipe.lr_at(epoch)
        for group in member.optimizer.param_groups:
            group["lr"] = lr
        member.model.train()
        member.objective.train()
        member.sums = _StepSums(device)
        member.tic = time.time()
    outer_rng = _rng_state()
    ranks = distributed.ranks()
    for step, batch in enumerate(train.batches(cohort[0].recipe.batch_size, shuffle=True, augment=augment,
                                               generator=data_gen, device=device, **distributed.shard_kwargs())):
        batch.x = precision.layout(batch.x)
        if teacher_cache is not None:
            teacher_cache.clear()
        # a process's loss is its rows' mean: weighted by its share of the global batch (times the
        # number of processes, which DDP's average divides out), the gradient is the global batch's
        share = len(batch) * ranks.world / batch.global_size if ranks.active else None
        for member in cohort:
            _set_rng_state(member.rng)
            with precision.autocast(device):
                out = (member.step_module(batch, epoch) if member.step_module is not None
                       else member.step_fn(member.model, batch, epoch))
            member.optimizer.zero_grad(set_to_none=True)
            (out.loss if share is None else out.loss * share).backward()
            member.optimizer.step()
            member.sums.add(step, out, batch.y)
            member.rng = _rng_state()
    _set_rng_state(outer_rng)
    if teacher_cache is not None:
        teacher_cache.clear()
    for member in cohort:
        member.data_gen.set_state(data_gen.get_state())
        member.failure = member.sums.failure(member.label, epoch)
        if ranks.active:
            member.sums.reduce()
            member.failure = next((f for f in distributed.gather_objects(member.failure) if f), None)
            distributed.broadcast_buffers(member.model)   # rank 0's running statistics, as evaluated and saved


def _end_epoch(member: Member, epoch: int, train: Any, test: Any, device: torch.device) -> None:
    """Evaluate, record, log and checkpoint one member after its epoch."""
    sums, recipe = member.sums, member.recipe
    evaluation = evaluate(member.model, test, max(recipe.batch_size, 256), device)
    means = sums.means()
    record = {"epoch": epoch, "lr": recipe.lr_at(epoch), "train_loss": means.pop("train_loss"),
              "train_acc": means.pop("train_acc"),
              "test_loss": evaluation["loss"], "test_acc": evaluation["acc"], "test_top5": evaluation["top5"],
              **means, "seconds": time.time() - member.tic}
    if member.cmi_every and (epoch % member.cmi_every == 0 or epoch == member.last_epoch):
        cmi = measure_cmi(member.model, train, max(recipe.batch_size, 256), device)
        record.update(train_cmi=cmi["cmi"], train_ll=cmi["ll"])
    check_finite(record, f"[{member.label}] epoch {epoch}")
    member.history.append(record)
    member.epochs_done = epoch
    eta = record["seconds"] * (member.last_epoch - epoch)
    _log(f"[{member.label}] epoch {epoch}/{member.last_epoch} lr {record['lr']:.4g} loss {record['train_loss']:.4f} "
         f"train {record['train_acc']:.2f}% test {record['test_acc']:.2f}% "
         f"({record['seconds']:.1f}s, eta {eta / 60:.1f} min)"
         + (f" cmi {record['train_cmi']:.4f} ll {record['train_ll']:.4f}" if "train_cmi" in record else ""))
    member.save()


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
    resume_parts: dict[str, Any] | None = None,
    augment: bool = True,
    cmi_every: int = 0,
    stop_after_epoch: int | None = None,
    label: str = "train",
    precision: Precision | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` (and the objective's own parameters) and return the per-epoch history: a
    group of one for :func:`fit_members`.

    ``cmi_every`` > 0 adds the training-set CMI/LL every that many epochs (Figure 2);
    ``stop_after_epoch`` ends early with the schedule of the full recipe (early-stopped teacher).
    The data order and augmentation come from a generator seeded with ``seed``. ``resume_key``
    (the job's content identity; ``resume_parts`` its parts, for the log) is stored with each resume
    checkpoint; only a checkpoint with the same key is resumed."""
    member = Member(model, objective, recipe, seed=seed, device=device, label=label, resume_path=resume_path,
                    resume_key=resume_key, resume_parts=resume_parts, cmi_every=cmi_every,
                    stop_after_epoch=stop_after_epoch)
    fit_members([member], train, test, device=device, augment=augment, precision=precision)
    _set_rng_state(member.rng)     # the process's random stream goes on as if the member had used it
    return member.history
