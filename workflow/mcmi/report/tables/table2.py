"""Table 2: ImageNet students (top-1/top-5) of MLL and MCMI teachers, and the teachers measured."""

from __future__ import annotations

import pandas as pd

from mcmi.report.cells import as_float, read_paper
from mcmi.report.records import MetricsRecord
from mcmi.report.spec import TableSpec
from mcmi.report.tables.teacher_student import (KEYS, MetricMap, teacher_student_inputs, teacher_student_layout,
                                                teacher_student_table)

METRICS = MetricMap({"test_acc": "student_top1", "test_top5": "student_top5"},
                    {"test_acc": "teacher_top1", "test_top5": "teacher_top5", "train_cmi": "teacher_cmi",
                     "train_ll": "teacher_ll"}, with_baseline=False)


def _paper(paper_dir: str) -> pd.DataFrame:
    raw = read_paper(paper_dir, "table2.csv").rename(columns={"teacher_variant": "variant"})
    raw[["teacher", "student"]] = raw["pair"].str.split("->", expand=True)
    students = raw.melt(id_vars=["teacher", "student", "method", "variant"],
                        value_vars=["student_top1", "student_top5"], var_name="metric", value_name="paper")
    students["block"] = "student"
    teachers = raw.drop_duplicates(["teacher", "variant"]).melt(
        id_vars=["teacher", "variant"], value_vars=["teacher_top1", "teacher_top5", "teacher_cmi", "teacher_ll"],
        var_name="metric", value_name="paper")
    teachers = teachers.assign(block="teacher", student="", method="")
    paper = pd.concat([teachers, students], ignore_index=True)[[*KEYS, "paper"]]
    paper["paper"] = as_float(paper["paper"])
    return paper


def _build(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    return teacher_student_table(_paper(paper_dir), records, METRICS)


TABLE = TableSpec(
    id="2",
    title="Table 2",
    caption="ImageNet student top-1/top-5 accuracy (%) with MLL vs MCMI teachers.",
    paper_files=("table2.csv",),
    paper_dataset="imagenet",
    inputs=lambda w, exp: teacher_student_inputs(w, exp, with_baseline=False),
    build=_build,
    layout=lambda df: teacher_student_layout(df, sections=False),
)
