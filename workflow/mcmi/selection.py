"""Choosing lambda* (Table 6): the grid value whose MCMI teacher gives the best KD student."""

from __future__ import annotations

import json
from collections import defaultdict
from statistics import mean
from typing import Sequence

from mcmi.provenance import now, versions, write_json_atomic


def select_lambda(metrics_paths: Sequence[str], out_path: str, *, teacher: str, dataset: str) -> dict:
    """lambda* = argmax over the grid of the mean final test accuracy of the KD students trained on
    each grid teacher (ties: the smaller lambda). The paper selects on test accuracy (CIFAR has no
    validation split); the score's name says so."""
    scores: dict[float, list[float]] = defaultdict(list)
    for path in metrics_paths:
        with open(path) as handle:
            metrics = json.load(handle)
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
        "provenance": {"inputs": list(metrics_paths), "versions": versions(), "finished": now()},
    }
    write_json_atomic(out_path, result)
    return result
