"""Table 1: CIFAR-100 students of MLL and MCMI teachers, the teachers' accuracy/LL/CMI, the baseline."""

from __future__ import annotations

import pandas as pd

from mcmi.report.cells import as_float, read_paper
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import TableSpec
from mcmi.report.tables.teacher_student import (KEYS, MetricMap, teacher_student_inputs, teacher_student_layout,
                                                teacher_student_table)

METRICS = MetricMap({"test_acc": "student_acc"},
                    {"test_acc": "teacher_acc", "train_ll": "teacher_ll", "train_cmi": "teacher_cmi"},
                    with_baseline=True)


def _paper(paper_dir: str, students_csv: str) -> pd.DataFrame:
    students = read_paper(paper_dir, students_csv).rename(columns={"teacher_variant": "variant"})
    students = students.assign(block="student", metric="student_acc", paper=as_float(students["student_acc"]))
    teachers = read_paper(paper_dir, "table1_teachers.csv").rename(
        columns={"teacher_variant": "variant", "test_acc": "teacher_acc", "train_ll": "teacher_ll",
                 "train_cmi": "teacher_cmi"})
    teachers = teachers.melt(id_vars=["teacher", "variant"], var_name="metric", value_name="paper")
    teachers = teachers.assign(block="teacher", student="", method="", paper=as_float(teachers["paper"]))
    baseline = read_paper(paper_dir, "table1_students.csv")
    baseline = baseline.assign(block="baseline", teacher="", method="vanilla", variant="", metric="student_acc",
                               paper=as_float(baseline["baseline_acc"]))
    return pd.concat([frame[[*KEYS, "paper"]] for frame in (teachers, baseline, students)], ignore_index=True)


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


def build_table1(records: list[MetricsRecord], paper_dir: str, students_csv: str = "table1.csv") -> pd.DataFrame:
    """Table 1's cells; ``students_csv`` holds the published student numbers (Table 1x: table1x.csv).
    Student rows get the paper's ``section`` of their pair (same_arch/diff_arch, else 'ours only')."""
    df = teacher_student_table(_paper(paper_dir, students_csv), records, METRICS)
    sections = read_paper(paper_dir, "table1.csv").drop_duplicates(["teacher", "student"])
    section_of = {(t, s): sec for t, s, sec in sections[["teacher", "student", "table_section"]].itertuples(False)}
    df["section"] = [section_of.get((t, s), "ours only") if block == "student" else ""
                     for t, s, block in zip(df["teacher"], df["student"], df["block"])]
    notes = _method_notes(records)
    if notes:  # only runs that report method_info (HSAKD's heads) add the column
        df["note"] = [notes.get((t, s, m), "") if block == "student" else ""
                      for t, s, m, block in zip(df["teacher"], df["student"], df["method"], df["block"])]
    return df


TABLE = TableSpec(
    id="1",
    title="Table 1",
    caption="CIFAR-100 student top-1 accuracy (%) with MLL vs MCMI teachers; teacher accuracy, LL, CMI.",
    paper_files=("table1.csv", "table1_teachers.csv", "table1_students.csv"),
    paper_dataset="cifar100",
    inputs=lambda w, exp: teacher_student_inputs(w, exp, with_baseline=True),
    build=build_table1,
    layout=lambda df: teacher_student_layout(df, sections=True),
)
