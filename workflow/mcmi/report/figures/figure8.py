"""Figure 8 (appendix A.7): KD with the teacher at temperature T_t and the student at T_s, MLL vs MCMI
teachers; rows are pairs, columns T_s, the x-axis T_t.

Cells at T_t = T_s are the students of Figure 1 (setting 'T<t>', the same jobs) and, at the config's KD
temperature, Table 1's KD students (setting 'full'); the others ('Tt<t>_Ts<s>') scale the KL term by
``figure8.kd_scale`` (distill/kd.py: ts2 = T_s², ours; tt_ts, tt2, none). The MCMI teacher is the λ*
one, not re-tuned per temperature (as the paper says)."""

from __future__ import annotations

import pandas as pd

from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.naming import MCMI, MLL, VARIANTS, split_pair
from mcmi.report.figures import common
from mcmi.report.figures.common import (is_table1_cell, kd_temperatures, pair_label, paper_table1, plotting,
                                        reproduction_note, style)
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import ConfigView, Experiment, FigureSpec

COLOURS = {MLL: "tab:blue", MCMI: "tab:red"}


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Per pair, T_s, T_t, teacher (MLL, MCMI) and seed: the KD student (the same path as Figure 1's or
    Table 1's student where the temperatures agree)."""
    ds = exp["dataset"]
    paths = []
    for pair in exp["pairs"]:
        teacher, student = split_pair(pair)
        for t_student in exp["student_temperatures"]:
            for t_teacher in exp["teacher_temperatures"]:
                setting = w.kd_setting(teacher, student, t_teacher, t_student)
                paths += [w.student(ds, teacher, student, "KD", v, setting, s) for v in VARIANTS for s in w.seeds(exp)]
    return paths


def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    if "KD" not in w.config["methods"]:
        raise ConfigError(f"{key}: its students are KD students, but 'methods' has no entry KD")


def frame(records: list[MetricsRecord]) -> pd.DataFrame:
    """One row per KD student: pair, variant, T_t, T_s, seed, accuracy, whether it is Table 1's cell."""
    rows = []
    for r in of_stage(records, "student"):
        if r.run.get("method") != "KD":
            continue
        t_teacher, t_student = kd_temperatures(r)
        rows.append({"teacher": r.need("run", "teacher"), "student": r.need("run", "student"),
                     "variant": r.need("run", "variant"), "T_t": t_teacher, "T_s": t_student,
                     "seed": r.run.get("seed"), "acc": float(r.need("final", "test_acc")),
                     "table1": is_table1_cell(r)})
    return pd.DataFrame(rows, columns=["teacher", "student", "variant", "T_t", "T_s", "seed", "acc", "table1"])


def _draw(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """A grid of panels, rows = pairs and columns = T_s: student accuracy (mean ± std over seeds) against
    T_t, one curve per teacher; a note gives Table 1's cells (T_t = T_s at the KD temperature)."""
    df = frame(records)
    if df.empty:
        raise ValueError("figure 8: no KD student runs among the metrics files")
    plt, _, _ = plotting()
    pairs = list(dict.fromkeys(zip(df["teacher"], df["student"])))
    columns = sorted(df["T_s"].unique())
    notes = []
    with style():
        fig, axes = plt.subplots(len(pairs), len(columns), figsize=(3.6 * len(columns), 2.9 * len(pairs)),
                                 squeeze=False, sharex=True)
        for i, (teacher, student) in enumerate(pairs):
            for j, t_student in enumerate(columns):
                ax = axes[i, j]
                cell = df[(df["teacher"] == teacher) & (df["student"] == student) & (df["T_s"] == t_student)]
                for variant in [v for v in (MLL, MCMI) if v in set(cell["variant"])]:
                    stats = cell[cell["variant"] == variant].groupby("T_t")["acc"].agg(["mean", "std"])
                    ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0.0), marker="o", capsize=3,
                                color=COLOURS[variant], label=f"{variant} teacher")
                ax.set_title(f"{pair_label(teacher, student)}, $T_s$ = {t_student:g}", fontsize="small")
                if i == len(pairs) - 1:
                    ax.set_xlabel("Teacher temperature $T_t$")
                if j == 0:
                    ax.set_ylabel("Student top-1 accuracy (%)")
            shared = df[(df["teacher"] == teacher) & (df["student"] == student) & df["table1"]]
            for (t_teacher, t_student), block in shared.groupby(["T_t", "T_s"]):
                for variant in [v for v in (MLL, MCMI) if v in set(block["variant"])]:
                    notes.append(reproduction_note(
                        f"T_t = T_s = {t_teacher:g}, {pair_label(teacher, student)}, {variant} teacher is Table 1's "
                        f"KD cell (the same job)", block.loc[block["variant"] == variant, "acc"].tolist(),
                        paper_table1(paper_dir, teacher, student, "KD", variant)))
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, bbox_to_anchor=(0.5, 1.0), frameon=False)
        common.footnote(fig, notes)
        common.save(fig, out_prefix, crop=True)


FIGURE = FigureSpec(
    8, "KD student accuracy with the teacher's softmax at temperature T_t (x-axis) and the student's at T_s "
       "(columns), MLL vs MCMI (λ*) teachers, one row per pair; mean ± std over seeds. Where T_t ≠ T_s the KL "
       "term is scaled as figure8.kd_scale says (ts2: T_s², ours). The cells T_t = T_s = 4 are Table 1's KD "
       "cells (the same jobs), printed under the panels beside the paper's Table 1 numbers.",
    inputs=_inputs, draw=_draw, paper_dataset="cifar100", check=_check,
    path_numbers=("teacher_temperatures", "student_temperatures"), paper_files=("table1.csv",))
