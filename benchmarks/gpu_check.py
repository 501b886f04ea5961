"""``make gpu-check``: the first thing to run on a new GPU machine.

On a machine with a CUDA GPU it runs the CUDA tests (``pytest -m "cuda and not slow"``), then the benchmarks of
``benchmarks/gpu_bench.py`` (student-images/s of resnet56 -> resnet20 KD alone and of the 11-method
group, fp32/bf16 x channels-last x eager/captured; RepDistiller's DataLoader loop as the baseline; a
training step and a forward pass of every model of the paper grid; ``torch.compile``), each part in its
own process with a time limit, so that the whole check ends within ``--budget`` seconds (480: 8 minutes
on one H100-class GPU) and a part that fails or overruns still leaves what it measured. Then it
recomputes the paper grid's GPU hours from the measured rates (``benchmarks/grid_cost.py``), prints
one table and writes it, with the device, the versions and the commit, to ``docs/results/gpu.md``.
Without a GPU it says so in one line and exits 0.

    python benchmarks/gpu_check.py                     # on a GPU machine (make gpu-check)
    python benchmarks/gpu_check.py --smoke --out X.md  # every part on the CPU, tiny sizes (checks the code)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent / "gpu_bench.py"
# (part, seconds it may take at most on an H100-class GPU), in the order they run: what matters most first
PARTS = [("cuda_tests", 170), ("kd_alone", 60), ("group11", 150), ("loader", 45), ("model_steps", 45), ("compile", 240)]
RESERVE_S = 15          # kept for the estimate and the report
MIN_PART_S = 20         # a part is not started with less than this left


def environment(smoke: bool) -> dict[str, str]:
    import torch

    info = {"host": platform.node(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "CUDA (torch built with)": str(torch.version.cuda), "cuDNN": str(torch.backends.cudnn.version()),
            "commit": _git("rev-parse", "HEAD") + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no")
                                                     else "")}
    if torch.cuda.is_available() and not smoke:
        props = torch.cuda.get_device_properties(0)
        info.update(device=f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible)",
                    driver=_nvidia_smi("driver_version"))
    else:
        info["device"] = "CPU (smoke run: the figures mean nothing)"
    return info


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def _nvidia_smi(field: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def run_cuda_tests(timeout: float, smoke: bool, log: Path) -> list[dict[str, Any]]:
    """``pytest -m "cuda and not slow"`` (on the smoke run only the CUDA test file, whose tests skip there;
    the slow CUDA tests compile steps for minutes: the ``compile`` part times compiled steps instead)."""
    target = ["tests/test_cuda.py"] if smoke else ["tests"]
    command = [sys.executable, "-m", "pytest", "-m", "cuda and not slow", *target, "-q", "-p", "no:cacheprovider", "-rfEs"]
    tic = time.time()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        output, status = done.stdout + done.stderr, f"exit {done.returncode}"
    except subprocess.TimeoutExpired as stopped:
        output = (stopped.stdout or b"").decode(errors="replace") if isinstance(stopped.stdout, bytes) else (stopped.stdout or "")
        status = f"stopped at its time limit ({timeout:.0f} s)"
    log.write_text(output)
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", output))
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    value = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "errors", "error", "skipped") if k in counts)
    return [{"part": "cuda_tests", "what": "CUDA tests", "setting": "pytest -m 'cuda and not slow'", "value": value or status,
             "unit": "", "note": (f"{status}, {time.time() - tic:.0f} s" + (f"; failed: {', '.join(failed)}" if failed
                                                                           else "")), "failed": failed}]


def run_part(part: str, timeout: float, smoke: bool, folder: Path) -> list[dict[str, Any]]:
    rows_file, log = folder / f"{part}.jsonl", folder / f"{part}.log"
    rows_file.unlink(missing_ok=True)
    command = [sys.executable, str(BENCH), part, "--out", str(rows_file)] + (["--smoke"] if smoke else [])
    tic = time.time()
    note = ""
    with open(log, "w") as out:
        try:
            done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "PYTHONPATH": f"{REPO / 'workflow'}{os.pathsep}"
                                                                   f"{os.environ.get('PYTHONPATH', '')}"})
            if done.returncode != 0:
                note = f"{part} exited with status {done.returncode}: " + _last_line(log)
        except subprocess.TimeoutExpired:
            note = f"{part} stopped at its time limit ({timeout:.0f} s); the rows before it are kept"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
    if note:
        rows.append({"part": part, "what": part, "setting": "", "value": None, "unit": "", "note": note})
    print(f"[gpu-check] {part}: {len(rows)} rows in {time.time() - tic:.0f} s{'; ' + note if note else ''}", flush=True)
    return rows


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def estimate(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """GPU hours of the paper grid from the measured rates (None when the model steps were not measured)."""
    sys.path.insert(0, str(BENCH.parent))
    from grid_cost import gpu_hours, grid_work, plan

    steps = [r for r in rows if r["part"] == "model_steps" and isinstance(r.get("value"), (int, float))]
    if not steps:
        return None
    train = {r["model"]: r["value"] for r in steps if r["step"] == "train"}
    forward = {r["model"]: r["value"] for r in steps if r["step"] == "forward"}
    group_row = _row(rows, "group11", "fp32", False, "eager")
    group = float(group_row["value"]) if group_row else None
    overhead, note = 0.0, "no method overhead (the method group was not measured)"
    teacher, student = "resnet56", "resnet20"
    if group and teacher in forward and student in train:
        # the group's seconds per student-image beyond its students' steps and its share of the teacher pass
        overhead = 1.0 / group - 1.0 / train[student] - 1.0 / (group_row["students"] * forward[teacher])
        note = (f"method overhead {overhead * 1e6:.1f} us per student-image (taken as 0 if negative), from the "
                f"fp32 eager {group_row['students']}-method group (applied to every pair)")
    jobs = grid_work(plan())
    result = gpu_hours(jobs, {"train": train, "forward": forward, "student_overhead_s": overhead})
    best = max((r for r in rows if r["part"] == "group11" and isinstance(r.get("value"), (int, float))),
               key=lambda r: r["value"], default=None)
    result.update(overhead_note=note, best_group=best, fp32_group=group)
    return result


def _row(rows: list[dict[str, Any]], part: str, dtype: str, channels_last: bool, mode: str) -> dict[str, Any] | None:
    for r in rows:
        if (r["part"] == part and r.get("dtype") == dtype and r.get("channels_last") == channels_last
                and r.get("mode") == mode and isinstance(r.get("value"), (int, float))):
            return r
    return None


def _value(row: dict[str, Any]) -> str:
    value = row.get("value")
    if isinstance(value, float):
        return f"{value:,.0f} {row['unit']}".strip() if abs(value) >= 100 else f"{value:,.2f} {row['unit']}".strip()
    return "—" if value is None else f"{value} {row.get('unit', '')}".strip()


def report(info: dict[str, str], rows: list[dict[str, Any]], cost: dict[str, Any] | None, seconds: float,
           budget: float, smoke: bool) -> str:
    lines = ["# GPU check", "",
             "Written by `make gpu-check` (`benchmarks/gpu_check.py`; parts in `benchmarks/gpu_bench.py`)"
             + (" in its **CPU smoke mode**: the code paths ran, the figures mean nothing." if smoke else "."), ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += [f"- the check took {seconds:.0f} s (budget {budget:.0f} s)", "",
              "| what | setting | result | note |", "| --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['what']} | {row['setting']} | {_value(row)} | {str(row.get('note', '')).replace('|', '/')} |")
    if cost is not None:
        by_kind = cost["by_kind"]
        total = cost["total_measured"]
        partial = (f"**partial**: without {', '.join(cost['kinds_not_measured'])} (no rate for "
                   f"{', '.join(cost['models_without_rates'])}); " if cost["kinds_not_measured"] else "")
        lines.append(f"| GPU hours, paper grid (fp32 eager) | from the model-step rates above | {total:,.0f} h | "
                     f"{partial}{cost['overhead_note']} |")
        best, fp32 = cost["best_group"], cost["fp32_group"]
        if best and fp32:
            students = sum(v for k, v in by_kind.items() if k.startswith("students") and not math.isnan(v))
            scaled = total - students + students * fp32 / best["value"]
            lines.append(f"| GPU hours, paper grid (students at the best group setting) | {best['setting']} | "
                         f"{scaled:,.0f} h | student jobs scaled by the {best.get('students')}-method group's rate "
                         f"ratio to its fp32 eager rate, {best['value'] / fp32:.2f}x |")
        lines += ["", "GPU hours by job kind (fp32 eager rates; NaN: a model without a measured rate):", ""]
        lines += [f"- {kind}: {hours:,.1f} h" for kind, hours in sorted(by_kind.items())]
    else:
        lines += ["", "No GPU-hour estimate: the model steps were not measured."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "gpu.md")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds the whole check may take")
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU with tiny sizes")
    parser.add_argument("--parts", nargs="*", default=[name for name, _ in PARTS], choices=[name for name, _ in PARTS])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "workflow"))      # this clone's package, as the jobs run it
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU on this machine (torch {torch.__version__}); nothing to check here.")
        return 0
    tic = time.time()
    deadline = tic + args.budget - RESERVE_S
    folder = REPO / "results" / "gpu-check" if not args.smoke else args.out.parent / "gpu-check-logs"
    folder.mkdir(parents=True, exist_ok=True)
    info = environment(args.smoke)
    print("[gpu-check] " + "; ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    rows: list[dict[str, Any]] = []
    for part, limit in PARTS:
        if part not in args.parts:
            continue
        left = deadline - time.time()
        if left < MIN_PART_S:
            rows.append({"part": part, "what": part, "setting": "", "value": None, "unit": "",
                         "note": f"not run: {max(0, left):.0f} s of the budget left"})
            continue
        timeout = min(limit * (4 if args.smoke else 1), left)
        try:
            rows += (run_cuda_tests(timeout, args.smoke, folder / "cuda_tests.log") if part == "cuda_tests"
                     else run_part(part, timeout, args.smoke, folder))
        except Exception as error:                    # the check goes on with the next part
            rows.append({"part": part, "what": part, "setting": "", "value": None, "unit": "",
                         "note": f"failed: {type(error).__name__}: {error}"})
    try:
        cost = estimate(rows)
    except Exception as error:
        cost = None
        rows.append({"part": "estimate", "what": "GPU-hour estimate", "setting": "", "value": None, "unit": "",
                     "note": f"failed: {type(error).__name__}: {error}"})
    text = report(info, rows, cost, time.time() - tic, args.budget, args.smoke)
    print(text, flush=True)
    from mcmi.provenance import write_text_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, text)
    print(f"[gpu-check] written to {args.out} (logs in {folder})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
