"""Table 4: MLL vs early-stopped (ES) vs MCMI teachers, and their KD students."""

from __future__ import annotations

import pandas as pd

from mcmi.report.cells import (MCMI_VS_MLL, Comparison, aggregate, as_float, combine, read_paper, signatures,
                               with_paired, with_signature)
from mcmi.report.records import MetricsRecord
from mcmi.report.render import (METRIC_LABELS, Layout, pair_label, signature_line, signature_summary,
                                 summary_lines)
from mcmi.report.spec import ConfigView, Experiment, TableSpec
from mcmi.report.tables.common import TEACHER_METRICS, kd_student_observations, teacher_observations
from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.naming import MCMI, MLL, early_stop_variant, split_pair

KEYS = ["teacher", "student", "variant", "metric"]
# The early-stopped and the MCMI teacher, each against the MLL teacher (students paired by seed).
COMPARISONS = (Comparison("variant", "ES", MLL, "ES − MLL"), MCMI_VS_MLL)


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


def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    """An early-stopped teacher must stop before its recipe's last epoch."""
    from mcmi.pipeline.config import check_model

    for teacher, epochs in exp["es_epochs"].items():
        check_model(teacher, f"{key}.es_epochs.{teacher}")
        full = w.recipe(exp["dataset"], "teacher", teacher)["epochs"]
        if epochs >= full:
            raise ConfigError(f"{key}.es_epochs.{teacher}: {epochs} is not earlier than the "
                              f"teacher recipe's {full} epochs")


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
    df = combine(paper, aggregate(observations, KEYS), KEYS)
    for comparison in COMPARISONS:
        df = with_signature(with_paired(df, observations, KEYS, comparison), comparison)
    return df


def _layout(df: pd.DataFrame) -> Layout:
    pairs = {t: s for t, s in zip(df["teacher"], df["student"]) if s}
    frame = df.assign(_section=[pair_label(t, pairs.get(t, "")) for t in df["teacher"]], _row=df["variant"],
                      _col=df["metric"].map(METRIC_LABELS).where(df["metric"] != "student_acc",
                                                                 "KD Student Acc (%)"))
    order = {"MLL": 0, "ES": 1, "MCMI": 2, **{c.label: 3 + i for i, c in enumerate(COMPARISONS)}}
    frame = frame.sort_values("variant", key=lambda v: v.map(order), kind="stable")
    cols = ["Teacher Acc (%)", "Teacher CMI (nats)", "Teacher LL (nats)", "KD Student Acc (%)"]
    intro: dict[str, list[str]] = {}
    sigs = []
    for comparison in COMPARISONS:
        for sig in signatures(df, comparison):
            sigs.append(sig)
            line = signature_line(sig)
            if line:
                intro.setdefault(pair_label(sig.teacher, pairs.get(sig.teacher, "")), []).append(line)
    summary = summary_lines(df, [(c, "student_acc") for c in COMPARISONS])
    summary += [line for c in COMPARISONS for line in signature_summary([s for s in sigs if s.comparison == c])]
    return Layout(frame, "Teacher", cols, summary=summary, intro=intro)


TABLE = TableSpec(
    id="4",
    title="Table 4",
    caption="MLL vs early-stopped (ES) vs MCMI teachers and their KD students.",
    paper_files=("table4.csv",),
    paper_dataset="imagenet",
    inputs=_inputs,
    build=_build,
    layout=_layout,
    check=_check,
)
