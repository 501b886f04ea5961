"""Choosing lambda* (Table 6): the grid value whose MCMI teacher gives the best KD student."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Sequence

from mcmi.identity import sealed
from mcmi.provenance import code_origin, copy_file_atomic, now, read_json_strict, versions, write_json_atomic


def select_lambda(metrics_paths: Sequence[str], out_path: str, *, teacher: str, dataset: str) -> dict:
    """lambda* = argmax over the grid of the mean final test accuracy of the KD students trained on
    each grid teacher (ties: the smaller lambda). The paper selects on test accuracy (CIFAR has no
    validation split); the score's name says so."""
    scores: dict[float, list[float]] = defaultdict(list)
    for path in metrics_paths:
        metrics = read_json_strict(path)
        run = metrics.get("run", {})
        if "lam" not in run:
            raise ValueError(f"{path}: run has no 'lam'; select-lambda needs students of the lambda grid")
        scores[float(run["lam"])].append(float(metrics["final"]["test_acc"]))
    if not scores:
        raise ValueError("select-lambda got no metrics files")
    means = {lam: mean(values) for lam, values in sorted(scores.items())}
    best = max(means.values())
    lambda_star = min(lam for lam, value in means.items() if value == best)
    result = {
        "run": {"stage": "select_lambda", "teacher": teacher, "dataset": dataset},
        "final": {"lambda_grid": sorted(means), "scores": {str(k): v for k, v in means.items()},
                  "n": {str(k): len(v) for k, v in sorted(scores.items())},
                  "score_name": "mean KD-student test accuracy (%)", "lambda_star": lambda_star},
        "provenance": {"inputs": list(metrics_paths), "versions": versions(), **code_origin(), "finished": now()},
    }
    write_json_atomic(out_path, result)
    return result


def adopt_teacher(models: Sequence[str], metrics: Sequence[str], out_model: str, out_metrics: str, *,
                  selection: str | None = None, lam: float | None = None) -> float:
    """Copy the grid teacher at lambda* (from ``selection`` or the given ``lam``) to the MCMI teacher's
    paths. ``models`` and ``metrics`` are the grid teachers' files in the same order (the rule's
    inputs); the one whose metrics record lambda* is adopted, and the copy says which and why."""
    if selection is not None:
        lam = float(read_json_strict(selection)["final"]["lambda_star"])
    if lam is None:
        raise ValueError("adopt-teacher needs a selection file or a lambda")
    if len(models) != len(metrics):
        raise ValueError(f"adopt-teacher got {len(models)} models but {len(metrics)} metrics files")
    grid = {float(read_json_strict(path)["run"]["lam"]): (model, path) for model, path in zip(models, metrics)}
    if lam not in grid:
        raise ValueError(f"no grid teacher with lambda {lam} among {sorted(grid)}")
    model, metrics_path = grid[lam]
    adopted = read_json_strict(metrics_path)
    adopted["run"].update(variant="MCMI", lam=lam)
    adopted["adopted"] = {"from": str(Path(metrics_path).parent), "lambda_star": lam,
                          "by": "selection" if selection else "paper value", "selection_file": selection}
    copy_file_atomic(model, out_model)
    write_json_atomic(out_metrics, sealed(adopted))
    return lam
