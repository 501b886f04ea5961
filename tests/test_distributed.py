"""Jobs on several processes (mcmi.distributed): real torch.distributed with gloo on this CPU.

Two processes with the global batch of one: one step's gradient equals the single process's to
float rounding (within 1e-5 of the largest gradient entry; measured 1.1e-6 to 2.2e-6 for cross-entropy,
KD, DKD and AT), and the
teacher and a grouped student job (KD, DKD) end with the weights and metrics of the single-process
job to float tolerance, with BatchNorm over the global batch (``batchnorm: sync``). Not bit for bit,
because the gradient's all-reduce adds the two processes' partial gradients in another order than
one process's backward adds the rows, and the synchronised BatchNorm's statistics are sums of two
partial sums (float64); training then carries these rounding differences along. ``batchnorm: local``
normalises each process's half batch by its own statistics and is a different computation (tested:
it differs by far more). Measured on this CPU after 2 epochs (8 steps): at most 4.8e-7 on any weight
or running statistic of the teacher, 1.6e-5 of the KD student and 8e-7 of the DKD student (running
variances near 1); losses within 2e-6 relative, or 7e-8 of the training loss for a term as small as
DKD's target-class term. Tolerance: 1e-4 on weights and running statistics, 1e-5 relative (or of the
epoch's training loss) on losses and CMI. (AT at beta = 1000 on 8x8 digits has losses near 100 that amplify
the same rounding to 1e-2 within 8 steps, so only its first step is compared.)

Also: only rank 0 writes (every write of every process is traced), a job killed mid-run resumes to
the uninterrupted run's weights, and a process that dies fails the job naming its rank (through
torchrun, as the workflow starts it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mcmi.distributed import check_batches, shard_bounds
from mcmi.pipeline.specs import StudentGroupSpec, StudentSpec, TeacherSpec
from mcmi.stages import run_stage

REPO = Path(__file__).resolve().parents[1]
DIGITS = {"kind": "digits", "image_size": 8, "max_train": 120, "max_test": 60}
RECIPE = {"epochs": 2, "lr": 0.05, "batch_size": 32, "schedule": "step", "milestones": [1]}
WEIGHT_TOLERANCE = 1e-4     # on weights and running statistics after 2 epochs (see the docstring)
LOSS_TOLERANCE = 1e-5       # relative, or of the epoch's training loss, on every epoch's losses and CMI
SYNC = {"processes": 2, "batchnorm": "sync"}


# ------------------------------------------------------------------------------ no process group
@pytest.mark.parametrize("n, world", [(32, 2), (24, 2), (7, 3), (143, 8), (256, 8)])
def test_shards_are_contiguous_and_sum_to_the_batch(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_a_last_batch_too_small_for_the_processes_is_refused():
    check_batches(120, 32, 2, "teacher")                       # last batch of 24
    with pytest.raises(ValueError, match=r"end with a batch of 1, .* 2 processes"):
        check_batches(97, 32, 2, "teacher")


def _shards_equal_whole(data, world: int, **kwargs) -> None:
    whole = list(data.batches(8, generator=torch.Generator().manual_seed(3), **kwargs))
    parts = [list(data.batches(8, generator=torch.Generator().manual_seed(3), shard=(r, world), **kwargs))
             for r in range(world)]
    assert all(len(p) == len(whole) for p in parts)
    for k, batch in enumerate(whole):
        assert all(p[k].global_size == len(batch) for p in parts)
        assert torch.equal(torch.cat([p[k].x for p in parts]), batch.x)
        assert torch.equal(torch.cat([p[k].index for p in parts]), batch.index)
        assert torch.equal(torch.cat([p[k].y for p in parts]), batch.y)


def test_sharded_in_memory_batches_are_the_whole_batches_augmentation_included():
    from mcmi.data.sources import load_digits

    train, _ = load_digits(8)
    _shards_equal_whole(train.subset(torch.arange(30)), 3, shuffle=True, augment=True)


def test_streamed_folder_epochs_do_not_depend_on_workers_or_processes(image_folder):
    """Each image's random crop and flip come from its own seed: the same epoch with 0 or 2 decoding
    workers, and its shards over two processes are its batches."""
    from mcmi.data.folder import StreamingImageFolder

    train = StreamingImageFolder(image_folder / "train", 16, train=True, workers=0)
    _shards_equal_whole(train, 2, shuffle=True, augment=True)
    with_workers = StreamingImageFolder(image_folder / "train", 16, train=True, workers=2)
    a = [b.x for b in train.batches(8, shuffle=True, augment=True, generator=torch.Generator().manual_seed(1))]
    b = [b.x for b in with_workers.batches(8, shuffle=True, augment=True, generator=torch.Generator().manual_seed(1))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------ two processes (spawned)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, ports: list[int], specs: list[str], trace: str) -> None:
    """One process of distributed jobs: run each spec (a job of its own: its own process group, on its
    own port), recording every file its writers touch."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    import mcmi.stages as stages
    import mcmi.train as train

    writes: list[str] = []

    def traced(module, name):
        original = getattr(module, name)

        def write(path, *args, **kwargs):
            writes.append(str(path))
            return original(path, *args, **kwargs)
        setattr(module, name, write)

    for module, name in ((stages, "save_torch_atomic"), (stages, "write_json_atomic"), (stages, "link_or_copy"),
                         (train, "save_torch_atomic")):
        traced(module, name)
    for spec, port in zip(specs, ports):
        os.environ["MASTER_PORT"] = str(port)
        stages.run_stage(spec)
    Path(trace, f"rank{rank}.json").write_text(json.dumps(writes))


def _spawn(tmp_path: Path, specs: list) -> dict[int, list[str]]:
    import torch.multiprocessing as mp

    trace = tmp_path / "trace"
    trace.mkdir(exist_ok=True)
    mp.spawn(_worker, args=(2, [_free_port() for _ in specs], [s.to_json() for s in specs], str(trace)), nprocs=2)
    return {r: json.loads((trace / f"rank{r}.json").read_text()) for r in range(2)}


def _teacher(out: Path, distributed=None, epochs: int = 2, max_train: int = 120) -> TeacherSpec:
    return TeacherSpec(dataset={**DIGITS, "max_train": max_train}, seed=0, out_metrics=str(out / "metrics.json"),
                       device="cpu", resume=str(out / "_resume.pt"), model="resnet8",
                       recipe={**RECIPE, "epochs": epochs}, out_model=str(out / "model.pt"), cmi_every=1,
                       distributed=distributed)


def _students(out: Path, teacher: Path, distributed=None) -> StudentGroupSpec:
    members = []
    for method in ("KD", "DKD"):
        folder = out / method
        members.append(StudentSpec(
            dataset=DIGITS, seed=1, out_metrics=str(folder / "metrics.json"), device="cpu",
            resume=str(folder / "_resume.pt"), student="resnet8", method=method, recipe=RECIPE,
            out_model=str(folder / "model.pt"), distributed=distributed,
            teacher="resnet8", teacher_checkpoint=str(teacher),
            hparams={"warmup": 1} if method == "DKD" else {}))
    return StudentGroupSpec(members=tuple(members))


def _max_weight_difference(a: Path, b: Path) -> float:
    one = torch.load(a, weights_only=True)["model"]
    two = torch.load(b, weights_only=True)["model"]
    assert one.keys() == two.keys()
    return max(float((one[k].double() - two[k].double()).abs().max()) for k in one)


def _assert_same_run(one: Path, two: Path) -> None:
    """Weights within WEIGHT_TOLERANCE, every epoch's losses within LOSS_TOLERANCE, accuracies equal
    but for a flipped sample."""
    assert _max_weight_difference(one / "model.pt", two / "model.pt") <= WEIGHT_TOLERANCE
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert len(a["history"]) == len(b["history"]) == RECIPE["epochs"]
    for h1, h2 in zip(a["history"], b["history"]):
        for key in ("train_loss", "test_loss", *(k for k in h1 if k.startswith("loss_") or k.endswith("_cmi"))):
            assert h2[key] == pytest.approx(h1[key], rel=LOSS_TOLERANCE, abs=LOSS_TOLERANCE * h1["train_loss"]), key
        assert abs(h1["test_acc"] - h2["test_acc"]) <= 100 / DIGITS["max_test"] + 1e-9
        assert abs(h1["train_acc"] - h2["train_acc"]) <= 100 / DIGITS["max_train"] + 1e-9
    assert b["provenance"]["processes"] == 2 and "processes" not in a["provenance"]


@pytest.mark.slow
def test_two_processes_train_the_teacher_and_a_student_group_of_one_process(tmp_path):
    """2 gloo processes with the 1-process global batch: teacher and grouped students (KD, DKD; each its
    own DDP module, one teacher pass per process) equal the 1-process runs to float tolerance with
    synchronised BatchNorm; per-process BatchNorm differs.
    Rank 0 alone writes, each output once (and the resume point once per epoch)."""
    torch.set_num_threads(1)
    run_stage(_teacher(tmp_path / "one"))
    teacher = tmp_path / "one" / "model.pt"
    run_stage(_students(tmp_path / "one_students", teacher))
    writes = _spawn(tmp_path, [_teacher(tmp_path / "two", SYNC), _teacher(tmp_path / "local", {"processes": 2}),
                               _students(tmp_path / "two_students", teacher, SYNC)])

    _assert_same_run(tmp_path / "one", tmp_path / "two")
    for method in ("KD", "DKD"):
        _assert_same_run(tmp_path / "one_students" / method, tmp_path / "two_students" / method)
    assert _max_weight_difference(tmp_path / "one" / "model.pt", tmp_path / "local" / "model.pt") > 1e-3

    assert writes[1] == []
    outputs = [str(tmp_path / d / f) for d in ("two", "local") for f in ("model.pt", "metrics.json")]
    outputs += [str(tmp_path / "two_students" / m / f) for m in ("KD", "DKD")
                for f in ("model.pt", "metrics.json")]
    assert sorted(w for w in writes[0] if not w.endswith("_resume.pt")) == sorted(outputs)
    resume_writes = [w for w in writes[0] if w.endswith("_resume.pt")]
    assert len(resume_writes) == 2 * (2 + 2) and len(set(resume_writes)) == 4      # once per epoch each
    assert not list(tmp_path.rglob("_resume.pt"))                                  # removed when finished


STEP_METHODS = ("CE", "KD", "DKD", "AT")


def _one_step(method: str, shard=None, ranks=None):
    """Gradients of the student (or the CE-trained model) for the first batch of the digits at 8x8,
    through DDP on this process's shard when ``ranks`` is given; and the loss."""
    from mcmi import distributed
    from mcmi.data.sources import load_digits
    from mcmi.distill import Distillation, PairContext, build_method
    from mcmi.models import create_model
    from mcmi.models.base import probe_shapes
    from mcmi.objectives import CrossEntropy

    torch.manual_seed(0)
    train, _ = load_digits(8)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    if method == "CE":
        objective = CrossEntropy()
    else:
        ctx = PairContext(student=probe_shapes(student, (3, 8, 8)), teacher=probe_shapes(teacher, (3, 8, 8)),
                          num_classes=10, num_train=len(train), train_labels=train.labels, epochs=2,
                          input_shape=(3, 8, 8))
        objective = Distillation(build_method(method, ctx, {}), teacher)
    student.train()
    objective.train()
    batch = next(train.batches(32, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0),
                               **({"shard": shard} if shard else {})))
    if ranks is None:
        out = objective.step(student, batch, 1)
        out.loss.backward()
    else:
        distributed.sync_batchnorm(student)
        step = distributed.data_parallel(student, objective)     # held: its hooks reduce the gradient
        out = step(batch, 1)
        (out.loss * len(batch) * ranks.world / batch.global_size).backward()
    return {name: p.grad.clone() for name, p in student.named_parameters()}, float(out.loss.detach())


def _crd_setup():
    from mcmi.distill import PairContext, build_method
    from mcmi.models.base import FeatureShapes

    shapes = FeatureShapes(stages=((4, 2, 2),), preact_stages=((4, 2, 2),), pooled_dim=6, num_classes=3)
    labels = torch.arange(40) % 3
    ctx = PairContext(student=shapes, teacher=shapes, num_classes=3, num_train=40, train_labels=labels, epochs=1,
                      input_shape=(3, 8, 8))
    torch.manual_seed(0)
    method = build_method("CRD", ctx, {"nce_k": 8, "feat_dim": 5})
    generator = torch.Generator().manual_seed(1)
    f_s, f_t = torch.randn(10, 6, generator=generator), torch.randn(10, 6, generator=generator)
    return method, f_s, f_t, torch.randperm(40, generator=generator)[:10]


def _library_worker(rank: int, world: int, port: int, out: str) -> None:
    """One process: one DDP step of each method on its shard; CRD's bank update with its rows."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from mcmi import distributed

    distributed.start(world, "cpu", "sync")
    steps = {method: _one_step(method, (rank, world), distributed.ranks()) for method in STEP_METHODS}
    method, f_s, f_t, index = _crd_setup()
    start, stop = shard_bounds(len(index), rank, world)
    method.contrast(f_s[start:stop], f_t[start:stop], index[start:stop])
    banks = {"memory_s": method.memory_s, "memory_t": method.memory_t, "z_s": method.z_s}
    torch.save({"steps": steps, "banks": banks}, Path(out, f"rank{rank}.pt"))
    distributed.stop()


@pytest.mark.slow
def test_one_step_on_two_processes_is_the_one_process_step_and_crd_banks_stay_equal(tmp_path):
    """The gradient of a step on two processes (each its half batch, loss weighted by its share, DDP's
    average, synchronised BatchNorm) is the single process's gradient of the whole batch up to float
    rounding (measured: at most 2.2e-6 of the largest entry); CRD's memory banks, updated with every
    process's rows, are the single process's on both."""
    import torch.multiprocessing as mp

    mp.spawn(_library_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    torch.set_num_threads(1)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for method in STEP_METHODS:
        grads, loss = _one_step(method)
        largest = max(float(g.abs().max()) for g in grads.values())
        for rank in ranks:
            two, _ = rank["steps"][method]
            worst = max(float((grads[k] - two[k]).abs().max()) for k in grads)
            assert worst <= 1e-5 * largest, (method, worst, largest)
        halves = [rank["steps"][method][1] for rank in ranks]      # each process's mean over its 16 rows
        assert (halves[0] + halves[1]) / 2 == pytest.approx(loss, rel=1e-5)
    method, f_s, f_t, index = _crd_setup()
    method.contrast(f_s, f_t, index)
    for rank in ranks:
        banks = rank["banks"]
        assert torch.allclose(banks["memory_s"], method.memory_s, atol=1e-6)
        assert torch.allclose(banks["memory_t"], method.memory_t, atol=1e-6)
    # the normalising constant is the mean over the global batch's scores, the same on both processes
    # (not the single process's: each process draws the negatives of its own rows)
    assert float(ranks[0]["banks"]["z_s"]) == float(ranks[1]["banks"]["z_s"])


# ------------------------------------------------------------------------------ through torchrun
def _command(spec) -> list[str]:
    return [sys.executable, "-m", "mcmi", "stage", "--spec", spec.to_json()]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "OMP_NUM_THREADS": "1"}


def _start(spec) -> subprocess.Popen:
    return subprocess.Popen(_command(spec), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_epoch(proc: subprocess.Popen, resume: Path, first: int, last: int) -> int:
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if resume.exists():
            try:
                epoch = torch.load(resume, weights_only=True)["epoch"]
            except (RuntimeError, EOFError, OSError):
                epoch = 0
            if first <= epoch <= last:
                return epoch
        time.sleep(0.05)
    raise AssertionError(f"the job ended (rc {proc.poll()}) before epoch {first}: {proc.communicate()[0][-3000:]}")


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of the process of ``rank`` among the launcher's children (from its environment)."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no child of {launcher} has RANK={rank}")


@pytest.mark.slow
def test_a_killed_two_process_job_resumes_and_a_dead_process_fails_the_job(tmp_path):
    """Through `mcmi stage` (which starts torchrun): a job whose launcher and processes are SIGKILLed
    mid-run resumes from rank 0's checkpoint on both processes and ends with the uninterrupted job's
    weights; a job one of whose processes dies exits non-zero, its log naming that rank; a process that
    raises prints a line naming its rank."""
    epochs, max_train = 5, 600
    whole = _teacher(tmp_path / "whole", SYNC, epochs, max_train)
    done = subprocess.run(_command(whole), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[rank 1/2] started" in done.stdout and "torchrun --standalone --nproc-per-node=2" in done.stdout

    killed = _teacher(tmp_path / "killed", SYNC, epochs, max_train)
    proc = _start(killed)
    after = _wait_for_epoch(proc, Path(killed.resume), 1, epochs - 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    rerun = subprocess.run(_command(killed), env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming from {killed.resume} after epoch" in rerun.stdout
    resumed_after = int(rerun.stdout.split(f"resuming from {killed.resume} after epoch ")[1].split()[0])
    assert resumed_after >= after and f"epoch {resumed_after}/{epochs}" not in rerun.stdout
    assert _max_weight_difference(tmp_path / "whole" / "model.pt", tmp_path / "killed" / "model.pt") == 0.0

    dying = _teacher(tmp_path / "dying", SYNC, epochs, max_train)
    proc = _start(dying)
    _wait_for_epoch(proc, Path(dying.resume), 1, epochs - 2)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert "rank      : 1 (local_rank: 1)" in output and "Signal 9 (SIGKILL)" in output, output[-3000:]
    assert not Path(dying.out_metrics).exists()

    # a process that raises names itself, and the launcher stops the other (which waits for it)
    from mcmi.pipeline.specs import MCMISpec

    broken = MCMISpec(dataset=DIGITS, seed=0, out_metrics=str(tmp_path / "broken/metrics.json"), device="cpu",
                      model="resnet8", teacher_checkpoint=str(tmp_path / "no_such_teacher.pt"), lam=0.1,
                      recipe=RECIPE, out_model=str(tmp_path / "broken/model.pt"), distributed=SYNC)
    failed = subprocess.run(_command(broken), env=_env(), capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "[rank 0/2] failed: FileNotFoundError" in failed.stderr and "no_such_teacher.pt" in failed.stderr, \
        failed.stderr[-3000:]
