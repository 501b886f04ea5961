"""Grouped student jobs vs one job per student: student-images per second, their ratio, and the bound.

For a teacher and its students (every Table 1 method on each), trains the same students for a few
steps of CIFAR-sized batches (random pixels: speed does not depend on them; the training set has
50,000 samples so CRD's memory banks have their real size) twice: each alone (its own teacher
forward pass every step) and all in one group (one teacher pass per batch, see
``mcmi.train.fit_members``); for a teacher with several students also one group per pair. Runs
alternate (alone, grouped, alone, grouped) so drift on a shared machine hits both. The bound is what
sharing the teacher-side work can give at most, from the measured times: the alone time divided by
(the group's teacher work + the students' own work). Alone, every student pays a teacher forward
pass, and an HSAKD student its teacher's pass over the 4 rotations plus the frozen teacher heads; in
a group each is computed once per batch, whatever the number of students. The teacher-side seconds
are timed inside the alone runs themselves (``TimedTeacher``), so the bound and the ratio come from
the same runs; the grouped run's own teacher-side seconds are printed beside them. Each method's time
alone and the bound without HSAKD (whose 4x rotated batch through the student and its heads cannot be
shared) are printed too. The learning rate is small (1e-4): the
teacher is untrained and the pixels random, and speed does not depend on it.

    python benchmarks/bench_students.py                       # both groups of the issue, fp32
    python benchmarks/bench_students.py --group resnet56 --precision bf16 --steps 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mcmi.data.tensors import TensorImageDataset
from mcmi.distill import SharedTeacher
from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads
from mcmi.models import create_model, probe_shapes
from mcmi.pipeline.specs import StudentSpec
from mcmi.stages import student_members
from mcmi.train import Precision, fit_members

METHODS = ["KD", "AT", "PKT", "SP", "CC", "RKD", "VID", "CRD", "DKD", "ReviewKD", "HSAKD"]
GROUPS = {"resnet56": ("resnet56", ["resnet20"]), "resnet32x4": ("resnet32x4", ["ShuffleV1", "ShuffleV2"])}
NUM_TRAIN, NUM_CLASSES, BATCH = 50_000, 100, 64


class FirstBatches:
    """A CIFAR-sized training set whose epoch stops after ``steps`` batches."""

    def __init__(self, data: TensorImageDataset, steps: int) -> None:
        self.data, self.steps = data, steps
        self.labels, self.num_classes, self.input_shape = data.labels, data.num_classes, data.input_shape

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, batch_size: int, **kwargs: Any) -> Iterator[Any]:
        for step, batch in enumerate(self.data.batches(batch_size, **kwargs)):
            if step == self.steps:
                return
            yield batch


def _data(steps: int) -> tuple[FirstBatches, TensorImageDataset]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (NUM_TRAIN, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (NUM_TRAIN,), generator=gen)
    full = TensorImageDataset(images, labels, NUM_CLASSES, (0.5,) * 3, (0.25,) * 3, "random-cifar")
    return FirstBatches(full, steps), full.subset(torch.arange(BATCH))   # a one-batch test set


def _specs(teacher: str, students: list[str], heads: str, folder: Path) -> list[StudentSpec]:
    specs = []
    for student in students:
        for method in METHODS:
            specs.append(StudentSpec(
                student=student, teacher=teacher, teacher_checkpoint="(in memory)", method=method, seed=0,
                recipe={"epochs": 1, "lr": 1e-4, "batch_size": BATCH, "milestones": []},
                extra={"hsakd_teacher_heads": heads}, dataset={"kind": "random-cifar"},
                out_metrics=str(folder / f"{student}-{method}.json"), out_model=str(folder / f"{student}-{method}.pt")))
    return specs


class TimedTeacher(SharedTeacher):
    """A shared teacher that adds up the seconds of its teacher-side work as the training runs use
    it: the plain forward pass ("forward") and HSAKD's rotations and frozen heads ("hsakd")."""

    def __init__(self, model: torch.nn.Module, model_name: str) -> None:
        super().__init__(model, model_name)
        self.seconds = {"forward": 0.0, "hsakd": 0.0}

    def memo(self, key: Any, inputs: torch.Tensor, compute: Callable[[], Any]) -> Any:
        tic = time.perf_counter()
        try:
            return super().memo(key, inputs, compute)
        finally:
            self.seconds["forward" if key == "features" else "hsakd"] += time.perf_counter() - tic


def _train(specs: list[StudentSpec], teacher: TimedTeacher, train: FirstBatches, test: Any,
           precision: Precision) -> tuple[float, dict[str, float]]:
    """Seconds to train ``specs`` as one group, and the teacher-side seconds within them."""
    members = student_members(specs, train, teacher, torch.device("cpu"), precision)
    for member in members:
        member.resume_path = None
    teacher.seconds = dict.fromkeys(teacher.seconds, 0.0)
    tic = time.perf_counter()
    fit_members(members, train, test, device=torch.device("cpu"), teacher_cache=teacher, precision=precision)
    return time.perf_counter() - tic, dict(teacher.seconds)


@torch.no_grad()
def _calibrate_batchnorm(model: torch.nn.Module, train: FirstBatches, batches: int = 20) -> None:
    """Give the untrained teacher BatchNorm statistics of its inputs, so its features have a trained
    network's scale (raw, they grow with depth and some losses overflow in a few steps)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None                                  # a plain average over the batches
    model.train()
    gen = torch.Generator().manual_seed(1)
    for step, batch in enumerate(train.data.batches(BATCH, shuffle=True, generator=gen)):
        if step == batches:
            break
        model(batch.x)
    model.eval()


def bench(group: str, steps: int, precision: Precision, by_pair: bool = True) -> dict[str, Any]:
    teacher_name, students = GROUPS[group]
    train, test = _data(steps)
    torch.manual_seed(1)
    model = create_model(teacher_name, NUM_CLASSES)
    _calibrate_batchnorm(model, train)
    folder = Path(tempfile.mkdtemp())
    heads = str(folder / "heads.pt")
    save_teacher_heads(HSAKDTeacherHeads(probe_shapes(model, (3, 32, 32)), NUM_CLASSES, teacher_name).heads, heads)
    specs = _specs(teacher_name, students, heads, folder)
    teacher = TimedTeacher(model, teacher_name)
    pairs = [[spec for spec in specs if spec.student == student] for student in students]
    alone, grouped, paired, alone_each = [], [], [], []
    for _ in range(2):                                             # A B (C) A B (C)
        each = [_train([spec], teacher, train, test, precision) for spec in specs]
        alone_each.append(each)
        alone.append(sum(seconds for seconds, _ in each))
        grouped.append(_train(specs, teacher, train, test, precision))
        if by_pair and len(pairs) > 1:                             # the same students, one group per pair
            paired.append(sum(_train(pair, teacher, train, test, precision)[0] for pair in pairs))
    best_alone = min(alone)
    each = alone_each[alone.index(best_alone)]
    hsakd = [spec.method == "HSAKD" for spec in specs]
    # teacher-side seconds per batch, as measured inside the best alone run
    forward = sum(t["forward"] for (_, t), h in zip(each, hsakd) if not h) / (hsakd.count(False) * steps)
    hsakd_work = sum(t["hsakd"] for (_, t), h in zip(each, hsakd) if h) / (hsakd.count(True) * steps) if any(hsakd) else 0.0
    teacher_alone = sum(t["forward"] + t["hsakd"] for _, t in each)
    ideal_group = steps * (forward + hsakd_work) + best_alone - teacher_alone      # each computed once per batch
    plain = [(seconds, t["forward"]) for (seconds, t), h in zip(each, hsakd) if not h]
    plain_bound = sum(s for s, _ in plain) / (steps * forward + sum(s - t for s, t in plain))   # without HSAKD
    best_group, group_teacher = min(grouped, key=lambda run: run[0])
    images = len(specs) * steps * BATCH
    per_method: dict[str, float] = {}
    for spec, (seconds, _) in zip(specs, each):
        per_method[spec.method] = per_method.get(spec.method, 0.0) + seconds
    return {"per_method_alone_s": per_method, "bound_without_hsakd": plain_bound,
            "students": len(specs), "alone_s": best_alone, "grouped_s": best_group,
            "alone_img_s": images / best_alone, "grouped_img_s": images / best_group,
            "ratio": best_alone / best_group, "bound": best_alone / ideal_group,
            "teacher_forward_ms": 1000 * forward, "hsakd_teacher_ms": 1000 * hsakd_work,
            "group_teacher_s": sum(group_teacher.values()), "group_teacher_ideal_s": steps * (forward + hsakd_work),
            "alone_runs": alone, "grouped_runs": [seconds for seconds, _ in grouped],
            "by_pair_ratio": best_alone / min(paired) if paired else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", choices=[*GROUPS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=5, help="training steps per student and run")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", action=argparse.BooleanOptionalAction, default=True,
                        help="for a teacher with several students, also time one group per pair")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    groups = list(GROUPS) if args.group == "all" else [args.group]
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    print(f"{args.steps} steps of batch {BATCH} per student, {args.threads} threads, torch {torch.__version__}")
    for name in groups:
        for dtype in precisions:
            r = bench(name, args.steps, Precision(dtype), by_pair=args.pairs)
            teacher, students = GROUPS[name]
            print(f"{teacher} -> {'+'.join(students)} ({r['students']} students, {dtype}): "
                  f"alone {r['alone_img_s']:.1f} student-img/s, grouped {r['grouped_img_s']:.1f} student-img/s, "
                  f"ratio {r['ratio']:.2f}x, bound {r['bound']:.2f}x ({100 * r['ratio'] / r['bound']:.0f}% of it); "
                  f"teacher forward {r['teacher_forward_ms']:.0f} ms/batch (HSAKD's rotations and heads "
                  f"{r['hsakd_teacher_ms']:.0f}), in the grouped run {r['group_teacher_s']:.1f} s of teacher-side "
                  f"work against {r['group_teacher_ideal_s']:.1f} s at those rates; runs alone "
                  f"{', '.join(f'{t:.1f}' for t in r['alone_runs'])} s, grouped "
                  f"{', '.join(f'{t:.1f}' for t in r['grouped_runs'])} s"
                  + (f"; one group per pair instead: ratio {r['by_pair_ratio']:.2f}x" if r["by_pair_ratio"] else ""),
                  flush=True)
            print(f"  alone, seconds per method (summed over students): "
                  + ", ".join(f"{method} {seconds:.1f}" for method, seconds in r["per_method_alone_s"].items())
                  + f"; bound without the HSAKD students {r['bound_without_hsakd']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
