"""Table 4: MLL vs early-stopped (ES) vs MCMI teachers, and their KD students."""

from __future__ import annotations

import pandas as pd

from mcmi.report.cells import aggregate, as_float, combine, read_paper
from mcmi.report.records import MetricsRecord
from mcmi.report.render import METRIC_LABELS, Layout, pair_label
from mcmi.report.spec import ConfigView, Experiment, TableSpec
from mcmi.report.tables.common import TEACHER_METRICS, kd_student_observations, teacher_observations
from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.naming import MCMI, MLL, early_stop_variant, split_pair

KEYS = ["teacher", "student", "variant", "metric"]


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Per pair: the teacher as MLL, early-stopped at ``es_epochs`` (variant 'ES<epochs>') and MCMI."""
    paths = []
    for pair in exp["pairs"]:
        teacher = split_pair(pair)[0]
        if teacher not in exp["es_epochs"]:
            raise ConfigError(f"experiments.table4.es_epochs.{teacher}: missing")
        variants = (MLL, early_stop_variant(exp["es_epochs"][teacher]), MCMI)
        paths += w.students_and_teachers({**exp, "pairs": [pair]}, variants)
    return paths


def _build(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    raw = read_paper(paper_dir, "table4.csv").rename(columns={"teacher_variant": "variant"})
    raw[["teacher", "student"]] = raw["pair"].str.split("->", expand=True)
    paper = raw.melt(id_vars=["teacher", "student", "variant"],
                     value_vars=["teacher_acc", "teacher_cmi", "teacher_ll", "student_acc"],
                     var_name="metric", value_name="paper")
    paper["paper"] = as_float(paper["paper"])
    paper.loc[paper["metric"] != "student_acc", "student"] = ""
    paper = paper.drop_duplicates(KEYS)
    observations = teacher_observations(records, TEACHER_METRICS, {"variant": "variant"})
    observations += kd_student_observations(records, {"variant": "variant"})
    return combine(paper, aggregate(observations, KEYS), KEYS)


def _layout(df: pd.DataFrame) -> Layout:
    pairs = {t: s for t, s in zip(df["teacher"], df["student"]) if s}
    frame = df.assign(_section=[pair_label(t, pairs.get(t, "")) for t in df["teacher"]], _row=df["variant"],
                      _col=df["metric"].map(METRIC_LABELS).where(df["metric"] != "student_acc",
                                                                 "KD Student Acc (%)"))
    frame = frame.sort_values("variant", key=lambda v: v.map({"MLL": 0, "ES": 1, "MCMI": 2}), kind="stable")
    cols = ["Teacher Acc (%)", "Teacher CMI (nats)", "Teacher LL (nats)", "KD Student Acc (%)"]
    return Layout(frame, "Teacher", cols)


TABLE = TableSpec(
    id="4",
    title="Table 4",
    caption="MLL vs early-stopped (ES) vs MCMI teachers and their KD students.",
    paper_files=("table4.csv",),
    paper_dataset="imagenet",
    inputs=_inputs,
    build=_build,
    layout=_layout,
)
