"""Table 7: the effect of λ on the MCMI teacher (CMI, LL, accuracy) and on its KD student.

Each pair's rows: the MLL teacher (not fine-tuned), the λ = 0 control (fine-tuned as the MCMI teachers
are, without the CMI term), every λ of the sweep; then the paired differences that tell the two effects
apart: λ = 0 − MLL (fine-tuning alone) and λ − λ = 0 (the CMI term). The MLL row's published numbers are
the paper's Table 1 (the same teacher and pair); the λ rows' are its Table 7.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mcmi.report.cells import (Comparison, aggregate, as_float, combine, key_text, read_paper, signatures,
                               with_paired, with_signature)
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.render import METRIC_LABELS, Layout, pair_label, summary_lines
from mcmi.report.spec import ConfigView, Experiment, TableSpec
from mcmi.report.tables.common import SINGLE_PAIR, TEACHER_METRICS
from mcmi.pipeline.naming import MLL, Variant, grid_variant

KEYS = ["teacher", "student", "variant", "metric"]    # variant: MLL or the grid teacher MCMI_lam<λ>
CONTROL = grid_variant(0)
STUDENT_COLUMN = "KD Student Acc (%)"


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Each pair's MLL teacher and its teacher fine-tuned at every λ of ``lambdas`` (variant 'MCMI_lam<λ>'),
    measured, and their KD students."""
    return w.students_and_teachers(exp, (MLL, *(grid_variant(lam) for lam in exp["lambdas"])))


def _lam(variant: str) -> str:
    """The λ of a grid variant as text; '' for the MLL teacher."""
    return "" if variant == MLL else key_text(Variant.parse(variant).lam)


def _arm(rec: MetricsRecord) -> str | None:
    """The row a run belongs to: its grid teacher (from ``lam``), the MLL teacher, or None (not this table's)."""
    if rec.run.get("lam") is not None:
        return grid_variant(rec.run["lam"])
    return MLL if rec.need("run", "variant") == MLL else None


def _paper(paper_dir: str) -> pd.DataFrame:
    raw = read_paper(paper_dir, "table7.csv")
    paper = raw.melt(id_vars=["lambda"], value_vars=["student_acc", "teacher_cmi", "teacher_ll"],
                     var_name="metric", value_name="paper")
    paper["variant"] = paper["lambda"].map(grid_variant)
    teacher, student = SINGLE_PAIR
    mll_teacher = read_paper(paper_dir, "table1_teachers.csv")
    mll_teacher = mll_teacher[(mll_teacher["teacher"] == teacher) & (mll_teacher["teacher_variant"] == MLL)]
    mll_student = read_paper(paper_dir, "table1.csv")
    mll_student = mll_student[(mll_student["teacher"] == teacher) & (mll_student["student"] == student)
                              & (mll_student["method"] == "KD") & (mll_student["teacher_variant"] == MLL)]
    mll = pd.DataFrame(
        [{"metric": metric, "paper": value} for ours, metric in TEACHER_METRICS.items()
         for value in mll_teacher[ours]]
        + [{"metric": "student_acc", "paper": value} for value in mll_student["student_acc"]])
    paper = pd.concat([mll.assign(variant=MLL), paper], ignore_index=True)
    paper = paper.assign(teacher=teacher, student=student, paper=as_float(paper["paper"]))
    paper.loc[paper["metric"] != "student_acc", "student"] = ""
    return paper[[*KEYS, "paper"]]


def _observations(records: list[MetricsRecord]) -> list[dict[str, Any]]:
    observations = []
    for rec in of_stage(records, "measure"):
        if rec.run.get("temperature") not in (None, 1) or (arm := _arm(rec)) is None:
            continue
        observations += [{"teacher": rec.need("run", "teacher"), "student": "", "variant": arm, "metric": metric,
                          "value": float(rec.need("final", key))} for key, metric in TEACHER_METRICS.items()]
    for rec in of_stage(records, "student"):
        if rec.run.get("method") != "KD" or rec.run.get("alpha_percent") not in (None, 100):
            continue
        if (arm := _arm(rec)) is not None:
            observations.append({"teacher": rec.need("run", "teacher"), "student": rec.need("run", "student"),
                                 "variant": arm, "seed": rec.run.get("seed"), "metric": "student_acc",
                                 "value": float(rec.need("final", "test_acc"))})
    return observations


def comparisons(df: pd.DataFrame) -> list[Comparison]:
    """λ = 0 − MLL (fine-tuning alone) and every other λ − λ = 0 (the CMI term), for the λ rows of ``df``;
    without a λ = 0 control, every λ − MLL."""
    arms = df["variant"][~df["difference"]] if "difference" in df else df["variant"]
    lams = sorted((v for v in dict.fromkeys(arms) if v != MLL), key=lambda v: Variant.parse(v).lam)
    out = []
    if CONTROL in lams:
        out.append(Comparison("variant", CONTROL, MLL, "λ = 0 − MLL (fine-tuning alone)",
                              names=("λ = 0 control", "MLL")))
    base, base_name = (CONTROL, "λ = 0") if CONTROL in lams else (MLL, "MLL")
    for variant in lams:
        if variant != CONTROL:
            lam = _lam(variant)
            out.append(Comparison("variant", variant, base, f"λ = {lam} − {base_name}",
                                  names=(f"λ = {lam}", f"{base_name} control" if base == CONTROL else base_name)))
    return out


def _build(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    observations = _observations(records)
    df = combine(_paper(paper_dir), aggregate(observations, KEYS), KEYS)
    for comparison in comparisons(df):
        df = with_paired(df, observations, KEYS, comparison)
        if comparison.treated != CONTROL:
            df = with_signature(df, comparison)      # the CMI term's signature: CMI up, LL down
    differences = df["difference"] if "difference" in df else pd.Series(False, index=df.index)
    df.insert(df.columns.get_loc("variant") + 1, "lam",
              [_lam(v) if not diff else "" for v, diff in zip(df["variant"], differences)])
    return df


def _row_label(variant: str) -> str:
    if variant == MLL:
        return "MLL teacher (not fine-tuned)"
    if variant == CONTROL:
        return "λ = 0: control (fine-tuned without the CMI term)"
    return f"λ = {_lam(variant)}" if variant.startswith("MCMI_lam") else variant


def _signature_line(df: pd.DataFrame) -> list[str]:
    """Per teacher: for which λ the CMI rose above the control's (or MLL's) and the LL fell below it."""
    lines = []
    checks = [sig for c in comparisons(df) if c.treated != CONTROL for sig in signatures(df, c)]
    for teacher in dict.fromkeys(sig.teacher for sig in checks if sig.holds is not None):
        mine = [sig for sig in checks if sig.teacher == teacher and sig.holds is not None]
        held = [sig.comparison.treated_name for sig in mine if sig.holds]
        failed = [sig.comparison.treated_name for sig in mine if not sig.holds]
        control = mine[0].comparison.control_name
        line = (f"**The CMI term's signature** ({teacher}: training CMI above the {control}'s, LL below): "
                f"holds for {', '.join(held) or 'no λ'}")
        lines.append(line + (f"; **not for {', '.join(failed)}**." if failed else "."))
    return lines


def _layout(df: pd.DataFrame) -> Layout:
    students = {t: s for t, s in zip(df["teacher"], df["student"]) if s}
    found = comparisons(df)
    order = {MLL: 0, CONTROL: 1, **{c.label: 1000 + i for i, c in enumerate(found)}}
    frame = df.assign(_order=[order.get(v, 2 + float(lam or 0)) for v, lam in zip(df["variant"], df["lam"])])
    frame = frame.sort_values("_order", kind="stable").drop(columns="_order")
    frame = frame.assign(_section=[pair_label(t, students.get(t, "")) + ", KD" for t in frame["teacher"]],
                         _row=frame["variant"].map(_row_label),
                         _col=frame["metric"].map(METRIC_LABELS).where(frame["metric"] != "student_acc",
                                                                       STUDENT_COLUMN))
    cols = [STUDENT_COLUMN, "Teacher CMI (nats)", "Teacher LL (nats)", "Teacher Acc (%)"]
    header = ["Rows 'A − B' are paired differences: 'λ = 0 − MLL' is what fine-tuning alone does, 'λ − λ = 0' "
              "what the CMI term adds to it. The paper's MLL row is its Table 1 (same teacher and pair)."]
    summary = summary_lines(df, [(c, "student_acc") for c in found]) + _signature_line(df)
    return Layout(frame, "Teacher", cols, header_lines=header, summary=summary)


TABLE = TableSpec(
    id="7",
    title="Table 7",
    caption="Effect of λ: KD student accuracy (%) and teacher CMI/LL per λ, beside the MLL teacher and the "
            "λ = 0 control (fine-tuning without the CMI term).",
    paper_files=("table7.csv", "table1.csv", "table1_teachers.csv"),
    paper_citation="table7.csv; the MLL row: table1.csv, table1_teachers.csv",
    paper_dataset="cifar100",
    inputs=_inputs,
    build=_build,
    layout=_layout,
    path_numbers=("lambdas",),
)
