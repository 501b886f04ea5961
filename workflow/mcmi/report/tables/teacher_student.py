"""What Tables 1, 1x and 2 share: teachers measured, KD students with MLL and MCMI teachers, the
teacher-free student baseline; one block per pair with MLL, MCMI and MCMI − MLL columns."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mcmi.report.cells import GAIN, MCMI_VS_MLL, aggregate, combine, signatures, with_gain, with_signature
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.render import (METRIC_LABELS, Layout, pair_label, signature_line, signature_summary,
                                 summary_lines)
from mcmi.report.spec import ConfigView, Experiment
from mcmi.pipeline.naming import split_pair

KEYS = ["block", "teacher", "student", "method", "variant", "metric"]


@dataclass(frozen=True)
class MetricMap:
    """Which of our ``final`` keys feed which metric of a teacher/student table."""

    student_metrics: dict[str, str]
    teacher_metrics: dict[str, str]
    with_baseline: bool


def _observations(records: list[MetricsRecord], metrics: MetricMap) -> list[dict]:
    """One observation per run and metric, with the run's seed (teacher measurements have none)."""
    observations = []
    for rec in of_stage(records, "student"):
        if rec.run.get("alpha_percent") not in (None, 100):
            continue  # few-shot students belong to Table 3
        method = rec.need("run", "method")
        vanilla = method == "vanilla"
        if vanilla and not metrics.with_baseline:
            continue
        cell = {"block": "baseline" if vanilla else "student", "student": rec.need("run", "student"),
                "method": method, "teacher": "" if vanilla else rec.need("run", "teacher"),
                "variant": "" if vanilla else rec.need("run", "variant"), "seed": rec.run.get("seed")}
        observations += [{**cell, "metric": metric, "value": float(rec.need("final", key))}
                         for key, metric in metrics.student_metrics.items()]
    for rec in of_stage(records, "measure"):
        if rec.run.get("temperature") not in (None, 1):
            continue  # temperature-sweep measurements belong to Figure 1
        cell = {"block": "teacher", "teacher": rec.need("run", "teacher"), "student": "", "method": "",
                "variant": rec.need("run", "variant")}
        observations += [{**cell, "metric": metric, "value": float(rec.need("final", key))}
                         for key, metric in metrics.teacher_metrics.items()]
    return observations


def teacher_student_table(paper: pd.DataFrame, records: list[MetricsRecord], metrics: MetricMap) -> pd.DataFrame:
    """Paper and our cells of a teacher/student table, with MCMI − MLL rows per student cell (paired by
    seed) and per teacher metric (the two measured teachers), and the paper's signature checked."""
    observations = _observations(records, metrics)
    df = with_gain(combine(paper, aggregate(observations, KEYS), KEYS), observations, KEYS)
    return with_signature(df)


def teacher_student_inputs(w: ConfigView, exp: Experiment, with_baseline: bool) -> list[str]:
    """Each pair's teacher measured (MLL, MCMI), its students per method, variant and seed, and (with
    ``with_baseline``) every student trained without a teacher."""
    paths = w.students_and_teachers(exp)
    if with_baseline:
        students = sorted({split_pair(p)[1] for p in exp["pairs"]})
        paths += [w.vanilla(exp["dataset"], st, s) for st in students for s in w.seeds(exp)]
    return paths


def teacher_student_layout(df: pd.DataFrame, sections: bool) -> Layout:
    """One block per pair; rows = teacher metrics, baseline, methods; cols = MLL, MCMI, gain."""
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
        title = pair_label(teacher, student)
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
    # A section is ours when one of its students is; teacher and baseline rows, repeated in every section
    # of their teacher or student, decide only for a section without students.
    with_students = set(frame.loc[frame["block"] == "student", "_section"])
    frame["_anchor"] = (frame["block"] == "student") | ~frame["_section"].isin(with_students)
    header = ["Row 'Student, no teacher' is the teacher-free student baseline (shown under MLL)."]
    sigs = {sig.teacher: sig for sig in signatures(df)}
    intro = {title: [line] for title, teacher in zip(frame["_section"], frame["teacher"])
             if teacher in sigs and (line := signature_line(sigs[teacher]))}
    metrics = dict.fromkeys(df.loc[df["block"] == "student", "metric"])
    summary = summary_lines(df, [(MCMI_VS_MLL, metric) for metric in metrics]) + signature_summary(list(sigs.values()))
    return Layout(frame, "Method / metric", ["MLL", "MCMI", GAIN], header_lines=header, summary=summary, intro=intro)
