"""The scripts under benchmarks/: the comparison script on small hand-made results folders, and
bench_students' arithmetic on hand-made timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bf16_vs_fp32.py"


def _student(root: Path, cell: str, seed: int, acc: float, precision: str) -> None:
    path = root / cell / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"final": {"test_acc": acc}, "provenance": {"config": {"precision": precision}}}))


def _run(*args: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_bf16_vs_fp32_compares_the_same_students_and_refuses_a_wrong_precision(tmp_path) -> None:
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    cell = "digits/students/a-b/KD/MLL/full"
    for seed, (a, b) in enumerate([(80.0, 81.0), (84.0, 83.0)]):
        _student(fp32, cell, seed, a, "fp32")
        _student(bf16, cell, seed, b, "bf16")
    _student(bf16, "_finished/" + cell, 0, 10.0, "bf16")     # the workflow's own copy: not a student
    out = _run(fp32, bf16)
    assert out.returncode == 0, out.stderr
    assert "2 students in both folders, 1 cells" in out.stdout
    assert "mean |bf16 − fp32| of the same student = 1.00 points" in out.stdout
    assert "mean |seed a − seed b| in the same cell (fp32) = 4.00 points" in out.stdout
    assert "bf16 is within seed noise" in out.stdout
    _student(bf16, cell, 1, 83.0, "fp32")                     # a student trained at the other precision
    refused = _run(fp32, bf16)
    assert refused.returncode != 0 and "expected 'bf16'" in refused.stderr


def test_bench_students_bound_counts_each_teacher_side_work_once_per_batch(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_students

    specs = [SimpleNamespace(method=m) for m in ("KD", "AT", "HSAKD")]
    run = bench_students.Round(
        alone=[(10.0, {"forward": 4.0, "hsakd": 0.0}), (10.0, {"forward": 4.0, "hsakd": 0.0}),
               (20.0, {"forward": 0.0, "hsakd": 8.0})],
        grouped=(38.0, {"forward": 4.0, "hsakd": 8.0}), paired=None)
    figures = bench_students._figures(run, specs, steps=2)
    # per batch: forward 8 / (2 students x 2 steps) = 2 s, HSAKD's side 8 / 2 steps = 4 s; alone 40 s of
    # which 16 s teacher-side, so the group at best takes 2 x (2 + 4) + 24 = 36 s
    assert figures["teacher_forward_ms"] == pytest.approx(2000.0)
    assert figures["hsakd_teacher_ms"] == pytest.approx(4000.0)
    assert figures["bound"] == pytest.approx(40 / 36)
    assert figures["ratio"] == pytest.approx(40 / 38)
    assert figures["of_bound"] == pytest.approx(36 / 38)
    assert figures["bound_without_hsakd"] == pytest.approx(20 / (2 * 2 + 12))
    assert figures["by_pair_ratio"] is None


GPU_CHECK = REPO / "benchmarks" / "gpu_check.py"


def _workflow_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path) -> None:
    out = subprocess.run([sys.executable, str(GPU_CHECK), "--out", str(tmp_path / "gpu.md")], capture_output=True,
                         text=True, env=_workflow_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1 and "no CUDA GPU" in out.stdout, out.stdout
    assert not (tmp_path / "gpu.md").exists()


@pytest.mark.slow
def test_gpu_check_smoke_run_measures_every_part_and_writes_its_table(tmp_path) -> None:
    """Every part of the GPU check on the CPU with tiny sizes: each writes its rows, the table and the
    GPU-hour estimate are written (the figures mean nothing; this checks the code a GPU will run)."""
    out = subprocess.run([sys.executable, str(GPU_CHECK), "--smoke", "--out", str(tmp_path / "gpu.md")],
                         capture_output=True, text=True, env=_workflow_env(), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = (tmp_path / "gpu.md").read_text()
    assert "CPU smoke mode" in text and "- commit: " in text and "- torch: " in text
    for what in ("CUDA tests", "KD resnet56->resnet20 alone", "3-method group resnet56->resnet20",
                 "RepDistiller DataLoader alone", "RepDistiller loop", "model step train", "GPU hours, paper grid"):
        assert f"| {what}" in text, what
    rows = [line for line in text.splitlines() if line.startswith("| KD resnet56->resnet20 alone | fp32")]
    assert any(re_number.search(row) for row in rows for re_number in [__import__("re").compile(r"\| [\d,.]+ student-img/s")])
    compiled = [line for line in text.splitlines()
                if line.startswith("| KD resnet56->resnet20 alone | fp32, NCHW, compile default |")]
    assert len(compiled) == 1 and __import__("re").search(r"\| [\d,.]+ student-img/s \| 2 warm-up epochs", compiled[0])
    assert "failed" not in text and "stopped at its time limit" not in text, text


def test_grid_cost_counts_the_paper_grid_as_snakemake_plans_it() -> None:
    """The GPU-hour estimate's job counts are `snakemake -n`'s for config/config.yaml: 392 student groups
    with 2,627 students, 40 vanilla students, 25 teacher jobs (2 of them imports of torchvision's
    weights), 60 fine-tunings (MCMI grids, regularised and labelled-subset teachers), 56 measurements,
    12 HSAKD head trainings, 8 synthetic jobs and 6 analyses (t-SNE, per-class CMI, Eigen-CAM)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from grid_cost import grid_work, plan, summary

    rows = summary(grid_work(plan()))

    def total(kind: str, key: str = "jobs") -> int:
        return sum(row[key] for name, row in rows.items() if name.startswith(kind + " "))

    assert total("students") == 392 and total("students", "students") == 2627
    assert (total("vanilla"), total("teacher") + total("import"), total("import"), total("hsakd_heads"),
            total("mcmi"), total("measure"), total("synthetic"), total("analysis")) == (40, 25, 2, 12, 60, 56, 8, 6)
    cifar100 = rows["students (cifar100)"]
    # every CIFAR-100 student is 240 epochs; few-shot ones train on a subset, so fewer images than 240 x 50,000 each
    assert cifar100["model_epochs"] == 240 * cifar100["students"]
    assert cifar100["train_images"] < 240 * 50_000 * cifar100["students"]
