"""Metrics JSON files as records, read strictly and checked before any number is used: a missing key, a
NaN, a value out of its range, a ``final`` that disagrees with the last epoch of its history, a ``run``
that disagrees with the file's place in the results tree, or a broken seal is an error naming the file
and what is wrong."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcmi.identity import seal_problem
from mcmi.pipeline.naming import Setting, Variant
from mcmi.pipeline.paths import Paths
from mcmi.provenance import read_json_strict


@dataclass(frozen=True)
class MetricsRecord:
    """One metrics JSON file: its ``run``, ``final`` and ``history`` blocks."""

    path: str
    run: dict[str, Any]
    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

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
    """Read metrics files and check each (see :func:`record_problems`); one ValueError lists every
    problem of every file: unreadable JSON, a NaN/inf anywhere (strict JSON: such a number never
    reaches a table), a missing run/final/stage, a value out of range, an inconsistency."""
    records, problems = [], []
    for path in map(str, paths):
        try:
            data = read_json_strict(path)
        except OSError as err:
            raise ValueError(f"{path}: cannot read metrics JSON ({err})") from err
        for key in ("run", "final"):
            if not isinstance(data.get(key), dict):
                raise ValueError(f"{path}: missing required key '{key}'")
        provenance = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
        record = MetricsRecord(path, data["run"], data["final"], data.get("history") or [], provenance)
        record.need("run", "stage")
        problems += [f"{path}: {problem}" for problem in record_problems(record, data)]
        records.append(record)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in the metrics files; nothing was tabulated:\n  "
                         + "\n  ".join(problems))
    return records


# Ranges of the metrics, by key name wherever they occur in ``final`` or ``history`` (nested too).
_SLACK = 1e-9


def _range_problem(key: str, value: Any) -> str | None:
    name = key.lower()
    if name.startswith("loss_"):
        return None       # a loss term per epoch ('loss_cmi' = -lambda * KL), named after its term, not a metric
    if name.endswith(("_acc", "_top5")) or name in ("acc", "top5"):
        low, high, what = 0.0, 100.0, "an accuracy in [0, 100] (%)"
    elif name.endswith("_cmi") or name == "cmi":
        low, high, what = -_SLACK, float("inf"), "a CMI >= 0 (nats)"
    elif name.endswith("_ll") or name == "ll":
        low, high, what = float("-inf"), _SLACK, "a log-likelihood <= 0 (nats)"
    elif name.endswith("_entropy") or name == "entropy":
        low, high, what = -_SLACK, float("inf"), "an entropy >= 0 (nats)"
    else:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"'{key}' is {value!r}, expected {what}"
    if not low <= value <= high:
        return f"'{key}' is {value}, expected {what}"
    return None


def _ranges(block: Any, where: str) -> list[str]:
    found = []
    if isinstance(block, dict):
        for key, value in block.items():
            if isinstance(value, (dict, list)):
                found += _ranges(value, f"{where}.{key}")
            else:
                problem = _range_problem(str(key), value)
                if problem:
                    found.append(f"{where}: {problem}")
    elif isinstance(block, list):
        for i, value in enumerate(block):
            found += _ranges(value, f"{where}[{i}]")
    return found


_RESULTS_TREE = Paths("")
_PLACES = ("student_metrics", "vanilla_metrics", "teacher_metrics", "measure", "hsakd_heads_metrics", "synthetic",
           "embedding", "class_cmi", "cam")


def expected_run(path: str) -> dict[str, Any]:
    """What a metrics file's ``run`` block must hold, given where the file lies in a results tree
    (empty for a file outside the tree's templates)."""
    for place in _PLACES:
        found = _RESULTS_TREE.parse(place, path)
        if found is None:
            continue
        run: dict[str, Any] = {k: found[k] for k in ("dataset", "teacher", "student", "method", "preset") if k in found}
        if "seed" in found:
            run["seed"] = int(found["seed"])
        if "variant" in found:
            run.update(Variant.parse(found["variant"]).run_fields())
        if "setting" in found:
            run.update(Setting.parse(found["setting"]).run_fields())
        if "temp" in found:
            run["temperature"] = float(found["temp"])
        if "dmu" in found:
            run["delta_mu"] = float(found["dmu"])
        return run
    return {}


def _same(recorded: Any, expected: Any) -> bool:
    if isinstance(expected, float) and isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        return float(recorded) == expected
    return recorded == expected


def record_problems(record: MetricsRecord, data: dict[str, Any]) -> list[str]:
    """What is wrong with one metrics file, judged on its own: its seal, value ranges (accuracies in
    [0, 100], CMI >= 0, LL <= 0, entropy >= 0, numbers where numbers belong), ``final`` against its history's last
    epoch, and its ``run`` against its path."""
    problems = [p for p in [seal_problem(data)] if p]
    problems += _ranges(record.final, "final") + _ranges(record.history, "history")
    last = record.history[-1] if record.history and isinstance(record.history[-1], dict) else None
    if last is not None:
        for final_key, history_key in (("test_acc", "test_acc"), ("epochs", "epoch")):
            if final_key in record.final and history_key in last and record.final[final_key] != last[history_key]:
                problems.append(f"final.{final_key} is {record.final[final_key]} but the last history entry "
                                f"has {history_key} {last[history_key]}")
    for key, expected in expected_run(record.path).items():
        if key not in record.run or not _same(record.run[key], expected):
            problems.append(f"run.{key} is {record.run.get(key)!r} but the file's path says {expected!r}")
    return problems


def of_stage(records: Iterable[MetricsRecord], stage: str) -> list[MetricsRecord]:
    """The records of one stage."""
    return [r for r in records if r.stage == stage]


def tag_foreign_dataset(record: MetricsRecord, paper_dataset: str) -> MetricsRecord:
    """A run on another dataset than the paper's gets 'name [dataset]' model names (no paper match)."""
    dataset = record.run.get("dataset")
    if dataset is None or dataset == paper_dataset:
        return record
    run = {**record.run, **{k: f"{record.run[k]} [{dataset}]" for k in ("teacher", "student") if k in record.run}}
    return MetricsRecord(record.path, run, record.final, record.history, record.provenance)


def check_against_plan(records: Iterable[MetricsRecord], plan: Any) -> None:
    """Refuse results that the current config did not make: each record's spec fingerprint
    (``provenance.spec_fingerprint``) must equal that of the job spec ``plan`` (a
    :class:`~mcmi.pipeline.WorkflowConfig`) plans for its path. This catches outputs left from an
    earlier config that Snakemake did not rebuild (e.g. a results folder used without its
    ``.snakemake`` metadata). A ValueError names every stale file and how to rebuild it."""
    stale, rules = [], []
    for record in records:
        planned = plan.planned_spec(record.path)
        if planned is None:
            continue
        recorded = record.provenance.get("spec_fingerprint")
        if recorded == planned.fingerprint():
            continue
        why = ("records no spec fingerprint (written by an older version)" if recorded is None
               else "was made by another job spec than the config now plans")
        stale.append(f"{record.path}: {why}")
        rules.append(plan.rule_of(record.path))
    if stale:
        shown = "\n  ".join(stale[:20]) + (f"\n  ... and {len(stale) - 20} more" if len(stale) > 20 else "")
        raise ValueError(
            f"{len(stale)} input file(s) are stale: the current config plans other jobs for them, so a "
            f"table of them would mix results of two configs:\n  {shown}\n"
            f"Rebuild them: delete these files and run snakemake again, or run "
            f"`snakemake --forcerun {' '.join(sorted(set(rules)))}` with your target.")
