"""Do bf16 students land within seed noise of fp32 ones? Compares two results folders of the same config.

Each folder holds a finished run of the same targets, one with ``precision: fp32`` and one with
``precision: bf16`` (checked against each metrics file's provenance). Students are matched by their path
(dataset, pair, method, teacher variant, setting, seed). Printed: per cell (a path without its seed) the
mean test accuracy of each precision and their difference, then two summary figures measured on the same
students:

- precision effect: mean |acc_bf16 − acc_fp32| over students of the same seed (same initialisation and
  batches, so only the rounding differs);
- seed noise: mean |acc_seed_a − acc_seed_b| over pairs of seeds of the same cell, in fp32.

    python benchmarks/bf16_vs_fp32.py results/demo-fp32 results/demo-bf16
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
from pathlib import Path

SEED_FOLDER = re.compile(r"/seed(\d+)/metrics\.json$")


def student_accuracies(root: Path, precision: str) -> dict[tuple[str, int], float]:
    """Test accuracy of every student under ``root``, keyed by (cell, seed); refuses another precision."""
    found = {}
    for path in sorted(root.rglob("students/**/metrics.json")):
        relative = "/" + path.relative_to(root).as_posix()
        match = SEED_FOLDER.search(relative)
        if match is None or relative.startswith("/_"):   # _finished/, _resume/: the workflow's own copies
            continue
        metrics = json.loads(path.read_text())
        recorded = metrics["provenance"]["config"].get("precision", "fp32")
        if recorded != precision:
            raise SystemExit(f"{path}: trained with precision {recorded!r}, expected {precision!r}")
        found[(relative[1:match.start()], int(match.group(1)))] = float(metrics["final"]["test_acc"])
    if not found:
        raise SystemExit(f"{root}: no student metrics found")
    return found


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32_results", type=Path)
    parser.add_argument("bf16_results", type=Path)
    args = parser.parse_args()
    fp32 = student_accuracies(args.fp32_results, "fp32")
    bf16 = student_accuracies(args.bf16_results, "bf16")
    shared = sorted(set(fp32) & set(bf16))
    if not shared:
        raise SystemExit("the two folders have no student in common")
    cells = sorted({cell for cell, _ in shared})
    print(f"{len(shared)} students in both folders, {len(cells)} cells\n")
    print("| cell | seeds | fp32 acc | bf16 acc | bf16 − fp32 | fp32 seed std |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    seed_noise = []
    for cell in cells:
        a = [fp32[key] for key in shared if key[0] == cell]
        b = [bf16[key] for key in shared if key[0] == cell]
        std = f"{statistics.stdev(a):.2f}" if len(a) > 1 else "—"
        print(f"| {cell} | {len(a)} | {mean(a):.2f} | {mean(b):.2f} | {mean(b) - mean(a):+.2f} | {std} |")
        seed_noise += [abs(x - y) for x, y in itertools.combinations(a, 2)]
    precision_effect = [abs(bf16[key] - fp32[key]) for key in shared]
    print(f"\nprecision effect: mean |bf16 − fp32| of the same student = {mean(precision_effect):.2f} points "
          f"(max {max(precision_effect):.2f}, {len(precision_effect)} students)")
    if seed_noise:
        print(f"seed noise: mean |seed a − seed b| in the same cell (fp32) = {mean(seed_noise):.2f} points "
              f"(max {max(seed_noise):.2f}, {len(seed_noise)} pairs)")
        verdict = "within" if mean(precision_effect) <= mean(seed_noise) else "NOT within"
        print(f"bf16 is {verdict} seed noise (mean precision effect {mean(precision_effect):.2f} vs "
              f"mean seed noise {mean(seed_noise):.2f})")


if __name__ == "__main__":
    main()
