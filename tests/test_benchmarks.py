"""The comparison scripts under benchmarks/ on small hand-made results folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
