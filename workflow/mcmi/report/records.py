"""Metrics JSON files as records, read strictly: a missing key or a NaN is an error naming the file."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcmi.provenance import read_json_strict


@dataclass(frozen=True)
class MetricsRecord:
    """One metrics JSON file: its ``run``, ``final`` and ``history`` blocks."""

    path: str
    run: dict[str, Any]
    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.run["stage"]

    def need(self, section: str, key: str) -> Any:
        """The value of ``section.key``; ValueError naming the file and the key when absent."""
        block = getattr(self, section)
        if key not in block or block[key] is None:
            raise ValueError(f"{self.path}: missing required key '{section}.{key}'")
        return block[key]


def load_metrics(paths: Iterable[str | Path]) -> list[MetricsRecord]:
    """Read metrics files; ValueError naming the file for unreadable JSON, a NaN/inf anywhere in it
    (strict JSON: such a number never reaches a table), or a missing run/final/stage."""
    records = []
    for path in map(str, paths):
        try:
            data = read_json_strict(path)
        except OSError as err:
            raise ValueError(f"{path}: cannot read metrics JSON ({err})") from err
        for key in ("run", "final"):
            if not isinstance(data.get(key), dict):
                raise ValueError(f"{path}: missing required key '{key}'")
        record = MetricsRecord(path, data["run"], data["final"], data.get("history") or [])
        record.need("run", "stage")
        records.append(record)
    return records


def of_stage(records: Iterable[MetricsRecord], stage: str) -> list[MetricsRecord]:
    """The records of one stage."""
    return [r for r in records if r.stage == stage]


def tag_foreign_dataset(record: MetricsRecord, paper_dataset: str) -> MetricsRecord:
    """A run on another dataset than the paper's gets 'name [dataset]' model names (no paper match)."""
    dataset = record.run.get("dataset")
    if dataset is None or dataset == paper_dataset:
        return record
    run = {**record.run, **{k: f"{record.run[k]} [{dataset}]" for k in ("teacher", "student") if k in record.run}}
    return MetricsRecord(record.path, run, record.final, record.history)
