"""The CUDA paths, on a GPU (``pytest -m cuda``; skipped without one; ``make gpu-check`` runs them first).

Every stage for one tiny epoch on CUDA; a grouped student job equals the same students trained alone
with deterministic algorithms; the device-side crop/flip equals the CPU's for the same generator; bf16
autocast gives finite losses for every method; a killed job resumes exactly on CUDA; two jobs claim
different GPUs; and no training step makes the host wait for the device (``set_sync_debug_mode``).
Steps compiled with the config's ``compile`` (both modes) agree with eager within the CPU test's
tolerance and wait for the device no more than eager ones (marked slow too: compiling takes minutes,
so ``make gpu-check`` runs ``-m "cuda and not slow"`` and times compiled steps in its benchmarks).

Tolerances. Floats are compared bit for bit where the same kernels run on the same shapes in one
process: grouped vs alone and a run vs its resumption, with ``torch.use_deterministic_algorithms(True)``
and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS's reductions in a fixed order) -- cuDNN's autotuner picks
its algorithm once per shape and process, so both sides use the same one. A member whose ops have no
deterministic CUDA kernel (PyTorch warns so under ``warn_only=True``: atomic adds in some backward
passes) may differ by float rounding, amplified by a few SGD steps: it is held to a relative 1e-3 of
its weights' scale, and the test names it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

# cuBLAS reads this when it creates its handle: before any CUDA work of the session.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from mcmi.data.tensors import TensorImageDataset, random_crop_flip  # noqa: E402
from mcmi.distill import registry  # noqa: E402
from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads  # noqa: E402
from mcmi.models import create_model, probe_shapes  # noqa: E402
from mcmi.stages import run_stage  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]

REPO = Path(__file__).resolve().parents[1]
METHODS = sorted(name for name in registry() if name != "vanilla")
DATASET = {"kind": "digits", "image_size": 8, "max_train": 64, "max_test": 32}
SMALL_K = {"CRD": {"nce_k": 8}, "CRD+KD": {"nce_k": 8}, "MIMKD": {"nce_k": 8}}


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(7)
    teacher = create_model("resnet14", 10)
    torch.save({"model": teacher.state_dict()}, folder / "model.pt")
    save_teacher_heads(HSAKDTeacherHeads(probe_shapes(teacher, (3, 8, 8)), 10).heads, folder / "heads.pt")
    return {"checkpoint": str(folder / "model.pt"), "heads": str(folder / "heads.pt")}


def student(root: Path, method: str, files: dict[str, str], epochs: int = 1, **extra: Any) -> dict:
    out = root / method
    spec = {"stage": "student", "dataset": DATASET, "seed": 3, "device": "cuda", "student": "resnet8",
            "teacher": "resnet14", "teacher_checkpoint": files["checkpoint"], "method": method,
            "recipe": {"epochs": epochs, "lr": 0.05, "batch_size": 16, "milestones": [1]},
            "hparams": SMALL_K.get(method, {}), "extra": {"hsakd_teacher_heads": files["heads"]},
            "out_metrics": str(out / "metrics.json"), "out_model": str(out / "model.pt"),
            "resume": str(root / "_resume" / method / "last.pt"),
            "run": {"dataset": "digits", "teacher": "resnet14", "student": "resnet8", "method": method}}
    spec.update(extra)
    return spec


def _metrics(spec: dict) -> dict:
    return json.loads(Path(spec["out_metrics"]).read_text())


def _history(spec: dict) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in _metrics(spec)["history"]]


def _weights(spec: dict) -> dict[str, torch.Tensor]:
    return torch.load(spec["out_model"], weights_only=True)["model"]


@pytest.fixture
def deterministic():
    """Deterministic algorithms (warning, not failing, where an op has none: the test names those)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------------------------------- every stage
@pytest.mark.parametrize("stage", ["teacher", "mcmi", "measure", "hsakd_heads", "import", "student", "student_group"])
def test_each_stage_runs_one_tiny_epoch_on_cuda(tmp_path, teacher_files, stage):
    common = {"dataset": DATASET, "seed": 0, "device": "cuda", "out_metrics": str(tmp_path / "metrics.json"),
              "run": {"dataset": "digits", "teacher": "resnet14"}}
    recipe = {"epochs": 1, "lr": 0.05, "batch_size": 16, "milestones": []}
    model = {"model": "resnet14", "out_model": str(tmp_path / "model.pt")}
    specs = {
        "teacher": {**common, **model, "stage": "teacher", "recipe": recipe, "cmi_every": 1},
        "mcmi": {**common, **model, "stage": "mcmi", "teacher_checkpoint": teacher_files["checkpoint"], "lam": 0.1,
                 "recipe": recipe},
        "measure": {**common, "stage": "measure", "model": "resnet14", "checkpoint": teacher_files["checkpoint"]},
        "hsakd_heads": {**common, **model, "stage": "hsakd_heads", "checkpoint": teacher_files["checkpoint"],
                        "recipe": recipe},
        "import": {**common, **model, "stage": "import", "checkpoint": teacher_files["checkpoint"]},
        "student": student(tmp_path, "KD", teacher_files),
        "student_group": {"stage": "student_group",
                          "members": [student(tmp_path, m, teacher_files) for m in ("KD", "CRD", "HSAKD")]},
    }
    run_stage(specs[stage])
    metrics = [_metrics(m) for m in specs[stage]["members"]] if stage == "student_group" else [_metrics(specs[stage])]
    for m in metrics:
        assert m["provenance"]["device"].startswith("cuda"), m["provenance"]["device"]
        numbers = [v for v in m["final"].values() if isinstance(v, float)]
        assert numbers and all(math.isfinite(v) for v in numbers), m["final"]


# ---------------------------------------------------------------------------- grouped == alone
def test_a_grouped_job_equals_its_students_alone_on_cuda(tmp_path, teacher_files, deterministic):
    nondeterministic: dict[str, list[str]] = {}
    alone = [student(tmp_path / "alone", m, teacher_files) for m in METHODS]
    for spec in alone:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_stage(spec)
        found = sorted({str(w.message)[:120] for w in caught if "deterministic" in str(w.message)})
        if found:
            nondeterministic[spec["method"]] = found
    group = [student(tmp_path / "group", m, teacher_files) for m in METHODS]
    run_stage({"stage": "student_group", "members": group})
    differing = []
    for solo, member in zip(alone, group):
        a, b = _weights(solo), _weights(member)
        if solo["method"] in nondeterministic:
            scale = max(float(v.abs().max()) for v in a.values() if v.is_floating_point())
            worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
            assert worst <= 1e-3 * scale, (solo["method"], worst, scale, nondeterministic[solo["method"]])
            continue
        if any(not torch.equal(a[k], b[k]) for k in a) or _history(solo) != _history(member):
            differing.append(solo["method"])
    assert differing == [], f"not bit for bit on CUDA: {differing}; warned nondeterministic: {nondeterministic}"
    print(f"members held to a tolerance (ops without a deterministic CUDA kernel): {nondeterministic}")


# ------------------------------------------------------------------------------ data on device
def test_device_side_crop_flip_and_batches_equal_the_cpus():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cpu = random_crop_flip(images, torch.Generator().manual_seed(5))
    gpu = random_crop_flip(images.cuda(), torch.Generator().manual_seed(5))
    assert gpu.is_cuda and torch.equal(cpu, gpu.cpu())
    data = TensorImageDataset(images, torch.arange(64) % 10, 10, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "random")
    host = list(data.batches(16, shuffle=True, augment=True, generator=torch.Generator().manual_seed(2)))
    device = list(data.batches(16, shuffle=True, augment=True, generator=torch.Generator().manual_seed(2),
                               device="cuda"))
    # normalising divides by tensors on the device (a host number would be a product with its reciprocal
    # on CUDA): correctly rounded on both, so the batches are equal bit for bit
    for a, b in zip(host, device):
        assert b.x.is_cuda and torch.equal(a.x, b.x.cpu()) and torch.equal(a.y, b.y.cpu())
        assert torch.equal(a.index, b.index.cpu())


# -------------------------------------------------------------------------------------- bf16
def test_bf16_autocast_gives_finite_losses_for_every_method(tmp_path, teacher_files):
    members = [student(tmp_path, m, teacher_files, precision="bf16", channels_last=True) for m in METHODS + ["vanilla"]]
    run_stage({"stage": "student_group", "members": members})      # a non-finite loss fails the job
    for spec in members:
        record = _history(spec)[0]
        losses = {k: v for k, v in record.items() if k.startswith("loss") or k == "train_loss"}
        assert losses and all(v == v and abs(v) != float("inf") for v in losses.values()), (spec["method"], losses)


# ------------------------------------------------------------------------------------ resume
def test_a_killed_job_resumes_exactly_on_cuda(tmp_path, teacher_files, deterministic):
    from mcmi import train

    methods = ["KD", "CRD", "HSAKD"]
    full = [student(tmp_path / "full", m, teacher_files, epochs=3) for m in methods]
    run_stage({"stage": "student_group", "members": full})
    killed = [student(tmp_path / "killed", m, teacher_files, epochs=3) for m in methods]
    original = train._end_epoch

    def stop_after_two(member, epoch, *args):
        original(member, epoch, *args)
        if epoch == 2 and member.label.endswith("[HSAKD]"):
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "_end_epoch", stop_after_two)
        with pytest.raises(KeyboardInterrupt):
            run_stage({"stage": "student_group", "members": killed})
    run_stage({"stage": "student_group", "members": killed})
    for a, b in zip(full, killed):
        assert _history(a) == _history(b), a["method"]
        assert all(torch.equal(v, _weights(b)[k]) for k, v in _weights(a).items()), a["method"]


# ---------------------------------------------------------------------------------- claiming
def test_two_jobs_claim_their_gpus(tmp_path, teacher_files):
    """Two jobs at once: each runs on a GPU; with two or more visible, on different ones."""
    specs = [student(tmp_path / f"job{k}", "KD", teacher_files, epochs=2, device="auto") for k in range(2)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    jobs = [subprocess.Popen([sys.executable, "-m", "mcmi", "stage", "--spec", json.dumps(s)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for s in specs]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    devices = [_metrics(s)["provenance"]["device"] for s in specs]
    assert all(d.startswith("cuda") for d in devices), devices
    if torch.cuda.device_count() > 1:
        assert len(set(devices)) == 2, devices


# ------------------------------------------------------------------------------- host syncs
def _syncs_in_epoch(steps: int, folder: Path, teacher_files: dict[str, str], compile: str = "none") -> list[str]:
    """Synchronising CUDA calls (set_sync_debug_mode warnings) during one training epoch of every method
    (``compile``: with the steps compiled in that mode, after two warm-up epochs that compile them)."""
    from mcmi import train
    from mcmi.distill import SharedTeacher
    from mcmi.pipeline.specs import StudentSpec
    from mcmi.stages import student_members
    from mcmi.train import Precision

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16 * steps, 3, 8, 8), dtype=torch.uint8, generator=gen)
    data = TensorImageDataset(images, torch.arange(16 * steps) % 10, 10, (0.5,) * 3, (0.25,) * 3, "random",
                              crop_padding=2)
    teacher = SharedTeacher(create_model("resnet14", 10), "resnet14")
    specs = [StudentSpec(**{k: v for k, v in student(folder, m, teacher_files).items() if k not in ("stage", "resume")})
             for m in METHODS]
    precision = Precision(compile=compile)
    members = student_members(specs, data, teacher, torch.device("cuda"), precision)
    train._prepare_steps(members, teacher, compile)
    warmup = (1,) if compile == "none" else (1, 2)          # compiled: epoch 2 compiles the later-epoch graphs
    for epoch in warmup:
        train._train_epoch(members, epoch, data, torch.device("cuda"), True, teacher, precision)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train._train_epoch(members, len(warmup) + 1, data, torch.device("cuda"), True, teacher, precision)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


def test_no_training_step_waits_for_the_device(tmp_path, teacher_files):
    short = _syncs_in_epoch(2, tmp_path / "short", teacher_files)
    long = _syncs_in_epoch(6, tmp_path / "long", teacher_files)
    assert len(long) == len(short), sorted(set(long))     # per epoch, never per step


# ------------------------------------------------------------------------------ compiled steps
@pytest.mark.slow      # compiling takes minutes on a GPU: `make gpu-check` runs `-m "cuda and not slow"`
@pytest.mark.parametrize("mode", ["reduce-overhead", "default"])
def test_compiled_steps_agree_with_eager_on_cuda(tmp_path, teacher_files, mode, capsys):
    """A group of KD (captured as CUDA graphs under ``reduce-overhead``), DKD (its epoch becomes a
    symbolic input in epoch 2: no CUDA graphs then) and MIMKD (draws random numbers: compiled without
    CUDA graphs), 2 epochs with the config's ``compile``: each epoch's losses and the test accuracy
    within the CPU test's tolerance of the eager group's (tests/test_compile.py), and no host sync
    per step in a compiled epoch."""
    methods = ["KD", "DKD", "MIMKD"]
    eager = [student(tmp_path / "eager", m, teacher_files, epochs=2) for m in methods]
    run_stage({"stage": "student_group", "members": eager})
    compiled = [student(tmp_path / mode, m, teacher_files, epochs=2, compile=mode) for m in methods]
    run_stage({"stage": "student_group", "members": compiled})
    log = capsys.readouterr().out
    if mode == "reduce-overhead":
        assert "[student resnet8 <- resnet14 [MIMKD]] compile reduce-overhead: compiled without CUDA graphs" in log
    for a, b in zip(eager, compiled):
        for before, after in zip(_history(a), _history(b)):
            for key in ("train_loss", *(k for k in before if k.startswith("loss_"))):
                assert after[key] == pytest.approx(before[key], rel=1e-2, abs=1e-4), (a["method"], key)
            assert abs(after["test_acc"] - before["test_acc"]) <= 10.0, a["method"]   # 32 test images
    short = _syncs_in_epoch(2, tmp_path / "short", teacher_files, mode)
    long = _syncs_in_epoch(6, tmp_path / "long", teacher_files, mode)
    assert len(long) == len(short), sorted(set(long))
