"""Jobs on several processes (torch.distributed): one process per GPU, NCCL on GPUs, gloo on CPUs.

A job spec with ``distributed: {processes: N, batchnorm: local|sync}`` runs on N processes of one node.
``mcmi stage`` started without a launcher execs itself under ``torchrun --standalone
--nproc-per-node N`` (:func:`relaunch_if_needed`), so the same command line works by hand, under
Snakemake and inside a SLURM job (one task, N GPUs). With N = 1 nothing here is used: no process
group is created and every code path is the single-process one.

How a distributed job equals the single-process job with the same global batch:

- **Data.** Every rank draws the same epoch permutation and augmentation from the job's seed and
  takes its rows of every global batch of B samples (:func:`shard_bounds`): contiguous rows, the
  first ``B mod N`` ranks one more, the last partial batch split the same way, so the shards of a
  batch are the batch in order and their sizes sum to B. A batch that would leave a rank without a
  sample is refused before training (:func:`check_batches`).
- **Gradient.** Each rank's loss is its shard's mean times ``n_rank * N / B``, so DistributedDataParallel's
  average over ranks is the gradient of the global batch's mean: equal to the 1-process gradient up
  to the order of the float additions (the all-reduce's).
- **BatchNorm.** ``local`` (the default; what torchvision's ImageNet reference does unless given
  ``--sync-bn``, and what DataParallel-based KD code gets): per-rank statistics, rank 0's running
  statistics broadcast to every rank (DDP's ``broadcast_buffers``) and saved. ``sync``: statistics over
  the global batch (:class:`torch.nn.SyncBatchNorm` on GPUs; :class:`GlooSyncBatchNorm` on CPUs,
  which torch's does not support), so the step equals the 1-process step up to float order.
- **Evaluation, CMI, centroids.** Each rank evaluates its rows; sums (correct answers, counts, losses,
  per-class sums of probabilities) are all-reduced: exact for counts, float order for the rest.
- **Randomness of a step** (dropout, CRD's negatives): each rank has its own stream, derived from the
  seed and its rank (rank 0's is the single-process stream); every rank's stream is checkpointed.
- **Files.** Only rank 0 writes (checkpoints, metrics, kept students) or deletes; every rank reads
  the same resume checkpoint and checks that all resumed the same epoch; the job's content identity
  is computed once, on rank 0, and broadcast.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

BATCHNORM_MODES = ("local", "sync")

# DDP's reducer warns (once per process) when a gradient's strides differ from its bucket's -- CPU
# convolutions give 1x1 kernels' gradients such strides; the gradient is copied, nothing is wrong.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


@dataclass(frozen=True)
class Ranks:
    """This process's place in its job: rank, number of processes, local rank, the device the
    collectives use, and the BatchNorm mode. ``world == 1``: the single-process job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")
    batchnorm: str = "local"

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world)``: what the datasets' ``batches(shard=...)`` take."""
        return (self.rank, self.world)

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.world}"


_RANKS = Ranks()


def ranks() -> Ranks:
    """The current process's :class:`Ranks` (a single process unless :func:`start` made a group)."""
    return _RANKS


def launched_world() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a batch of ``n`` that ``rank`` of ``world`` takes: contiguous, in rank
    order, the first ``n % world`` ranks one row more; the sizes sum to ``n``."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check_batches(num_samples: int, batch_size: int, world: int, what: str) -> None:
    """Refuse a training set whose batches (the last, partial one too) cannot give every rank a sample."""
    if world <= 1:
        return
    last = num_samples % batch_size
    smallest = min(batch_size, num_samples) if last == 0 else last
    if smallest < world:
        raise ValueError(f"{what}: {num_samples} samples in batches of {batch_size} end with a batch of "
                         f"{smallest}, which cannot give each of {world} processes a sample; use at most "
                         f"{smallest} processes (distributed.processes) or another batch size")


def default_workers() -> int:
    """DataLoader workers of one process: today's ``min(8, cpus)`` for a single process; in a job of
    N processes per node, the CPUs this job may use divided among them, less one for the training
    loop (at most 16)."""
    if not _RANKS.active:
        return min(8, os.cpu_count() or 1)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus // _RANKS.local_world - 1))


# ---------------------------------------------------------------------------------------------- start
def _rank_device(requested: str | None) -> torch.device:
    """A rank's device: its own GPU (claimed through the per-GPU lock files, so the processes of one
    job, and of other jobs on the node, never share one) when CUDA is asked for or available, else CPU."""
    from mcmi.train import _claim_free_gpu

    requested = requested or "auto"
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if requested not in ("auto", "cuda"):
        raise ValueError(f"device {requested!r}: a job of several processes takes 'auto', 'cuda' or 'cpu' "
                         f"(each process claims a GPU of its own)")
    index = _claim_free_gpu(torch.cuda.device_count(), strict=True)
    if index is None:
        raise RuntimeError(f"rank {os.environ.get('RANK')}: no free GPU among the "
                           f"{torch.cuda.device_count()} visible; a job of N processes needs N GPUs")
    torch.backends.cudnn.benchmark = True
    return torch.device(f"cuda:{index}")


def _die_with_launcher() -> None:
    """Have the kernel kill this process when its launcher dies (Linux ``PR_SET_PDEATHSIG``): torchrun
    starts each rank in a session of its own, so a SIGKILLed launcher would otherwise leave the ranks
    training, and writing, beside the job's rerun."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))    # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:          # the launcher died before the request took effect
        os._exit(1)


def start(processes: int, device_request: str | None, batchnorm: str = "local") -> torch.device:
    """Join the job's process group (when ``processes`` > 1) and return this process's device.

    The number of processes the launcher started must be the spec's; with 1 this is
    :func:`mcmi.train.pick_device` and nothing else."""
    global _RANKS
    from mcmi.train import pick_device

    world = launched_world()
    if world != processes:
        raise RuntimeError(f"this job is planned for {processes} process(es) (its spec's distributed.processes) "
                           f"but {world} were started; run it through `mcmi stage`, which starts "
                           f"`torchrun --nproc-per-node {processes}` itself")
    if processes == 1:
        return pick_device(device_request)
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"distributed.batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    _die_with_launcher()
    device = _rank_device(device_request)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    _RANKS = Ranks(rank, world, int(os.environ.get("LOCAL_RANK", rank)),
                   int(os.environ.get("LOCAL_WORLD_SIZE", world)), device, batchnorm)
    print(f"[{_RANKS}] started on {os.uname().nodename}, device {device}, backend "
          f"{dist.get_backend()}, batchnorm {batchnorm}", flush=True)
    return device


def stop() -> None:
    """Leave the process group (after a barrier, so no rank tears it down under another)."""
    global _RANKS
    if _RANKS.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _RANKS = Ranks()


def relaunch_if_needed(processes: int, spec_json: str) -> None:
    """Exec ``torchrun --standalone --nproc-per-node N -m mcmi stage --spec SPEC`` in place of this
    process when the job needs N > 1 processes and none were started (torchrun's agent then watches
    the ranks: one that dies stops the others, and the job exits non-zero naming it). Each process
    gets ``OMP_NUM_THREADS`` = this job's CPUs / N unless it is set."""
    if processes <= 1 or "WORLD_SIZE" in os.environ:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpus // processes)))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "mcmi", "stage", "--spec", spec_json]
    print(f"starting {processes} processes: torchrun --standalone --nproc-per-node={processes} -m mcmi stage "
          f"--spec ...", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


# ---------------------------------------------------------------------------------------- collectives
def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over the ranks (a copy; ``values`` itself when there is one process)."""
    if not _RANKS.active:
        return values
    reduced = values.detach().to(_RANKS.device, copy=True)
    dist.all_reduce(reduced)
    return reduced.to(values.device)


def gather_rows(values: torch.Tensor) -> torch.Tensor:
    """The ranks' ``values`` (shards of one batch, rows first) concatenated in rank order: the global
    batch's rows in order (``values`` itself when there is one process). No gradient flows back."""
    if not _RANKS.active:
        return values
    local = values.detach().to(_RANKS.device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=_RANKS.device) for _ in range(_RANKS.world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=_RANKS.device))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(_RANKS.world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes)]).to(values.device)


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over every rank's ``values`` (``values.mean()`` when there is one process)."""
    if not _RANKS.active:
        return values.mean()
    total = all_sum(torch.stack([values.detach().sum().to(torch.float64),
                                 torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)]))
    return (total[0] / total[1]).to(values.dtype)


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself when there is one process)."""
    if not _RANKS.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` when there is one process)."""
    if not _RANKS.active:
        return [value]
    out: list[Any] = [None] * _RANKS.world
    dist.all_gather_object(out, value)
    return out


def check_same(value: Any, what: str) -> None:
    """Raise naming the ranks when they do not all hold the same ``value``."""
    values = gather_objects(value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"the processes disagree on {what}: " +
                           ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values)))


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s own random stream (rank 0 keeps ``seed``): independent streams per rank."""
    if rank == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{rank}".encode()).digest()[:7], "big")


# ----------------------------------------------------------------------------------------- BatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose gradient is the sum of the ranks' gradients (every rank's loss depends
    on the global sum)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor) -> torch.Tensor:  # noqa: D102
        values = values.clone()
        dist.all_reduce(values)
        return values

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, for processes on CPUs
    (gloo), where :class:`torch.nn.SyncBatchNorm` refuses to run. Mean and variance come from
    all-reduced sums (float64, two passes); the running statistics update as BatchNorm's (unbiased
    variance). Same parameters, buffers and state-dict keys as the BatchNorm it replaces; in eval
    mode, or in a single process, it is that BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _RANKS.active):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_sum(torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64))
        wide = x.to(torch.float64)
        mean = _AllReduceSum.apply(wide.sum(dims)) / count
        centred = wide - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        out = (centred / torch.sqrt(var + self.eps).view(shape)).to(x.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var * (count / max(float(count) - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out

    @classmethod
    def replacing(cls, bn: nn.modules.batchnorm._BatchNorm) -> "GlooSyncBatchNorm":
        """A GlooSyncBatchNorm holding ``bn``'s own parameters and buffers (the optimiser's tensors)."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var, new.num_batches_tracked = (bn.running_mean, bn.running_var,
                                                                      bn.num_batches_tracked)
        new.train(bn.training)
        return new


def _replace_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        return GlooSyncBatchNorm.replacing(module)
    for name, child in module.named_children():
        setattr(module, name, _replace_batchnorm(child))
    return module


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with its BatchNorm layers computing global-batch statistics when the job's
    BatchNorm mode is ``sync`` (torch's SyncBatchNorm on GPUs, :class:`GlooSyncBatchNorm` on CPUs);
    unchanged otherwise. Parameters and buffers are the same tensors, so optimisers stay valid."""
    if not _RANKS.active or _RANKS.batchnorm != "sync":
        return module
    if _RANKS.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _replace_batchnorm(module)


# --------------------------------------------------------------------------------------------- DDP
class TrainingStep(nn.Module):
    """The module DistributedDataParallel wraps for one trained model: the model and its objective
    (whose trainable modules -- regressors, embeddings, heads -- are averaged with the model's),
    ``forward(batch, epoch)`` = the objective's step (``step``: that step compiled, or ``None``)."""

    def __init__(self, model: nn.Module, objective: nn.Module, step: Any = None) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self.step = step or objective.step

    def forward(self, batch: Any, epoch: int) -> Any:
        return self.step(self.model, batch, epoch)


def data_parallel(model: nn.Module, objective: nn.Module, step: Any = None) -> nn.Module:
    """``model`` and ``objective`` as one DistributedDataParallel module (``step``: the objective's step
    function, compiled or not; default ``objective.step``). Left to each rank (not
    broadcast or reduced): parameters that are not trained (a frozen teacher) and the objective's
    buffers (CRD's memory banks, kept equal by the method itself, MCMI's centroids). The model's
    buffers (BatchNorm's running statistics) are rank 0's, as DDP's ``broadcast_buffers``."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped = TrainingStep(model, objective, step)
    ignored = [name for name, p in wrapped.named_parameters() if not p.requires_grad]
    ignored += [name for name, _ in wrapped.named_buffers() if not name.startswith("model.")]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(wrapped, ignored)
    extra_trainables = any(p.requires_grad for p in objective.parameters())
    device_ids = [_RANKS.device.index] if _RANKS.device.type == "cuda" else None
    sync = ({"forward_sync_buffers": True} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": True})      # the name torch 2.14 gives broadcast_buffers
    return DistributedDataParallel(wrapped, device_ids=device_ids, find_unused_parameters=extra_trainables,
                                   gradient_as_bucket_view=True, **sync)


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, before evaluating or saving."""
    if not _RANKS.active:
        return
    for buffer in module.buffers():
        staged = buffer.detach().to(_RANKS.device)
        dist.broadcast(staged, src=0)
        buffer.data.copy_(staged)


def shard_kwargs() -> dict[str, Any]:
    """``{'shard': (rank, world)}`` in a job of several processes, else nothing (the single-process call)."""
    return {"shard": _RANKS.shard} if _RANKS.active else {}


def failure_line(error: BaseException) -> str:
    """The line a failing rank prints before the launcher stops the others."""
    return f"[{_RANKS}] failed: {type(error).__name__}: {error}"
