"""The measurements of ``make gpu-check`` (benchmarks/gpu_check.py runs each part in its own process,
with a time limit, and collects the rows each part writes as it goes).

    python benchmarks/gpu_bench.py PART --out rows.jsonl [--smoke]

Parts (student-images per second = images stepped through per second, summed over the students):

- ``kd_alone``: resnet56 -> resnet20 KD, one student; ``group11``: the 11 Table 1 methods on that pair
  in one group (one teacher pass per batch). Each for fp32/bf16 x channels-last off/on x
  ``eager`` (the trainer's own epoch loop, ``mcmi.train._train_epoch``: device-side batches, every
  member's step, its loss sums) and ``captured``: the teacher's forward pass and each member's whole
  step (forward, backward, SGD) recorded once as CUDA graphs and replayed per batch (batches are made
  as in eager and copied into the graphs' input buffers). A member whose step cannot be captured is
  named and stepped eagerly. Captured steps keep the learning rate of their capture: a speed figure,
  not a training mode (the training mode is the ``compile`` part).
- ``loader``: RepDistiller's loop as its ``train_student.py`` runs it: a ``DataLoader`` with 8 workers
  decoding PIL images of CIFAR-shaped uint8 data (RandomCrop 32/4, flip, ToTensor, Normalize), blocking
  copies to the GPU, KD step, ``loss.item()`` and top-1/5 every step; and the loader alone.
- ``model_steps``: a training step (CE, SGD) and a forward pass of every model the paper grid trains,
  at its recipe's batch size (CIFAR 64, ImageNet 256 at 224 px): the rates of the GPU-hour estimate.
- ``compile``: KD alone and the method group, fp32 NCHW, in the trainer's loop with its ``compile``
  option (``mcmi.capture``: the teacher's forward pass and each member's step through ``torch.compile``,
  as a job with config ``compile`` trains): ``none`` (eager, the baseline in the same process), then
  ``reduce-overhead`` and ``default``; the two warm-up epochs' seconds (compilation) and the rate of a
  third epoch. The smoke run compiles KD alone in ``default`` mode on the CPU.

``--smoke`` runs every part on the CPU with tiny sizes (checks the code paths; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_students import METHODS, FirstBatches, _calibrate_batchnorm  # noqa: E402
from mcmi.data.batch import Batch  # noqa: E402
from mcmi.data.tensors import TensorImageDataset  # noqa: E402
from mcmi.distill import SharedTeacher  # noqa: E402
from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads  # noqa: E402
from mcmi.models import create_model, probe_shapes  # noqa: E402
from mcmi.pipeline.specs import StudentSpec  # noqa: E402
from mcmi.stages import student_members  # noqa: E402
from mcmi.train import Member, Precision, _prepare_steps, _train_epoch  # noqa: E402

NUM_CLASSES = 100
BATCH = 64              # the CIFAR recipes' batch (8 on the smoke run)
PAIR = ("resnet56", "resnet20")


class Rows:
    """Result rows, one JSON object per line, flushed as they come (a part stopped at its time limit
    keeps what it measured)."""

    def __init__(self, path: Path, part: str) -> None:
        self.handle, self.part = open(path, "a"), part

    def add(self, what: str, setting: str, value: float | str | None, unit: str = "", note: str = "",
            **extra: Any) -> None:
        row = {"part": self.part, "what": what, "setting": setting, "value": value, "unit": unit, "note": note, **extra}
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        print(json.dumps(row), flush=True)


class Sizes:
    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.num_train = 512 if smoke else 50_000
        self.warmup, self.steps = (1, 2) if smoke else (10, 50)
        self.group_warmup, self.group_steps = (1, 1) if smoke else (5, 20)
        self.methods = ["KD", "CRD", "HSAKD"] if smoke else METHODS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _data(sizes: Sizes) -> TensorImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (sizes.num_train, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(sizes.num_train) % NUM_CLASSES
    data = TensorImageDataset(images, labels, NUM_CLASSES, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276), "random-cifar")
    data.on_device(sizes.device)
    return data


def _teacher(data: TensorImageDataset, folder: Path) -> tuple[SharedTeacher, str]:
    torch.manual_seed(1)
    model = create_model(PAIR[0], NUM_CLASSES)
    _calibrate_batchnorm(model, FirstBatches(data, 1_000_000), batches=5)
    heads = folder / "heads.pt"
    save_teacher_heads(HSAKDTeacherHeads(probe_shapes(model, (3, 32, 32)), NUM_CLASSES, PAIR[0]).heads, heads)
    return SharedTeacher(model, PAIR[0]), str(heads)


def _members(methods: list[str], data: TensorImageDataset, teacher: SharedTeacher, heads: str, folder: Path,
             precision: Precision, device: torch.device) -> list[Member]:
    specs = [StudentSpec(student=PAIR[1], teacher=PAIR[0], teacher_checkpoint="(in memory)", method=m, seed=0,
                         recipe={"epochs": 1, "lr": 1e-4, "batch_size": BATCH, "milestones": []},
                         extra={"hsakd_teacher_heads": heads}, dataset={"kind": "random-cifar"},
                         out_metrics=str(folder / f"{m}.json"), out_model=str(folder / f"{m}.pt")) for m in methods]
    teacher.model.to(memory_format=torch.contiguous_format)
    return student_members(specs, data, teacher, device, precision)


def _eager_rate(members: list[Member], data: TensorImageDataset, teacher: SharedTeacher, precision: Precision,
                device: torch.device, warmup: int, steps: int) -> float:
    """Student-images per second of the trainer's epoch loop over ``steps`` batches (after a warm-up epoch)."""
    _train_epoch(members, 1, FirstBatches(data, warmup), device, True, teacher, precision)
    return _timed_epoch(members, 2, data, teacher, precision, device, steps)


def _timed_epoch(members: list[Member], epoch: int, data: TensorImageDataset, teacher: SharedTeacher,
                 precision: Precision, device: torch.device, steps: int) -> float:
    """Student-images per second of one epoch of ``steps`` batches of the trainer's loop (device synced
    before and after); a member whose loss went non-finite fails the measurement."""
    _sync(device)
    tic = time.perf_counter()
    _train_epoch(members, epoch, FirstBatches(data, steps), device, True, teacher, precision)
    _sync(device)
    failed = [m.failure for m in members if m.failure]
    if failed:
        raise FloatingPointError("; ".join(failed))
    return len(members) * steps * BATCH / (time.perf_counter() - tic)


def _captured_rate(members: list[Member], data: TensorImageDataset, teacher: SharedTeacher, precision: Precision,
                   device: torch.device, warmup: int, steps: int) -> tuple[float, dict[str, str], bool]:
    """Student-images per second with the teacher pass and each member's step replayed as CUDA graphs;
    the members that could not be captured (with why) and whether every loss stayed finite."""
    first = next(iter(data.batches(BATCH, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0),
                                   device=device)))
    static = Batch(precision.layout(first.x).clone(), first.y.clone(), first.index.clone())

    def step(member: Member, batch: Batch) -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.dtype == "bf16", cache_enabled=False):
            out = member.objective.step(member.model, batch, 1)
        out.loss.backward()
        member.optimizer.step()
        return out

    for member in members:
        member.model.train()
        member.objective.train()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                        # warm-up: lazy inits, optimiser state, cuDNN's choice
        for _ in range(max(2, warmup)):
            teacher.clear()
            for member in members:
                member.optimizer.zero_grad(set_to_none=True)
                step(member, Batch(static.x, static.y, static.index))
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    teacher.clear()
    pool = torch.cuda.graph_pool_handle()
    teacher_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(teacher_graph, pool=pool):
        teacher.extract(static.x)                         # the memo keeps these outputs for the members' captures
    graphs: list[Any] = []
    outputs: list[Any] = []
    not_captured: dict[str, str] = {}
    for member in members:
        member.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool):
                outputs.append(step(member, static))
            graphs.append(graph)
        except Exception as error:                        # a host sync, a data-dependent shape, ...
            not_captured[member.label.split("[")[-1].rstrip("]")] = f"{type(error).__name__}: {str(error)[:160]}"
            graphs.append(None)
            outputs.append(None)
            torch.cuda.synchronize()
    finite = torch.ones((), dtype=torch.bool, device=device)

    def run(batches: Iterator[Batch]) -> None:
        nonlocal finite
        for batch in batches:
            static.x.copy_(precision.layout(batch.x))
            static.y.copy_(batch.y)
            static.index.copy_(batch.index)
            teacher_graph.replay()
            for member, graph, out in zip(members, graphs, outputs):
                if graph is not None:
                    graph.replay()
                    finite &= torch.isfinite(out.loss.detach()).all()
                else:
                    member.optimizer.zero_grad(set_to_none=True)
                    finite &= torch.isfinite(step(member, Batch(static.x, static.y, static.index)).loss.detach()).all()

    gen = torch.Generator().manual_seed(1)
    run(FirstBatches(data, warmup).batches(BATCH, shuffle=True, augment=True, generator=gen, device=device))
    torch.cuda.synchronize()
    tic = time.perf_counter()
    run(FirstBatches(data, steps).batches(BATCH, shuffle=True, augment=True, generator=gen, device=device))
    torch.cuda.synchronize()
    return len(members) * steps * BATCH / (time.perf_counter() - tic), not_captured, bool(finite)


def _students(rows: Rows, sizes: Sizes, methods: list[str], label: str, warmup: int, steps: int) -> None:
    folder = Path(tempfile.mkdtemp())
    data = _data(sizes)
    teacher, heads = _teacher(data, folder)
    torch.backends.cudnn.benchmark = sizes.device.type == "cuda"
    modes = ["eager"] if sizes.smoke else ["eager", "captured"]
    for dtype in ("fp32", "bf16"):
        for channels_last in (False, True):
            for mode in modes:
                setting = f"{dtype}, {'channels-last' if channels_last else 'NCHW'}, {mode}"
                try:
                    precision = Precision(dtype, channels_last)
                    members = _members(methods, data, teacher, heads, folder, precision, sizes.device)
                    if mode == "eager":
                        rate = _eager_rate(members, data, teacher, precision, sizes.device, warmup, steps)
                        rows.add(label, setting, rate, "student-img/s", mode=mode, dtype=dtype,
                                 channels_last=channels_last, students=len(methods))
                    else:
                        rate, missed, finite = _captured_rate(members, data, teacher, precision, sizes.device,
                                                              warmup, steps)
                        note = ("; ".join(f"{k} stepped eagerly ({v})" for k, v in missed.items()) +
                                ("" if finite else "; a loss went non-finite"))
                        rows.add(label, setting, rate, "student-img/s", note.strip("; "), mode=mode, dtype=dtype,
                                 channels_last=channels_last, students=len(methods), not_captured=sorted(missed))
                except Exception as error:                    # this setting fails; the others still run
                    rows.add(label, setting, None, "", f"failed: {type(error).__name__}: {str(error)[:300]}")
                    traceback.print_exc()
                finally:
                    members = None
                    teacher.clear()
                    if sizes.device.type == "cuda":
                        torch.cuda.empty_cache()
    if sizes.smoke:
        rows.add(label, "captured", "not available", "", "CPU smoke run: CUDA graphs need a GPU")


def part_kd_alone(rows: Rows, sizes: Sizes) -> None:
    _students(rows, sizes, ["KD"], f"KD {PAIR[0]}->{PAIR[1]} alone", sizes.warmup, sizes.steps)


def part_group11(rows: Rows, sizes: Sizes) -> None:
    _students(rows, sizes, sizes.methods, f"{len(sizes.methods)}-method group {PAIR[0]}->{PAIR[1]}",
              sizes.group_warmup, sizes.group_steps)


# ------------------------------------------------------------------------------------ RepDistiller loop
class _PILCifar(torch.utils.data.Dataset):
    """CIFAR-shaped uint8 images as RepDistiller's dataset hands them out: a PIL image through torchvision
    transforms per sample."""

    def __init__(self, images: Any, labels: Any, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def part_loader(rows: Rows, sizes: Sizes) -> None:
    import numpy as np
    from torchvision import transforms

    from mcmi.distill._common import kd_loss

    workers = 2 if sizes.smoke else 8
    steps, warmup = (3, 1) if sizes.smoke else (150, 20)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (sizes.num_train, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, sizes.num_train)
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(),
                                    transforms.Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))])
    loader = torch.utils.data.DataLoader(_PILCifar(images, labels, transform), batch_size=BATCH, shuffle=True,
                                         num_workers=workers)     # as its get_cifar100_dataloaders: no pinning
    device = sizes.device

    def batches(count: int) -> Iterator[Any]:
        while True:
            for k, item in enumerate(loader):
                yield item
                count -= 1
                if count == 0:
                    return

    stream = batches(warmup + steps)
    for _ in range(warmup):
        next(stream)
    tic = time.perf_counter()
    for _ in range(steps):
        next(stream)
    rows.add("RepDistiller DataLoader alone", f"{workers} workers, PIL crop/flip", steps * BATCH / (time.perf_counter() - tic),
             "img/s")

    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.manual_seed(0)
    teacher, student = create_model(PAIR[0], NUM_CLASSES).to(device).eval(), create_model(PAIR[1], NUM_CLASSES).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    student.train()

    meters = {"loss": 0.0, "top1": torch.zeros((), device=device), "top5": torch.zeros((), device=device)}

    def kd_step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.float().to(device), y.to(device)                  # blocking copies, as its .cuda()
        logits = student(x)
        with torch.no_grad():
            t_logits = teacher(x)
        loss = 0.1 * F.cross_entropy(logits, y) + 0.9 * kd_loss(logits, t_logits, 4.0)
        top5 = logits.topk(5, dim=1).indices                        # its accuracy() and AverageMeters
        meters["top1"] += (top5[:, 0] == y).float().sum()
        meters["top5"] += (top5 == y[:, None]).any(dim=1).float().sum()
        meters["loss"] += loss.item() * len(y)                      # losses.update(loss.item(), ...): a host read
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    stream = batches(warmup + steps)
    for _ in range(warmup):
        kd_step(*next(stream))
    _sync(device)
    tic = time.perf_counter()
    for _ in range(steps):
        kd_step(*next(stream))
    _sync(device)
    rows.add(f"RepDistiller loop, KD {PAIR[0]}->{PAIR[1]}", f"DataLoader {workers} workers + KD step, fp32",
             steps * BATCH / (time.perf_counter() - tic), "student-img/s", "the baseline the pipeline is compared with")


# --------------------------------------------------------------------------------------- model steps
def part_model_steps(rows: Rows, sizes: Sizes) -> None:
    from grid_cost import grid_work, models_of, plan

    device = sizes.device
    torch.backends.cudnn.benchmark = device.type == "cuda"
    models = models_of(grid_work(plan()))
    todo = [(name, "cifar", 32, BATCH, NUM_CLASSES) for name in sorted(models.get("cifar100", set()) |
                                                                        models.get("cifar10", set()))]
    todo += [(name, "imagenet", 224, 256, 1000) for name in sorted(models.get("imagenet", set()))]
    todo.sort(key=lambda t: (t[1] != "cifar", t[0] not in PAIR, t[0]))       # the pair first, ImageNet last
    if sizes.smoke:
        todo = [t for t in todo if t[0] in PAIR][:2]
    warmup, steps = (1, 1) if sizes.smoke else (3, 10)
    for name, kind, size, batch, classes in todo:
        try:
            torch.manual_seed(0)
            model = create_model(name, classes).to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
            x = torch.randn(batch, 3, size, size, device=device)
            y = torch.randint(0, classes, (batch,), device=device)

            def train_step() -> None:
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                optimizer.step()

            @torch.no_grad()
            def forward() -> None:
                model(x)

            for label, fn, train_mode in (("train", train_step, True), ("forward", forward, False)):
                model.train(train_mode)
                for _ in range(warmup):
                    fn()
                _sync(device)
                tic = time.perf_counter()
                for _ in range(steps):
                    fn()
                _sync(device)
                rows.add(f"model step {label}", f"{name} ({kind}, batch {batch}, fp32)",
                         steps * batch / (time.perf_counter() - tic), "img/s", model=name, step=label, dataset=kind)
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as error:
            rows.add(f"model step", f"{name} ({kind})", None, "", f"failed: {type(error).__name__}: {str(error)[:200]}")


# ------------------------------------------------------------------------------------------- compile
def _compiled_rate(members: list[Member], data: TensorImageDataset, teacher: SharedTeacher, precision: Precision,
                   device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """The trainer's loop with its steps compiled in ``precision.compile`` (``mcmi.capture``, as a job
    with config ``compile`` runs them): the seconds of two warm-up epochs of ``warmup`` steps (the first
    compiles; the second compiles DKD's and ReviewKD's later-epoch graph) and the student-images per
    second of a third epoch of ``steps`` steps."""
    tic = time.perf_counter()
    _prepare_steps(members, teacher, precision.compile)
    for epoch in (1, 2):
        _train_epoch(members, epoch, FirstBatches(data, warmup), device, True, teacher, precision)
    _sync(device)
    warmup_s = time.perf_counter() - tic
    return _timed_epoch(members, 3, data, teacher, precision, device, steps), warmup_s


def part_compile(rows: Rows, sizes: Sizes) -> None:
    """KD alone and the method group, fp32 NCHW, with the trainer's ``compile`` option: eager, then
    ``reduce-overhead`` and ``default`` (KD alone first: a part stopped at its time limit keeps it)."""
    folder = Path(tempfile.mkdtemp())
    data = _data(sizes)
    teacher, heads = _teacher(data, folder)
    torch.backends.cudnn.benchmark = sizes.device.type == "cuda"
    runs = [(["KD"], f"KD {PAIR[0]}->{PAIR[1]} alone", sizes.warmup, sizes.steps),
            (sizes.methods, f"{len(sizes.methods)}-method group {PAIR[0]}->{PAIR[1]}", sizes.group_warmup,
             sizes.group_steps)]
    modes = ["none", "default"] if sizes.smoke else ["none", "reduce-overhead", "default"]
    for methods, label, warmup, steps in runs[:1] if sizes.smoke else runs:
        for mode in modes:
            setting = f"fp32, NCHW, compile {mode}"
            try:
                torch._dynamo.reset()
                precision = Precision("fp32", False, mode)
                members = _members(methods, data, teacher, heads, folder, precision, sizes.device)
                rate, warmup_s = _compiled_rate(members, data, teacher, precision, sizes.device, warmup, steps)
                eager = [m.label.split("[")[-1].rstrip("]") for m in members if m.compile_mode == "none"]
                note = (f"2 warm-up epochs of {warmup} steps: {warmup_s:.1f} s"
                        + (f"; stepped eagerly: {', '.join(eager)}" if eager and mode != "none" else ""))
                rows.add(label, setting, rate, "student-img/s", note, mode=f"compile {mode}", dtype="fp32",
                         channels_last=False, students=len(methods), warmup_s=warmup_s)
            except Exception as error:                    # this setting fails; the others still run
                rows.add(label, setting, None, "", f"failed: {type(error).__name__}: {str(error)[:300]}")
                traceback.print_exc()
            finally:
                members = None
                teacher.set_compile("none")
                teacher.clear()
                if sizes.device.type == "cuda":
                    torch.cuda.empty_cache()
    if sizes.smoke:
        rows.add(runs[1][1], "compile", "not available", "", "CPU smoke run: KD alone only (compiling the group "
                 "on a CPU takes minutes; benchmarks/compile_bench.py measures it)")


PARTS = {"kd_alone": part_kd_alone, "group11": part_group11, "loader": part_loader, "model_steps": part_model_steps,
         "compile": part_compile}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file the rows are appended to")
    parser.add_argument("--smoke", action="store_true", help="on the CPU, tiny sizes: checks the code paths")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA GPU (use --smoke to check the code paths on the CPU)")
    if args.smoke:
        global BATCH
        BATCH = 8
        torch.set_num_threads(2)
    PARTS[args.part](Rows(args.out, args.part), Sizes(args.smoke))


if __name__ == "__main__":
    main()
