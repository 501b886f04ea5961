"""Table 3: few-shot students, which see α% of each class, with MLL and MCMI teachers."""

from __future__ import annotations

import pandas as pd

from mcmi.report.cells import GAIN, MCMI_VS_MLL, aggregate, as_float, combine, read_paper, with_gain
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.render import Layout, numeric_order, pair_label, summary_lines
from mcmi.report.spec import ConfigView, Experiment, TableSpec
from mcmi.report.tables.common import SINGLE_PAIR
from mcmi.pipeline.naming import few_shot_setting, split_pair

KEYS = ["teacher", "student", "method", "alpha_percent", "variant", "metric"]


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    return [w.student(exp["dataset"], *split_pair(p), m, v, few_shot_setting(a), s)
            for p in exp["pairs"] for m in exp["methods"] for v in ("MLL", "MCMI")
            for a in exp["alpha_percent"] for s in w.seeds(exp)]


def _build(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    paper = read_paper(paper_dir, "table3.csv").rename(columns={"teacher_variant": "variant"})
    paper = paper.assign(teacher=SINGLE_PAIR[0], student=SINGLE_PAIR[1], metric="student_acc",
                         paper=as_float(paper["student_acc"]))
    observations = [
        {"teacher": rec.need("run", "teacher"), "student": rec.need("run", "student"),
         "method": rec.need("run", "method"), "alpha_percent": rec.run["alpha_percent"],
         "variant": rec.need("run", "variant"), "seed": rec.run.get("seed"), "metric": "student_acc",
         "value": float(rec.need("final", "test_acc"))}
        for rec in of_stage(records, "student") if rec.run.get("alpha_percent") not in (None, 100)
    ]
    df = combine(paper[[*KEYS, "paper"]], aggregate(observations, KEYS), KEYS)
    return with_gain(df, observations, KEYS)


def _layout(df: pd.DataFrame) -> Layout:
    frame = numeric_order(df, "alpha_percent")
    frame = frame.assign(_section=[f"{pair_label(t, s)}, {m}" for t, s, m in
                                   zip(frame["teacher"], frame["student"], frame["method"])],
                         _row=frame["alpha_percent"] + " %", _col=frame["variant"])
    return Layout(frame, "α (% of each class)", ["MLL", "MCMI", GAIN],
                  summary=summary_lines(df, [(MCMI_VS_MLL, "student_acc")]))


TABLE = TableSpec(
    id="3",
    title="Table 3",
    caption="Few-shot students: top-1 accuracy (%) when the student sees α% of each class.",
    paper_files=("table3.csv",),
    paper_dataset="cifar100",
    inputs=_inputs,
    build=_build,
    layout=_layout,
    path_numbers=("alpha_percent",),
)
