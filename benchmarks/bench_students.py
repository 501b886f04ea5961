"""Grouped student jobs vs one job per student: student-images per second, their ratio, and the bound.

For a teacher and its students (every Table 1 method on each), trains the same students for a few
steps of CIFAR-sized batches (random pixels: speed does not depend on them; the training set has
50,000 samples so CRD's memory banks have their real size) twice: each alone (its own teacher
forward pass every step) and all in one group (one teacher pass per batch, see
``mcmi.train.fit_members``); for a teacher with several students also one group per pair. A round
runs half the students alone, then the grouped run(s), then the other half alone, so a drift of the
shared machine's speed over the round hits both sides alike; each round gives its own ratio and
bound, and the medians over the rounds are reported beside every round's figures. The bound is what
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
    python benchmarks/bench_students.py --group resnet56 --precision bf16 --steps 5 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
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


@dataclass
class Round:
    """One round's runs: each student alone (in spec order) and the grouped runs between them."""
    alone: list[tuple[float, dict[str, float]]]
    grouped: tuple[float, dict[str, float]]
    paired: float | None


def _round(specs: list[StudentSpec], pairs: list[list[StudentSpec]], teacher: TimedTeacher, train: FirstBatches,
           test: Any, precision: Precision, paired_first: bool) -> Round:
    """Half the students alone, the grouped run(s), the other half alone: a drift of the machine's
    speed that is linear over the round hits the alone and the grouped side alike."""
    half = len(specs) // 2
    first = [_train([spec], teacher, train, test, precision) for spec in specs[:half]]

    def per_pair() -> float | None:
        return sum(_train(pair, teacher, train, test, precision)[0] for pair in pairs) if pairs else None

    paired = per_pair() if paired_first else None
    grouped = _train(specs, teacher, train, test, precision)
    if not paired_first:
        paired = per_pair()
    second = [_train([spec], teacher, train, test, precision) for spec in specs[half:]]
    return Round(first + second, grouped, paired)


def _figures(run: Round, specs: list[StudentSpec], steps: int) -> dict[str, Any]:
    """A round's ratio, and its bound from the teacher-side seconds timed inside its own alone runs."""
    plain = [timed for timed, spec in zip(run.alone, specs) if spec.method != "HSAKD"]
    hsakd = [timed for timed, spec in zip(run.alone, specs) if spec.method == "HSAKD"]
    alone = sum(seconds for seconds, _ in run.alone)
    forward = sum(t["forward"] for _, t in plain) / (len(plain) * steps)
    hsakd_work = sum(t["hsakd"] for _, t in hsakd) / (len(hsakd) * steps) if hsakd else 0.0
    teacher_ideal = steps * (forward + hsakd_work)                             # each computed once per batch
    teacher_alone = sum(t["forward"] + t["hsakd"] for _, t in run.alone)
    ideal_group = teacher_ideal + alone - teacher_alone
    plain_bound = sum(s for s, _ in plain) / (steps * forward + sum(s - t["forward"] for s, t in plain))
    grouped, group_teacher = run.grouped
    ratio, bound = alone / grouped, alone / ideal_group
    return {"alone_s": alone, "grouped_s": grouped, "ratio": ratio, "bound": bound, "of_bound": ratio / bound,
            "bound_without_hsakd": plain_bound, "teacher_forward_ms": 1000 * forward,
            "hsakd_teacher_ms": 1000 * hsakd_work, "group_teacher_s": sum(group_teacher.values()),
            "group_teacher_ideal_s": teacher_ideal,
            "by_pair_ratio": alone / run.paired if run.paired else None}


def bench(group: str, steps: int, precision: Precision, rounds: int = 3, by_pair: bool = True) -> dict[str, Any]:
    """Every round's figures and their medians (each figure's own median over the rounds)."""
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
    pairs = ([[spec for spec in specs if spec.student == student] for student in students]
             if by_pair and len(students) > 1 else [])
    runs = [_round(specs, pairs, teacher, train, test, precision, paired_first=bool(k % 2)) for k in range(rounds)]
    per_round = [_figures(run, specs, steps) for run in runs]
    median = {key: statistics.median(r[key] for r in per_round) for key in per_round[0]
              if per_round[0][key] is not None}
    images = len(specs) * steps * BATCH
    median.update(alone_img_s=images / median["alone_s"], grouped_img_s=images / median["grouped_s"])
    per_method: dict[str, float] = {}
    for spec, *seconds in zip(specs, *(run.alone for run in runs)):
        per_method[spec.method] = per_method.get(spec.method, 0.0) + statistics.median(s for s, _ in seconds)
    return {"students": len(specs), "median": median, "rounds": per_round, "per_method_alone_s": per_method}


def _describe(f: dict[str, Any]) -> str:
    line = (f"ratio {f['ratio']:.2f}x, bound {f['bound']:.2f}x ({100 * f['of_bound']:.0f}% of it); alone "
            f"{f['alone_s']:.1f} s, grouped {f['grouped_s']:.1f} s; teacher forward {f['teacher_forward_ms']:.0f} "
            f"ms/batch (HSAKD's rotations and heads {f['hsakd_teacher_ms']:.0f}), in the grouped run "
            f"{f['group_teacher_s']:.1f} s of teacher-side work against {f['group_teacher_ideal_s']:.1f} s at those rates")
    if f.get("by_pair_ratio"):
        line += f"; one group per pair instead: ratio {f['by_pair_ratio']:.2f}x"
    return line + f"; bound without the HSAKD students {f['bound_without_hsakd']:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", choices=[*GROUPS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=5, help="training steps per student and run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of alone and grouped runs (medians reported)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", action=argparse.BooleanOptionalAction, default=True,
                        help="for a teacher with several students, also time one group per pair")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    torch.set_num_threads(args.threads)
    groups = list(GROUPS) if args.group == "all" else [args.group]
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    print(f"{args.steps} steps of batch {BATCH} per student, {args.rounds} rounds, {args.threads} threads, "
          f"torch {torch.__version__}", flush=True)
    for name in groups:
        for dtype in precisions:
            r = bench(name, args.steps, Precision(dtype), rounds=args.rounds, by_pair=args.pairs)
            teacher, students = GROUPS[name]
            m = r["median"]
            print(f"{teacher} -> {'+'.join(students)} ({r['students']} students, {dtype}), median of "
                  f"{len(r['rounds'])} rounds: alone {m['alone_img_s']:.1f} student-img/s, grouped "
                  f"{m['grouped_img_s']:.1f} student-img/s, {_describe(m)}", flush=True)
            for k, figures in enumerate(r["rounds"], 1):
                print(f"  round {k}: {_describe(figures)}", flush=True)
            print(f"  alone, seconds per method (summed over students, median over rounds): "
                  + ", ".join(f"{method} {seconds:.1f}" for method, seconds in r["per_method_alone_s"].items()),
                  flush=True)


if __name__ == "__main__":
    main()
