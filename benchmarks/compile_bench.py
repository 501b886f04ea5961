"""Eager vs compiled training steps (config ``compile``, :mod:`mcmi.capture`): student-images per
second of the trainer's epoch loop, for KD alone and for the 11 Table 1 methods as one group.

Every mode gets its own members and its own teacher (so each has its own compiled graphs); each is
compiled and warmed up by two epochs of ``--warmup`` steps (the first compiles the step, the second
the later-epoch graph of DKD and ReviewKD, whose epoch becomes a symbolic integer), then the modes are
timed side by side, one epoch of ``--steps`` steps each in turn, ``--rounds`` times (A B C A B C), so a
drift of the shared machine's speed hits every mode alike. The compilation seconds (the two warm-up
epochs, less the eager mode's) are printed too. CIFAR-shaped random pixels (speed does not depend
on them), one CPU thread unless ``--threads``; on a GPU use ``make gpu-check`` (gpu_bench's
``compile`` part).

    python benchmarks/compile_bench.py                                  # KD alone and the group
    python benchmarks/compile_bench.py --pair resnet56,resnet20 --batch 64 --steps 10 --what kd
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench_students import METHODS, FirstBatches
from mcmi.data.tensors import TensorImageDataset
from mcmi.distill import SharedTeacher
from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads
from mcmi.models import create_model, probe_shapes
from mcmi.pipeline.specs import StudentSpec
from mcmi.stages import student_members
from mcmi.train import Member, Precision, _prepare_steps, _train_epoch

NUM_CLASSES = 100


def _data(count: int, size: int) -> TensorImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=gen)
    return TensorImageDataset(images, torch.arange(count) % NUM_CLASSES, NUM_CLASSES, (0.5,) * 3, (0.25,) * 3,
                              "random-cifar")


class Setup:
    """One mode's members and teacher, compiled and warmed up."""

    def __init__(self, mode: str, methods: list[str], data: TensorImageDataset, pair: tuple[str, str],
                 batch: int, warmup: int, folder: Path) -> None:
        torch.manual_seed(1)
        model = create_model(pair[0], NUM_CLASSES).eval()
        heads = folder / f"heads-{mode}.pt"
        save_teacher_heads(HSAKDTeacherHeads(probe_shapes(model, data.input_shape), NUM_CLASSES, pair[0]).heads,
                           heads)
        self.teacher = SharedTeacher(model, pair[0])
        self.precision = Precision("fp32", False, mode)
        specs = [StudentSpec(student=pair[1], teacher=pair[0], teacher_checkpoint="(in memory)", method=m, seed=0,
                             recipe={"epochs": 1000, "lr": 1e-4, "batch_size": batch, "milestones": []},
                             extra={"hsakd_teacher_heads": str(heads)}, dataset={"kind": "random-cifar"},
                             hparams={"nce_k": 4096} if m == "CRD" else {},
                             out_metrics=str(folder / f"{mode}-{m}.json"), out_model=str(folder / f"{mode}-{m}.pt"))
                 for m in methods]
        self.members: list[Member] = student_members(specs, data, self.teacher, torch.device("cpu"), self.precision)
        self.data, self.epoch = data, 0
        tic = time.perf_counter()
        _prepare_steps(self.members, self.teacher, mode)
        self.run(warmup)
        self.run(warmup)
        self.warmup_s = time.perf_counter() - tic
        self.compiled = {m.label.split("[")[-1].rstrip("]"): m.compile_mode for m in self.members}

    def run(self, steps: int) -> float:
        """Seconds of one epoch of ``steps`` steps of every member."""
        self.epoch += 1
        tic = time.perf_counter()
        _train_epoch(self.members, self.epoch, FirstBatches(self.data, steps), torch.device("cpu"), True,
                     self.teacher, self.precision)
        seconds = time.perf_counter() - tic
        failed = [m.failure for m in self.members if m.failure]
        if failed:
            raise FloatingPointError("; ".join(failed))
        return seconds


def measure(label: str, methods: list[str], modes: list[str], args: argparse.Namespace) -> dict[str, Any]:
    data = _data(args.num_train, args.size)
    folder = Path(tempfile.mkdtemp())
    setups = {}
    for mode in modes:
        setups[mode] = Setup(mode, methods, data, args.pair, args.batch, args.warmup, folder)
        print(f"[{label}] {mode}: built and warmed up in {setups[mode].warmup_s:.1f} s", flush=True)
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            seconds = setups[mode].run(args.steps)
            rates[mode].append(len(methods) * args.steps * args.batch / seconds)
    eager_warmup = setups["none"].warmup_s if "none" in setups else 0.0
    result = {"what": label, "students": len(methods),
              "modes": {mode: {"student_img_s": statistics.median(r), "rounds": [round(x, 1) for x in r],
                               "warmup_s": round(setups[mode].warmup_s, 1),
                               "compile_s": round(setups[mode].warmup_s - eager_warmup, 1),
                               "not_compiled": sorted(k for k, v in setups[mode].compiled.items() if v == "none"
                                                      and mode != "none")}
                        for mode, r in rates.items()}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=["kd", "group", "both"], default="both")
    parser.add_argument("--modes", default="none,default,reduce-overhead")
    parser.add_argument("--pair", default="resnet14,resnet8", type=lambda s: tuple(s.split(",")))
    parser.add_argument("--size", type=int, default=32, help="image side (CIFAR: 32)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=3, help="steps of each of the two warm-up epochs")
    parser.add_argument("--steps", type=int, default=10, help="steps of each timed epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    todo = {"kd": [("KD alone", ["KD"])], "group": [(f"{len(METHODS)}-method group", METHODS)]}
    todo["both"] = todo["kd"] + todo["group"]
    print(f"# torch {torch.__version__}, {args.threads} CPU thread(s), {args.pair[0]} -> {args.pair[1]}, "
          f"{args.size}x{args.size}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds", flush=True)
    for label, methods in todo[args.what]:
        result = measure(label, methods, modes, args)
        base = result["modes"].get("none", {}).get("student_img_s")
        for mode, r in result["modes"].items():
            ratio = f"  {r['student_img_s'] / base:.2f}x eager" if base else ""
            print(f"{label:20s} {mode:16s} {r['student_img_s']:9.1f} student-img/s{ratio}  rounds {r['rounds']}  "
                  f"warm-up {r['warmup_s']} s (compiling {r['compile_s']} s)" + (f"  not compiled: {r['not_compiled']}" if r["not_compiled"] else ""),
                  flush=True)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
