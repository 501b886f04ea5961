"""Table 7: the effect of λ on the MCMI teacher (CMI, LL, accuracy) and on its KD student."""

from __future__ import annotations

import pandas as pd

from mcmi.report.cells import aggregate, as_float, combine, read_paper
from mcmi.report.records import MetricsRecord
from mcmi.report.render import METRIC_LABELS, Layout, numeric_order, pair_label
from mcmi.report.spec import ConfigView, Experiment, TableSpec
from mcmi.report.tables.common import SINGLE_PAIR, TEACHER_METRICS, kd_student_observations, teacher_observations
from mcmi.pipeline.naming import grid_variant

KEYS = ["teacher", "student", "lam", "metric"]


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Each pair's teacher fine-tuned at every λ of ``lambdas`` (variant 'MCMI_lam<λ>'), and its students."""
    return w.students_and_teachers(exp, tuple(grid_variant(lam) for lam in exp["lambdas"]))


def _build(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    raw = read_paper(paper_dir, "table7.csv").rename(columns={"lambda": "lam"})
    paper = raw.melt(id_vars=["lam"], value_vars=["student_acc", "teacher_cmi", "teacher_ll"],
                     var_name="metric", value_name="paper")
    paper = paper.assign(teacher=SINGLE_PAIR[0], student=SINGLE_PAIR[1], paper=as_float(paper["paper"]))
    paper.loc[paper["metric"] != "student_acc", "student"] = ""
    observations = teacher_observations(records, TEACHER_METRICS, {"lam": "lam"})
    observations += kd_student_observations(records, {"lam": "lam"})
    return combine(paper[[*KEYS, "paper"]], aggregate(observations, KEYS), KEYS)


def _layout(df: pd.DataFrame) -> Layout:
    frame = numeric_order(df, "lam")
    students = {t: s for t, s in zip(frame["teacher"], frame["student"]) if s}
    frame = frame.assign(_section=[pair_label(t, students.get(t, "")) + ", KD" for t in frame["teacher"]],
                         _row=frame["lam"],
                         _col=frame["metric"].map(METRIC_LABELS).where(frame["metric"] != "student_acc",
                                                                       "KD Student Acc (%)"))
    cols = ["KD Student Acc (%)", "Teacher CMI (nats)", "Teacher LL (nats)", "Teacher Acc (%)"]
    return Layout(frame, "λ", cols)


TABLE = TableSpec(
    id="7",
    title="Table 7",
    caption="Effect of λ: KD student accuracy (%) and teacher CMI/LL per λ.",
    paper_files=("table7.csv",),
    paper_dataset="cifar100",
    inputs=_inputs,
    build=_build,
    layout=_layout,
)
