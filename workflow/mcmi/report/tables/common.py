"""Pieces several tables share: the one pair of Tables 3 and 7, teacher and KD-student observations."""

from __future__ import annotations

from typing import Any

from mcmi.report.records import MetricsRecord, of_stage

# Tables 3 and 7 are printed for one pair only; their CSVs do not name it (paper, Sec. 6.3 / A.8.3).
SINGLE_PAIR = ("resnet56", "resnet20")
# The teacher measurements of Tables 4 and 7: our ``final`` key -> the table's metric.
TEACHER_METRICS = {"test_acc": "teacher_acc", "train_cmi": "teacher_cmi", "train_ll": "teacher_ll"}


def teacher_observations(records: list[MetricsRecord], metrics: dict[str, str],
                         extra: dict[str, str]) -> list[dict[str, Any]]:
    """Observations of teacher measurements at T = 1; ``extra`` maps output keys to run keys."""
    observations = []
    for rec in of_stage(records, "measure"):
        if rec.run.get("temperature") not in (None, 1):
            continue
        cell = {"teacher": rec.need("run", "teacher"), "student": "",
                **{out: rec.need("run", key) for out, key in extra.items()}}
        observations += [{**cell, "metric": metric, "value": float(rec.need("final", key))}
                         for key, metric in metrics.items()]
    return observations


def kd_student_observations(records: list[MetricsRecord], extra: dict[str, str]) -> list[dict[str, Any]]:
    """Observations of KD students' test accuracy (full training set), with their seeds; ``extra`` maps
    output keys to run keys."""
    return [
        {"teacher": rec.need("run", "teacher"), "student": rec.need("run", "student"),
         **{out: rec.need("run", key) for out, key in extra.items()}, "seed": rec.run.get("seed"),
         "metric": "student_acc", "value": float(rec.need("final", "test_acc"))}
        for rec in of_stage(records, "student")
        if rec.run.get("method") == "KD" and rec.run.get("alpha_percent") in (None, 100)
    ]
