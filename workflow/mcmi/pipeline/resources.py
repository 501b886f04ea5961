"""What each job asks a scheduler for: processes (GPUs), CPU threads, memory and a wall time.

A job's wall time is derived from stated per-epoch costs, not guessed per rule:

    minutes = margin * (GPU-minutes of the job's epochs on one GPU / processes + set-up minutes),
              at least min_minutes

with ``walltime.epoch_minutes[dataset][model]`` the minutes of one training epoch of ``model`` on one
GPU (``default`` for the dataset's other models, ``walltime.default_epoch_minutes`` for datasets not
listed), ``walltime.setup_minutes[dataset]`` for what a job does before its first epoch (listing and
digesting an image folder), a frozen forward pass over an epoch ``walltime.teacher_forward`` of that, and a method's
student costing ``walltime.method_cost[method]`` plain students (HSAKD: its 4x rotated batch). Per job:

| job | GPU-minutes on one GPU |
| --- | --- |
| teacher (MLL, early-stopped) | epochs * E(teacher), plus a forward pass per CMI measurement (Figure 2) |
| import, measure | one forward pass over the training set: f * E(teacher) |
| MCMI fine-tuning | (f + epochs) * E(teacher) (the centroid pass, then the epochs) |
| HSAKD heads | epochs * 2 * k * f * E(teacher) (the frozen teacher and the heads on the 4x batch) |
| student group | epochs * (f * E(teacher) * (1 + k if the group has HSAKD students) + sum of cost(method) * E(student)) |

(E = epoch minutes, f = teacher_forward, k = method_cost['HSAKD'].) ``walltime.max_job_hours`` caps
every job: student groups are split until each part fits (:func:`split_to_fit`); a job that cannot
fit alone fails planning with a line saying what to change.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from mcmi.pipeline.config import ConfigError


class Resources:
    """The scheduler resources of the config's jobs (``distributed`` and ``walltime`` blocks)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.walltime = config["walltime"]
        self.dist = config["distributed"]
        self.cpu_only = config["device"] == "cpu"

    # ------------------------------------------------------------------ processes, threads, memory
    def processes(self, ds: str) -> int:
        """Processes of a job on ``ds`` (one GPU each; ``distributed.processes``, 1 unless listed)."""
        return int(self.dist["processes"].get(ds, 1))

    def distributed_spec(self, ds: str) -> dict[str, Any] | None:
        """The ``distributed`` block of a job spec on ``ds`` (None for one process: the spec is unchanged)."""
        n = self.processes(ds)
        return {"processes": n, "batchnorm": self.dist["batchnorm"]} if n > 1 else None

    def gpus(self, ds: str, processes: int | None = None) -> int:
        """GPUs a job on ``ds`` asks for: one per process (none with ``device: cpu``); ``processes``
        overrides the dataset's count (a single-process job on a multi-GPU dataset)."""
        return 0 if self.cpu_only else (processes or self.processes(ds))

    def threads(self, ds: str, processes: int | None = None) -> int:
        """CPU threads of a job: per process (``distributed.threads``, else ``threads``) times its processes."""
        return int(self.dist["threads"].get(ds, self.config["threads"])) * (processes or self.processes(ds))

    def mem_mb(self, ds: str, students: int = 1, processes: int | None = None) -> int:
        """Host memory: 32 GB for a streamed ImageNet process (8 GB otherwise), 12 GB (4 GB) for each
        further process, and 4 GB (1 GB) for each further student of a group."""
        imagenet = self.config["datasets"][ds]["kind"] == "imagefolder" and ds == "imagenet"
        base, per_process, per_student = (32000, 12000, 4000) if imagenet else (8000, 4000, 1000)
        return base + per_process * ((processes or self.processes(ds)) - 1) + per_student * (students - 1)

    # ------------------------------------------------------------------ wall times
    def epoch_minutes(self, ds: str, model: str) -> float:
        """Minutes of one training epoch of ``model`` on ``ds`` on one GPU (``walltime.epoch_minutes``)."""
        table = self.walltime["epoch_minutes"].get(ds, {})
        return float(table.get(model, table.get("default", self.walltime["default_epoch_minutes"])))

    def method_cost(self, method: str) -> float:
        return float(self.walltime["method_cost"].get(method, 1.0))

    def minutes(self, ds: str, gpu_minutes: float, processes: int | None = None) -> int:
        """Requested minutes for ``gpu_minutes`` of one GPU's work on ``ds``: spread over the job's
        processes, plus the dataset's set-up minutes, times the margin, at least ``min_minutes``."""
        setup = float(self.walltime["setup_minutes"].get(ds, 0))
        wanted = self.walltime["margin"] * (gpu_minutes / (processes or self.processes(ds)) + setup)
        return int(max(self.walltime["min_minutes"], math.ceil(wanted)))

    def limit_minutes(self) -> float:
        return 60.0 * float(self.walltime["max_job_hours"])

    def job_gpu_minutes(self, kind: str, ds: str, model: str, epochs: int = 0, cmi_passes: int = 0) -> float:
        """GPU-minutes of a teacher-side job (see the module docstring): ``kind`` teacher, import, measure,
        mcmi or hsakd_heads."""
        e, f = self.epoch_minutes(ds, model), float(self.walltime["teacher_forward"])
        if kind == "teacher":
            return epochs * e + cmi_passes * f * e
        if kind in ("import", "measure", "analysis"):
            return f * e
        if kind == "mcmi":
            return (f + epochs) * e
        if kind == "hsakd_heads":
            return epochs * 2 * self.method_cost("HSAKD") * f * e
        raise ValueError(f"unknown job kind {kind!r}")

    def group_gpu_minutes(self, ds: str, teacher: str | None, members: Sequence[tuple[str, str]],
                          epochs: int) -> float:
        """GPU-minutes of a student group: ``members`` = (student model, method) pairs."""
        f = float(self.walltime["teacher_forward"])
        teacher_side = 0.0
        if teacher:
            rotations = self.method_cost("HSAKD") if any(m == "HSAKD" for _, m in members) else 0.0
            teacher_side = f * self.epoch_minutes(ds, teacher) * (1 + rotations)
        students = sum(self.method_cost(method) * self.epoch_minutes(ds, model) for model, method in members)
        return epochs * (teacher_side + students)

    def checked(self, what: str, ds: str, gpu_minutes: float, processes: int | None = None) -> int:
        """:meth:`minutes`, refusing a job that would ask for more than ``max_job_hours``."""
        minutes = self.minutes(ds, gpu_minutes, processes)
        if minutes > self.limit_minutes():
            raise ConfigError(
                f"{what} would ask for {minutes / 60:.1f} h ({gpu_minutes / 60:.1f} GPU-hours x margin "
                f"{self.walltime['margin']} / {self.processes(ds)} process(es)), more than walltime.max_job_hours "
                f"= {self.walltime['max_job_hours']}: raise distributed.processes.{ds} (GPUs per job), "
                f"walltime.max_job_hours (if your cluster allows longer jobs), or lower "
                f"walltime.epoch_minutes.{ds} (if your GPUs are faster than the stated ones)")
        return minutes


def _greedy(items: list[Any], cost: Any, capacity: float) -> list[list[Any]]:
    parts: list[list[Any]] = []
    current: list[Any] = []
    for item in items:
        if current and cost(current + [item]) > capacity:
            parts.append(current)
            current = []
        current.append(item)
    if current:
        parts.append(current)
    return parts


def split_to_fit(items: list[Any], cost: Any, limit: float) -> list[list[Any]]:
    """``items`` in order, cut into the fewest consecutive parts whose ``cost(part)`` is at most
    ``limit``, balanced (the largest part's cost as small as that number of parts allows). ``cost``
    must grow when an item is added. An item too costly alone is a part of its own (the caller refuses it)."""
    parts = _greedy(items, cost, limit)
    if len(parts) <= 1:
        return parts
    low, high = 0.0, float(limit)
    for _ in range(40):                     # the smallest capacity that needs no more parts
        middle = (low + high) / 2
        if len(_greedy(items, cost, middle)) <= len(parts):
            high = middle
        else:
            low = middle
    return _greedy(items, cost, high)
