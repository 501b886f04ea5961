"""Aggregate metrics JSON files into the paper's tables, with the published numbers beside ours.

Every table is built in long (tidy) form: one row per cell with its keys, the metric, the paper's
value, ``ours_mean``/``ours_std``/``ours_n`` over the runs of that cell, ``diff = ours_mean - paper``
and a ``status``: ``ok`` (both), ``not run`` (paper cell we have no run for, never filled) or
``no paper value`` (our cell without a published counterpart, shown as "—").
Matching to the paper is by the cell keys (teacher, student, method, variant, alpha, lambda, ...),
and only for runs on the paper's dataset of that table: a run on another dataset (the demo's digits)
keeps its model names tagged with the dataset, so it can never sit beside a published number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mcmi.provenance import read_json_strict

OK, NOT_RUN, NO_PAPER = "ok", "not run", "no paper value"
DASH = "—"
GAIN = "MCMI − MLL"
VALUE_COLUMNS = ["paper", "ours_mean", "ours_std", "ours_n", "diff", "status"]

# The dataset of each table's published numbers (Table 5 is synthetic; Table 6 keys on the dataset).
PAPER_DATASET = {"1": "cifar100", "2": "imagenet", "3": "cifar100", "4": "imagenet", "7": "cifar100",
                 "1x": "cifar100"}
# Tables 3 and 7 are printed for one pair only; their CSVs do not name it (paper, Sec. 6.3 / A.8.3).
SINGLE_PAIR = ("resnet56", "resnet20")
DATASET_LABELS = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "imagenet": "ImageNet"}
METRIC_LABELS = {
    "student_acc": "Student Acc (%)", "student_top1": "Top-1 (%)", "student_top5": "Top-5 (%)",
    "teacher_acc": "Teacher Acc (%)", "teacher_top1": "Teacher Top-1 (%)", "teacher_top5": "Teacher Top-5 (%)",
    "teacher_ll": "Teacher LL (nats)", "teacher_cmi": "Teacher CMI (nats)", "lambda_star": "λ*",
    "acc": "Acc (%)", "pdist": "Pdist", "pdist_mean": "Pdist per sample (ours only)",
}
PAPER_SOURCES = {
    "1": "table1.csv, table1_teachers.csv, table1_students.csv", "2": "table2.csv", "3": "table3.csv",
    "4": "table4.csv", "5": "table5.csv", "6": "table6.csv (+ ImageNet λ* from setup.yaml)", "7": "table7.csv",
    "1x": "table1x.csv (each method's own paper/README, see SOURCE.md), table1_teachers.csv, table1_students.csv",
}
TARGET_LABELS = {"GroundTruth": "P* (ground truth)", "MCMI_KD": "MCMI teacher", "MLL_KD": "MLL teacher",
                 "OneHot": "one-hot"}


# --------------------------------------------------------------------------------------------- loading
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


# --------------------------------------------------------------------------------------------- helpers
def key_text(value: Any) -> str:
    """A cell key as text: numbers in shortest form (0.10 -> '0.1', 5.0 -> '5'), missing -> ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return ""
    try:
        return format(float(value), "g")
    except (TypeError, ValueError):
        return str(value)


def dataset_label(name: str) -> str:
    """Display name of a dataset (cifar100 -> CIFAR-100); unknown names are kept."""
    return DATASET_LABELS.get(name.lower(), name)


def _read_paper(paper_dir: str, name: str) -> pd.DataFrame:
    return pd.read_csv(Path(paper_dir) / name, dtype=str, keep_default_na=False)


def _as_float(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column, errors="coerce").astype(float)


def _aggregate(observations: list[dict[str, Any]], keys: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN when n=1) and n of ``value`` per key combination."""
    if not observations:
        return pd.DataFrame(columns=[*keys, "ours_mean", "ours_std", "ours_n"])
    frame = pd.DataFrame(observations)
    frame[keys] = frame[keys].map(key_text)
    grouped = frame.groupby(keys, sort=False)["value"]
    out = grouped.agg(ours_mean="mean", ours_std="std", ours_n="count").reset_index()
    out["ours_n"] = out["ours_n"].astype(int)
    return out


def _combine(paper: pd.DataFrame, ours: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Outer-join paper cells and our cells: paper order first, then our cells without a paper value."""
    paper = paper.copy()
    paper[keys] = paper[keys].map(key_text)
    paper = paper[paper["paper"].notna()].assign(_paper_rank=lambda f: range(len(f)))
    ours = ours.assign(_ours_rank=range(len(ours)))
    merged = paper.merge(ours, on=keys, how="outer", indicator=True)  # an outer merge sorts keys: restore order
    merged = merged.sort_values(["_paper_rank", "_ours_rank"], kind="stable", na_position="last")
    merged["status"] = merged["_merge"].map({"both": OK, "left_only": NOT_RUN, "right_only": NO_PAPER}).astype(str)
    merged["ours_n"] = merged["ours_n"].fillna(0).astype(int)
    merged["diff"] = merged["ours_mean"] - merged["paper"]
    extra = [c for c in merged.columns if c not in {*keys, *VALUE_COLUMNS} and not c.startswith("_")]
    return merged[[*keys, *VALUE_COLUMNS, *extra]].reset_index(drop=True)


def _with_gain(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Append MCMI − MLL rows (ours and paper) for every student cell keyed by ``keys`` (without variant)."""
    pick = df[df["variant"].isin(["MLL", "MCMI"])]
    if "block" in pick:
        pick = pick[pick["block"] == "student"]
    rows = []
    for index, cell in pick.groupby(keys, sort=False):
        by_variant = cell.set_index("variant")
        paper, ours = (by_variant[col].get("MCMI", math.nan) - by_variant[col].get("MLL", math.nan)
                       for col in ("paper", "ours_mean"))
        if math.isnan(paper) and math.isnan(ours):
            continue
        ours_n = 0 if math.isnan(ours) else int(by_variant["ours_n"].min())
        status = NOT_RUN if math.isnan(ours) else NO_PAPER if math.isnan(paper) else OK
        rows.append({**dict(zip(keys, index)), "variant": GAIN, "paper": paper, "ours_mean": ours,
                     "ours_std": math.nan, "ours_n": ours_n, "diff": ours - paper, "status": status})
    return pd.concat([df, pd.DataFrame(rows, columns=df.columns)], ignore_index=True) if rows else df


def _finish(n: str, df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.insert(0, "table", n)
    return df.reset_index(drop=True)


# ------------------------------------------------------------------------ Tables 1 and 2 (teacher + KD)
TEACHER_STUDENT_KEYS = ["block", "teacher", "student", "method", "variant", "metric"]


@dataclass(frozen=True)
class _TeacherStudentSpec:
    """Which of our ``final`` keys feed which metric of a teacher/student table."""

    student_metrics: dict[str, str]
    teacher_metrics: dict[str, str]
    with_baseline: bool


def _teacher_student_ours(records: list[MetricsRecord], spec: _TeacherStudentSpec) -> pd.DataFrame:
    observations = []
    for rec in of_stage(records, "student"):
        if rec.run.get("alpha_percent") not in (None, 100):
            continue  # few-shot students belong to Table 3
        method = rec.need("run", "method")
        vanilla = method == "vanilla"
        if vanilla and not spec.with_baseline:
            continue
        cell = {"block": "baseline" if vanilla else "student", "student": rec.need("run", "student"),
                "method": method, "teacher": "" if vanilla else rec.need("run", "teacher"),
                "variant": "" if vanilla else rec.need("run", "variant")}
        observations += [{**cell, "metric": metric, "value": float(rec.need("final", key))}
                         for key, metric in spec.student_metrics.items()]
    for rec in of_stage(records, "measure"):
        if rec.run.get("temperature") not in (None, 1):
            continue  # temperature-sweep measurements belong to Figure 1
        cell = {"block": "teacher", "teacher": rec.need("run", "teacher"), "student": "", "method": "",
                "variant": rec.need("run", "variant")}
        observations += [{**cell, "metric": metric, "value": float(rec.need("final", key))}
                         for key, metric in spec.teacher_metrics.items()]
    return _aggregate(observations, TEACHER_STUDENT_KEYS)


def _teacher_student_table(paper: pd.DataFrame, records: list[MetricsRecord],
                           spec: _TeacherStudentSpec) -> pd.DataFrame:
    df = _combine(paper, _teacher_student_ours(records, spec), TEACHER_STUDENT_KEYS)
    return _with_gain(df, ["block", "teacher", "student", "method", "metric"])


def _paper_table1(paper_dir: str, students_csv: str = "table1.csv") -> pd.DataFrame:
    students = _read_paper(paper_dir, students_csv).rename(columns={"teacher_variant": "variant"})
    students = students.assign(block="student", metric="student_acc", paper=_as_float(students["student_acc"]))
    teachers = _read_paper(paper_dir, "table1_teachers.csv").rename(
        columns={"teacher_variant": "variant", "test_acc": "teacher_acc", "train_ll": "teacher_ll",
                 "train_cmi": "teacher_cmi"})
    teachers = teachers.melt(id_vars=["teacher", "variant"], var_name="metric", value_name="paper")
    teachers = teachers.assign(block="teacher", student="", method="", paper=_as_float(teachers["paper"]))
    baseline = _read_paper(paper_dir, "table1_students.csv")
    baseline = baseline.assign(block="baseline", teacher="", method="vanilla", variant="", metric="student_acc",
                               paper=_as_float(baseline["baseline_acc"]))
    return pd.concat([frame[[*TEACHER_STUDENT_KEYS, "paper"]] for frame in (teachers, baseline, students)],
                     ignore_index=True)


def _method_notes(records: list[MetricsRecord]) -> dict[tuple[str, str, str], str]:
    """'key: value' notes per (teacher, student, method) from the students' ``final.method_info``
    (e.g. HSAKD's 'heads: reference'); several distinct values of one cell are joined with ' / '."""
    notes: dict[tuple[str, str, str], list[str]] = {}
    for rec in of_stage(records, "student"):
        info = rec.final.get("method_info") or {}
        if not info:
            continue
        text = ", ".join(f"{k}: {v}" for k, v in sorted(info.items()))
        key = (str(rec.run.get("teacher")), str(rec.run.get("student")), str(rec.run.get("method")))
        if text not in notes.setdefault(key, []):
            notes[key].append(text)
    return {key: " / ".join(texts) for key, texts in notes.items()}


def _build_table1(records: list[MetricsRecord], paper_dir: str, students_csv: str = "table1.csv") -> pd.DataFrame:
    spec = _TeacherStudentSpec({"test_acc": "student_acc"},
                               {"test_acc": "teacher_acc", "train_ll": "teacher_ll", "train_cmi": "teacher_cmi"},
                               with_baseline=True)
    df = _teacher_student_table(_paper_table1(paper_dir, students_csv), records, spec)
    sections = _read_paper(paper_dir, "table1.csv").drop_duplicates(["teacher", "student"])
    section_of = {(t, s): sec for t, s, sec in sections[["teacher", "student", "table_section"]].itertuples(False)}
    df["section"] = [section_of.get((t, s), "ours only") if block == "student" else ""
                     for t, s, block in zip(df["teacher"], df["student"], df["block"])]
    notes = _method_notes(records)
    if notes:  # only runs that report method_info (HSAKD's heads) add the column
        df["note"] = [notes.get((t, s, m), "") if block == "student" else ""
                      for t, s, m, block in zip(df["teacher"], df["student"], df["method"], df["block"])]
    return df


def _build_table1x(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    """Table 1 laid out again for methods beyond the paper (MIMKD, ITRD): the teacher rows and the
    student baseline are the paper's (same teachers), the method rows' published numbers are the
    MLL-teacher numbers of each method's own paper/README (``table1x.csv``)."""
    return _build_table1(records, paper_dir, students_csv="table1x.csv")


def _paper_table2(paper_dir: str) -> pd.DataFrame:
    raw = _read_paper(paper_dir, "table2.csv").rename(columns={"teacher_variant": "variant"})
    raw[["teacher", "student"]] = raw["pair"].str.split("->", expand=True)
    students = raw.melt(id_vars=["teacher", "student", "method", "variant"],
                        value_vars=["student_top1", "student_top5"], var_name="metric", value_name="paper")
    students["block"] = "student"
    teachers = raw.drop_duplicates(["teacher", "variant"]).melt(
        id_vars=["teacher", "variant"], value_vars=["teacher_top1", "teacher_top5", "teacher_cmi", "teacher_ll"],
        var_name="metric", value_name="paper")
    teachers = teachers.assign(block="teacher", student="", method="")
    paper = pd.concat([teachers, students], ignore_index=True)[[*TEACHER_STUDENT_KEYS, "paper"]]
    paper["paper"] = _as_float(paper["paper"])
    return paper


def _build_table2(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    spec = _TeacherStudentSpec({"test_acc": "student_top1", "test_top5": "student_top5"},
                               {"test_acc": "teacher_top1", "test_top5": "teacher_top5", "train_cmi": "teacher_cmi",
                                "train_ll": "teacher_ll"}, with_baseline=False)
    return _teacher_student_table(_paper_table2(paper_dir), records, spec)


# ------------------------------------------------------------------------------- Table 3 (few-shot)
TABLE3_KEYS = ["teacher", "student", "method", "alpha_percent", "variant", "metric"]


def _build_table3(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    paper = _read_paper(paper_dir, "table3.csv").rename(columns={"teacher_variant": "variant"})
    paper = paper.assign(teacher=SINGLE_PAIR[0], student=SINGLE_PAIR[1], metric="student_acc",
                         paper=_as_float(paper["student_acc"]))
    observations = [
        {"teacher": rec.need("run", "teacher"), "student": rec.need("run", "student"),
         "method": rec.need("run", "method"), "alpha_percent": rec.run["alpha_percent"],
         "variant": rec.need("run", "variant"), "metric": "student_acc", "value": float(rec.need("final", "test_acc"))}
        for rec in of_stage(records, "student") if rec.run.get("alpha_percent") not in (None, 100)
    ]
    df = _combine(paper[[*TABLE3_KEYS, "paper"]], _aggregate(observations, TABLE3_KEYS), TABLE3_KEYS)
    return _with_gain(df, ["teacher", "student", "method", "alpha_percent", "metric"])


# --------------------------------------------------------------------- Table 4 (ES vs MLL vs MCMI, KD)
TABLE4_KEYS = ["teacher", "student", "variant", "metric"]


def _teacher_rows(records: list[MetricsRecord], metrics: dict[str, str], extra: dict[str, str]) -> list[dict]:
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


def _kd_student_rows(records: list[MetricsRecord], extra: dict[str, str]) -> list[dict]:
    """Observations of KD students' test accuracy; ``extra`` maps output keys to run keys."""
    return [
        {"teacher": rec.need("run", "teacher"), "student": rec.need("run", "student"),
         **{out: rec.need("run", key) for out, key in extra.items()},
         "metric": "student_acc", "value": float(rec.need("final", "test_acc"))}
        for rec in of_stage(records, "student")
        if rec.run.get("method") == "KD" and rec.run.get("alpha_percent") in (None, 100)
    ]


def _build_table4(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    raw = _read_paper(paper_dir, "table4.csv").rename(columns={"teacher_variant": "variant"})
    raw[["teacher", "student"]] = raw["pair"].str.split("->", expand=True)
    paper = raw.melt(id_vars=["teacher", "student", "variant"],
                     value_vars=["teacher_acc", "teacher_cmi", "teacher_ll", "student_acc"],
                     var_name="metric", value_name="paper")
    paper["paper"] = _as_float(paper["paper"])
    paper.loc[paper["metric"] != "student_acc", "student"] = ""
    paper = paper.drop_duplicates(TABLE4_KEYS)
    metrics = {"test_acc": "teacher_acc", "train_cmi": "teacher_cmi", "train_ll": "teacher_ll"}
    observations = _teacher_rows(records, metrics, {"variant": "variant"})
    observations += _kd_student_rows(records, {"variant": "variant"})
    return _combine(paper, _aggregate(observations, TABLE4_KEYS), TABLE4_KEYS)


# ---------------------------------------------------------------------------- Table 5 (synthetic)
TABLE5_KEYS = ["preset", "delta_mu", "target", "metric"]
TABLE5_ORDER = ["GroundTruth", "MCMI_KD", "MLL_KD", "OneHot"]
REDUCED = "reduced scale"


def table5_preset_label(run: dict[str, Any]) -> str:
    """The preset key of a synthetic run: its preset name, tagged '[reduced scale]' unless the run says it
    ran at the paper's scale (so a demo- or test-scale run never sits beside a published cell)."""
    preset = str(run.get("preset") or "as_written")
    return preset if run.get("scale") == "paper" else f"{preset} [{REDUCED}]"


def _build_table5(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    from mcmi.synthetic import PRESETS  # the paper's cells are listed beside each preset

    raw = _read_paper(paper_dir, "table5.csv")
    paper = pd.concat([
        raw.assign(preset=preset, metric=metric, paper=_as_float(raw[f"{metric}_mean"]),
                   paper_std=_as_float(raw[f"{metric}_std"]))
        for preset in PRESETS for metric in ("acc", "pdist")
    ], ignore_index=True)[[*TABLE5_KEYS, "paper", "paper_std"]]
    observations, norms = [], {}
    for rec in of_stage(records, "synthetic"):
        delta_mu, preset = key_text(rec.need("run", "delta_mu")), table5_preset_label(rec.run)
        norms[(preset, delta_mu)] = str(rec.final.get("pdist_norm", "not stated by the run"))
        for i, entry in enumerate(rec.need("final", "records")):
            for key, metric in (("test_acc", "acc"), ("pdist_l2", "pdist"), ("pdist_mean", "pdist_mean")):
                if key not in entry and metric == "pdist_mean":
                    continue
                if key not in entry or "target" not in entry:
                    missing = "target" if "target" not in entry else key
                    raise ValueError(f"{rec.path}: missing required key 'final.records[{i}].{missing}'")
                value = float(entry[key])
                if math.isnan(value):
                    raise ValueError(f"{rec.path}: final.records[{i}].{key} is NaN")
                observations.append({"preset": preset, "delta_mu": delta_mu, "target": entry["target"],
                                     "metric": metric, "value": value})
    df = _combine(paper, _aggregate(observations, TABLE5_KEYS), TABLE5_KEYS)
    df["pdist_norm"] = [norms.get((p, d), "") for p, d in zip(df["preset"], df["delta_mu"])]
    return df


def table5_orderings(df: pd.DataFrame) -> pd.DataFrame:
    """Per preset and Δμ whether our means keep the paper's orderings (None when a target is missing).

    ``acc_holds``: P* ≥ MCMI ≥ MLL ≥ one-hot accuracy; ``pdist_holds``: Pdist(MCMI) < Pdist(MLL).
    """
    rows = []
    for (preset, delta_mu), block in df[df["ours_n"] > 0].groupby(["preset", "delta_mu"], sort=False):
        means = {metric: dict(zip(part["target"], part["ours_mean"])) for metric, part in block.groupby("metric")}
        acc = [means.get("acc", {}).get(t) for t in TABLE5_ORDER]
        pdist = [means.get("pdist", {}).get(t) for t in ("MCMI_KD", "MLL_KD")]
        rows.append({
            "preset": preset, "delta_mu": delta_mu,
            "acc_holds": None if None in acc else all(a >= b for a, b in zip(acc, acc[1:])),
            "pdist_holds": None if None in pdist else pdist[0] < pdist[1],
            "acc_means": acc, "pdist_means": pdist,
        })
    return pd.DataFrame(rows, columns=["preset", "delta_mu", "acc_holds", "pdist_holds", "acc_means", "pdist_means"])


def _table5_section(preset: str, delta_mu: str) -> str:
    return f"{preset}, Δμ = {delta_mu}"


def _ordering_lines(df: pd.DataFrame) -> dict[str, list[str]]:
    def verdict(holds: bool | None) -> str:
        return {True: "holds", False: "does NOT hold", None: "cannot be checked (target missing)"}[holds]

    def values(means: list[float | None]) -> str:
        return ", ".join("missing" if m is None else f"{m:.2f}" for m in means)

    return {
        _table5_section(row.preset, row.delta_mu): [
            f"{row.preset}, Δμ = {row.delta_mu}: accuracy P* ≥ MCMI ≥ MLL ≥ one-hot {verdict(row.acc_holds)} in our run "
            f"(ours: {values(row.acc_means)}); Pdist MCMI < MLL {verdict(row.pdist_holds)} "
            f"(ours: {values(row.pdist_means)})."
        ]
        for row in table5_orderings(df).itertuples()
    }


# --------------------------------------------------------------------------- Table 6 (selected λ*)
TABLE6_KEYS = ["dataset", "teacher", "metric", "lam"]


def _paper_table6(paper_dir: str) -> pd.DataFrame:
    paper = _read_paper(paper_dir, "table6.csv")
    setup_path = Path(paper_dir) / "setup.yaml"
    if setup_path.exists():
        setup = yaml.safe_load(setup_path.read_text())
        imagenet = setup.get("mcmi_finetune", {}).get("imagenet", {}).get("lambda_star", {})
        extra = pd.DataFrame({"dataset": "ImageNet", "teacher": list(imagenet),
                              "lambda_star": [str(v) for v in imagenet.values()]})
        paper = pd.concat([paper, extra], ignore_index=True)
    return paper.assign(metric="lambda_star", lam="", paper=_as_float(paper["lambda_star"]))[
        [*TABLE6_KEYS, "paper"]]


def _build_table6(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    observations = []
    for rec in of_stage(records, "select_lambda"):
        cell = {"dataset": dataset_label(rec.need("run", "dataset")), "teacher": rec.need("run", "teacher")}
        observations.append({**cell, "metric": "lambda_star", "lam": "",
                             "value": float(rec.need("final", "lambda_star"))})
        score_name = rec.final.get("score_name", "score")
        observations += [{**cell, "metric": f"score: {score_name}", "lam": lam, "value": float(score)}
                         for lam, score in (rec.final.get("scores") or {}).items()]
    return _combine(_paper_table6(paper_dir), _aggregate(observations, TABLE6_KEYS), TABLE6_KEYS)


# --------------------------------------------------------------------------- Table 7 (effect of λ)
TABLE7_KEYS = ["teacher", "student", "lam", "metric"]


def _build_table7(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    raw = _read_paper(paper_dir, "table7.csv").rename(columns={"lambda": "lam"})
    paper = raw.melt(id_vars=["lam"], value_vars=["student_acc", "teacher_cmi", "teacher_ll"],
                     var_name="metric", value_name="paper")
    paper = paper.assign(teacher=SINGLE_PAIR[0], student=SINGLE_PAIR[1], paper=_as_float(paper["paper"]))
    paper.loc[paper["metric"] != "student_acc", "student"] = ""
    metrics = {"test_acc": "teacher_acc", "train_cmi": "teacher_cmi", "train_ll": "teacher_ll"}
    observations = _teacher_rows(records, metrics, {"lam": "lam"}) + _kd_student_rows(records, {"lam": "lam"})
    return _combine(paper[[*TABLE7_KEYS, "paper"]], _aggregate(observations, TABLE7_KEYS), TABLE7_KEYS)


BUILDERS: dict[str, Callable[[list[MetricsRecord], str], pd.DataFrame]] = {
    "1": _build_table1, "2": _build_table2, "3": _build_table3, "4": _build_table4,
    "5": _build_table5, "6": _build_table6, "7": _build_table7, "1x": _build_table1x,
}


def build_table(n: int | str, metrics_paths: list[str], paper_dir: str) -> pd.DataFrame:
    """Tidy Table ``n`` (1..7, or "1x"): one row per cell with paper value, ours mean/std/n, diff and status.

    ``n`` is a table id; integers are read as their text (1 -> "1")."""
    n = str(n)
    if n not in BUILDERS:
        raise ValueError(f"no table {n}; known tables: {sorted(BUILDERS)}")
    records = load_metrics(metrics_paths)
    if n in PAPER_DATASET:
        records = [_tag_foreign_dataset(r, PAPER_DATASET[n]) for r in records]
    return _finish(n, BUILDERS[n](records, paper_dir))


def _tag_foreign_dataset(record: MetricsRecord, paper_dataset: str) -> MetricsRecord:
    """A run on another dataset than the paper's gets 'name [dataset]' model names (no paper match)."""
    dataset = record.run.get("dataset")
    if dataset is None or dataset == paper_dataset:
        return record
    run = {**record.run, **{k: f"{record.run[k]} [{dataset}]" for k in ("teacher", "student") if k in record.run}}
    return MetricsRecord(record.path, run, record.final, record.history)


# ============================================================================ wide layouts for md / tex
@dataclass
class _Layout:
    """Cells labelled with ``_section``, ``_row`` and ``_col``, plus column order and notes."""

    frame: pd.DataFrame
    row_header: str
    col_order: list[str]
    notes: dict[str, list[str]] = field(default_factory=dict)
    header_lines: list[str] = field(default_factory=list)


def _pair(teacher: str, student: str) -> str:
    return f"{teacher} → {student}" if teacher and student else teacher or student


def _numeric_order(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame.sort_values(column, key=lambda c: pd.to_numeric(c, errors="coerce"), kind="stable")


def _layout_teacher_student(df: pd.DataFrame, sections: bool) -> _Layout:
    """Tables 1/2: one block per pair; rows = teacher metrics, baseline, methods; cols = MLL, MCMI, gain."""
    paired = df[df["block"] == "student"]
    pair_keys = list(zip(paired["teacher"], paired["student"]))
    section_of = dict(zip(pair_keys, paired["section"])) if sections else {}
    section_rank = {"same_arch": 0, "diff_arch": 1}
    pairs = sorted(dict.fromkeys(pair_keys), key=lambda p: section_rank.get(section_of.get(p, ""), 2))
    teachers = df.loc[df["block"] == "teacher", "teacher"]
    students = df.loc[df["block"] == "baseline", "student"]
    pairs += [(t, "") for t in dict.fromkeys(teachers) if t not in {p[0] for p in pairs}]
    pairs += [("", s) for s in dict.fromkeys(students) if s not in {p[1] for p in pairs}]
    parts = []
    for teacher, student in pairs:
        title = _pair(teacher, student)
        if (teacher, student) in section_of:
            title = f"{title} ({section_of[(teacher, student)].replace('_', '-')})"
        teacher_rows = df[(df["block"] == "teacher") & (df["teacher"] == teacher)]
        parts.append(teacher_rows.assign(_row=teacher_rows["metric"].map(METRIC_LABELS)))
        base = df[(df["block"] == "baseline") & (df["student"] == student)]
        parts.append(base.assign(_row="Student, no teacher", variant="MLL"))
        kd = df[(df["block"] == "student") & (df["teacher"] == teacher) & (df["student"] == student)]
        method_rank = {m: i for i, m in enumerate(dict.fromkeys(kd["method"]))}
        kd = kd.sort_values("method", key=lambda m: m.map(method_rank), kind="stable")
        multi_metric = kd["metric"].nunique() > 1
        labels = [f"{m} {METRIC_LABELS[x]}" if multi_metric else m for m, x in zip(kd["method"], kd["metric"])]
        if "note" in kd:
            labels = [f"{label} [{note}]" if note else label for label, note in zip(labels, kd["note"])]
        parts.append(kd.assign(_row=labels))
        parts[-3:] = [p.assign(_section=title) for p in parts[-3:]]
    frame = pd.concat(parts, ignore_index=True)
    frame["_col"] = frame["variant"]
    header = ["Row 'Student, no teacher' is the teacher-free student baseline (shown under MLL)."]
    return _Layout(frame, "Method / metric", ["MLL", "MCMI", GAIN], header_lines=header)


def _layout_table1(df: pd.DataFrame) -> _Layout:
    return _layout_teacher_student(df, sections=True)


def _layout_table1x(df: pd.DataFrame) -> _Layout:
    return _layout_teacher_student(df, sections=True)


def _layout_table2(df: pd.DataFrame) -> _Layout:
    return _layout_teacher_student(df, sections=False)


def _layout_table3(df: pd.DataFrame) -> _Layout:
    frame = _numeric_order(df, "alpha_percent")
    frame = frame.assign(_section=[f"{_pair(t, s)}, {m}" for t, s, m in
                                   zip(frame["teacher"], frame["student"], frame["method"])],
                         _row=frame["alpha_percent"] + " %", _col=frame["variant"])
    return _Layout(frame, "α (% of each class)", ["MLL", "MCMI", GAIN])


def _layout_table4(df: pd.DataFrame) -> _Layout:
    pairs = {t: s for t, s in zip(df["teacher"], df["student"]) if s}
    frame = df.assign(_section=[_pair(t, pairs.get(t, "")) for t in df["teacher"]], _row=df["variant"],
                      _col=df["metric"].map(METRIC_LABELS).where(df["metric"] != "student_acc",
                                                                 "KD Student Acc (%)"))
    frame = frame.sort_values("variant", key=lambda v: v.map({"MLL": 0, "ES": 1, "MCMI": 2}), kind="stable")
    cols = ["Teacher Acc (%)", "Teacher CMI (nats)", "Teacher LL (nats)", "KD Student Acc (%)"]
    return _Layout(frame, "Teacher", cols)


def _layout_table5(df: pd.DataFrame) -> _Layout:
    presets = list(dict.fromkeys(sorted(df["preset"], key=lambda p: (REDUCED in p, p))))
    frame = _numeric_order(df, "delta_mu")
    frame = frame.sort_values("preset", key=lambda c: c.map(presets.index), kind="stable")
    frame = frame.assign(_section=[_table5_section(p, d) for p, d in zip(frame["preset"], frame["delta_mu"])],
                         _row=frame["target"].map(TARGET_LABELS), _col=frame["metric"].map(METRIC_LABELS))
    norms = {p: sorted({n for n, q in zip(df["pdist_norm"], df["preset"]) if n and q == p}) for p in presets}
    header = [f"Pdist (ours) = `pdist_l2` of the synthetic runs; normalisation: "
              + "; ".join(f"{p}: {', '.join(n) or 'not run'}" for p, n in norms.items()) + ".",
              "The paper's Pdist is 'L2 norm of P*_X − P_tar' (A.6); paper values are printed with their ± std.",
              "Sections: one per preset (mcmi.synthetic.PRESETS) and Δμ; the paper's cells are listed beside "
              f"each preset. A run at another scale than the paper's is tagged '[{REDUCED}]' and never matched."]
    cols = [METRIC_LABELS[m] for m in ("acc", "pdist", "pdist_mean")]
    return _Layout(frame, "Student target", cols, notes=_ordering_lines(df), header_lines=header)


def _layout_table6(df: pd.DataFrame) -> _Layout:
    star = df[df["metric"] == "lambda_star"]
    scores = _numeric_order(df[df["metric"] != "lambda_star"], "lam")
    frame = pd.concat([
        star.assign(_section="Selected λ*", _row=star["teacher"], _col=star["dataset"]),
        scores.assign(_section="Selection score per λ (ours only): " + scores["metric"].str.removeprefix("score: "),
                      _row=scores["teacher"] + " (" + scores["dataset"] + ")", _col="λ = " + scores["lam"]),
    ], ignore_index=True)
    return _Layout(frame, "Teacher", list(dict.fromkeys(star["dataset"])))


def _layout_table7(df: pd.DataFrame) -> _Layout:
    frame = _numeric_order(df, "lam")
    students = {t: s for t, s in zip(frame["teacher"], frame["student"]) if s}
    frame = frame.assign(_section=[_pair(t, students.get(t, "")) + ", KD" for t in frame["teacher"]],
                         _row=frame["lam"],
                         _col=frame["metric"].map(METRIC_LABELS).where(frame["metric"] != "student_acc",
                                                                       "KD Student Acc (%)"))
    cols = ["KD Student Acc (%)", "Teacher CMI (nats)", "Teacher LL (nats)", "Teacher Acc (%)"]
    return _Layout(frame, "λ", cols)


LAYOUTS: dict[str, Callable[[pd.DataFrame], _Layout]] = {
    "1": _layout_table1, "2": _layout_table2, "3": _layout_table3, "4": _layout_table4,
    "5": _layout_table5, "6": _layout_table6, "7": _layout_table7, "1x": _layout_table1x,
}


# ------------------------------------------------------------------------------------ cell formatting
def _decimals(metric: str) -> int:
    return 4 if metric.endswith(("cmi", "ll", "pdist_mean")) else 2


def _number(value: float, metric: str, signed: bool = False) -> str:
    return f"{value:{'+' if signed else ''}.{_decimals(metric)}f}"


def cell_parts(row: pd.Series) -> tuple[str, str, str]:
    """The three displayed parts of a cell: ours 'mean ± std (n)' or 'not run', paper or '—', and Δ."""
    metric = row["metric"]
    signed = row.get("variant") == GAIN
    if row["ours_n"] == 0:
        ours = "not run"
    else:
        ours = _number(row["ours_mean"], metric, signed)
        if pd.notna(row["ours_std"]):
            ours += f" ± {_number(row['ours_std'], metric)}"
        ours += f" ({row['ours_n']})"
    if pd.isna(row["paper"]):
        paper = DASH
    else:
        paper = _number(row["paper"], metric, signed)
        if pd.notna(row.get("paper_std")):
            paper += f" ± {_number(row['paper_std'], metric)}"
    delta = _number(row["diff"], metric, signed=True) if pd.notna(row["diff"]) else ""
    return ours, paper, delta


PARTS = ("ours", "paper", "Δ")


def _section_grid(block: pd.DataFrame, col_order: list[str]) -> tuple[list[str], list[str], list[list[str]]]:
    """Columns, row labels and a row-major grid of strings (three parts per column) for one section."""
    cols = sorted(dict.fromkeys(block["_col"]), key=lambda c: col_order.index(c) if c in col_order else len(col_order))
    rows = list(dict.fromkeys(block["_row"]))
    cells = {(r["_row"], r["_col"]): cell_parts(r) for _, r in block.iterrows()}
    grid = [[part for col in cols for part in cells.get((row, col), ("", "", ""))] for row in rows]
    return cols, rows, grid


def _markdown(df: pd.DataFrame, layout: _Layout, title: str, caption: str) -> str:
    n = str(df["table"].iloc[0])
    lines = [
        f"# {title}", "", caption, "",
        f"- **ours** = mean ± sample std (ddof = 1) over our runs of the cell, with the number of runs in "
        f"parentheses (no std when n = 1), computed from the metrics JSON files given to the table.",
        f"- **paper** = the published number (config/paper/{PAPER_SOURCES[n]}); **Δ** = ours − paper.",
        f"- **not run** = a paper cell for which we have no run (kept, never filled); **{DASH}** = a cell of ours "
        f"with no published counterpart (e.g. a demo pair); an empty cell has neither.",
        f"- Cells: {int((df['status'] == OK).sum())} matched, {int((df['status'] == NOT_RUN).sum())} not run, "
        f"{int((df['status'] == NO_PAPER).sum())} without paper value.",
        *[f"- {line}" for line in layout.header_lines], "",
    ]
    for section, block in layout.frame.groupby("_section", sort=False):
        cols, rows, grid = _section_grid(block, layout.col_order)
        header = [layout.row_header, *[f"{col} {part}" for col in cols for part in PARTS]]
        lines += [f"## {section}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join([row, *values]) + " |" for row, values in zip(rows, grid)]
        lines += ["", *[f"{note}" for note in layout.notes.get(section, [])], ""]
    return "\n".join(lines).rstrip() + "\n"


TEX_REPLACEMENTS = {
    "\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
    "±": r"$\pm$", "Δ": r"$\Delta$", "→": r"$\to$", "λ": r"$\lambda$", "μ": r"$\mu$", "α": r"$\alpha$",
    "≥": r"$\geq$", "−": "--", "—": "---", "*": r"$^*$",
}


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and map the Unicode symbols used in labels to math."""
    return "".join(TEX_REPLACEMENTS.get(ch, ch) for ch in str(text))


def _latex(layout: _Layout, title: str, caption: str) -> str:
    lines = [r"% Generated by mcmi.tables; requires \usepackage{booktabs}.", r"\begin{table}[t]", r"\centering",
             r"\scriptsize", rf"\caption{{{tex_escape(title)}. {tex_escape(caption)}}}"]
    for section, block in layout.frame.groupby("_section", sort=False):
        cols, rows, grid = _section_grid(block, layout.col_order)
        spec = "l" + "rrr" * len(cols)
        groups = " & ".join(rf"\multicolumn{{3}}{{c}}{{{tex_escape(c)}}}" for c in cols)
        rules = " ".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(cols)))
        lines += [rf"\par\medskip\textbf{{{tex_escape(section)}}}\par\smallskip", rf"\begin{{tabular}}{{{spec}}}",
                  r"\toprule", rf" & {groups} \\", rules,
                  tex_escape(layout.row_header) + " & " + " & ".join(tex_escape(p) for _ in cols for p in PARTS)
                  + r" \\", r"\midrule"]
        lines += [" & ".join(tex_escape(x) for x in [row, *values]) + r" \\" for row, values in zip(rows, grid)]
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [rf"\par\smallskip {tex_escape(note)}" for note in layout.notes.get(section, [])]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, out_prefix: str, title: str, caption: str) -> None:
    """Write ``{prefix}.csv`` (tidy), ``{prefix}.md`` (wide, readable) and ``{prefix}.tex`` (booktabs)."""
    layout = LAYOUTS[str(df["table"].iloc[0])](df)
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(f"{prefix}.csv", index=False)
    Path(f"{prefix}.md").write_text(_markdown(df, layout, title, caption))
    Path(f"{prefix}.tex").write_text(_latex(layout, title, caption))


TITLES = {
    "1": ("Table 1", "CIFAR-100 student top-1 accuracy (%) with MLL vs MCMI teachers; teacher accuracy, LL, CMI."),
    "2": ("Table 2", "ImageNet student top-1/top-5 accuracy (%) with MLL vs MCMI teachers."),
    "3": ("Table 3", "Few-shot students: top-1 accuracy (%) when the student sees α% of each class."),
    "4": ("Table 4", "MLL vs early-stopped (ES) vs MCMI teachers and their KD students."),
    "5": ("Table 5", "Synthetic Gaussian task: student accuracy (%) and Pdist per target, mean ± std over seeds."),
    "6": ("Table 6", "Selected λ* for MCMI fine-tuning per teacher."),
    "7": ("Table 7", "Effect of λ: KD student accuracy (%) and teacher CMI/LL per λ."),
    "1x": ("Table 1x (beyond the paper)", "CIFAR-100 student top-1 accuracy (%) of MIMKD and ITRD with MLL vs MCMI "
           "teachers; paper = the MLL-teacher number of each method's own paper/README."),
}


def make_table(n: int | str, metrics_paths: list[str], paper_dir: str, out_prefix: str) -> pd.DataFrame:
    """Build Table ``n`` and write its csv/md/tex files; returns the tidy frame."""
    df = build_table(n, metrics_paths, paper_dir)
    title, caption = TITLES[str(n)]
    write_table(df, out_prefix, title, caption)
    return df
