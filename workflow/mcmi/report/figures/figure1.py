"""Figure 1, drawn the way the paper draws it: per pair, the KD student's accuracy as blue bars over the
temperature T (teacher and student at the same T; error bars: std over seeds) and the MLL teacher's CMI at
T as a red curve on a right axis. The student at the config's KD temperature (T = 4) is Table 1's KD cell,
the same job; its value is printed beside the paper's Table 1 number."""

from __future__ import annotations

import pandas as pd

from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.naming import MLL, split_pair
from mcmi.report.figures import common
from mcmi.report.figures.common import (grid, is_table1_cell, kd_temperatures, pair_label, paper_table1, plotting,
                                        reproduction_note, style)
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import ConfigView, Experiment, FigureSpec

BAR, CURVE = "tab:blue", "tab:red"


def _temperature_inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Per pair and temperature: the MLL teacher measured at T, and its KD students trained at T (at the
    config's KD temperature: Table 1's students)."""
    ds = exp["dataset"]
    paths = []
    for pair in exp["pairs"]:
        teacher, student = split_pair(pair)
        for t in exp["temperatures"]:
            paths.append(w.measure(ds, teacher, MLL, t))
            paths += [w.student(ds, teacher, student, "KD", MLL, w.kd_setting(teacher, student, t, t), s)
                      for s in w.seeds(exp)]
    return paths


def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    if "KD" not in w.config["methods"]:
        raise ConfigError(f"{key}: its students are KD students, but 'methods' has no entry KD")


def _temperature_frames(records: list[MetricsRecord]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """KD student accuracy per (pair, variant, T, seed) and teacher CMI per (teacher, variant, T)."""
    rows = []
    for r in of_stage(records, "student"):
        if r.run.get("method") != "KD":
            continue
        t_teacher, t_student = kd_temperatures(r)
        if t_teacher != t_student:
            continue      # two temperatures: Figure 8's
        rows.append({"teacher": r.need("run", "teacher"), "student": r.need("run", "student"),
                     "variant": r.run.get("variant") or MLL, "T": t_student, "seed": r.run.get("seed"),
                     "acc": float(r.need("final", "test_acc")), "table1": is_table1_cell(r)})
    students = pd.DataFrame(rows, columns=["teacher", "student", "variant", "T", "seed", "acc", "table1"])
    teachers = pd.DataFrame([
        {"teacher": r.need("run", "teacher"), "variant": r.run.get("variant") or MLL,
         "T": float(r.need("run", "temperature")), "cmi": float(r.need("final", "train_cmi"))}
        for r in of_stage(records, "measure") if r.run.get("temperature") is not None
    ], columns=["teacher", "variant", "T", "cmi"])
    return students, teachers


def _draw_temperature(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """Per pair: blue bars of student accuracy (mean, error bar = std over seeds) and the red curve of the
    teacher's CMI (right axis) against T; no legend over the data (the axes say which is which)."""
    students, teachers = _temperature_frames(records)
    if students.empty:
        raise ValueError("figure 1: no KD student runs with a temperature among the metrics files")
    pairs = list(dict.fromkeys(zip(students["teacher"], students["student"])))
    notes = []
    with style():
        fig, axes = grid(len(pairs), size=(4.2, 3.2))
        for ax, (teacher, student) in zip(axes, pairs):
            runs = students[(students["teacher"] == teacher) & (students["student"] == student)]
            stats = runs.groupby("T")["acc"].agg(["mean", "std", "count"]).reset_index()
            positions = range(len(stats))
            ax.bar(positions, stats["mean"], yerr=stats["std"].fillna(0.0), color=BAR, alpha=0.85, capsize=3,
                   width=0.6, error_kw={"elinewidth": 1})
            low = (stats["mean"] - stats["std"].fillna(0.0)).min()
            high = (stats["mean"] + stats["std"].fillna(0.0)).max()
            ax.set_ylim(max(0.0, low - 0.5 * (high - low + 1.0)), min(100.0, high + 0.3 * (high - low + 1.0)))
            ax.set_xticks(list(positions), [f"{t:g}" for t in stats["T"]])
            ax.set_xlabel("Temperature T (teacher and student)")
            ax.set_ylabel("Student top-1 accuracy (%)", color=BAR)
            ax.tick_params(axis="y", colors=BAR)
            cmi = teachers[(teachers["teacher"] == teacher) & (teachers["variant"] == MLL)]
            if not cmi.empty:
                curve = cmi.groupby("T")["cmi"].mean().reindex(stats["T"])
                cmi_ax = ax.twinx()
                cmi_ax.grid(False)
                cmi_ax.plot(list(positions), curve.values, color=CURVE, marker="o", linewidth=2)
                cmi_ax.set_ylabel("Teacher CMI at T (nats)", color=CURVE)
                cmi_ax.tick_params(axis="y", colors=CURVE)
            ax.set_title(pair_label(teacher, student))
            shared = runs[runs["table1"]]
            for t in dict.fromkeys(shared["T"]):
                values = shared.loc[shared["T"] == t, "acc"].tolist()
                notes.append(reproduction_note(
                    f"T = {t:g}, {pair_label(teacher, student)} is Table 1's KD cell (MLL teacher; the same job)",
                    values, paper_table1(paper_dir, teacher, student, "KD", MLL)))
        common.footnote(fig, notes)
        common.save(fig, out_prefix, crop=bool(notes))


FIGURE = FigureSpec(
    1, "KD student accuracy (blue bars, left axis; error bars: std over seeds) and the MLL teacher's CMI at T "
       "(red curve, right axis) over the temperature T of teacher and student, one panel per pair. The bar at "
       "the config's KD temperature (T = 4) is Table 1's KD cell of the pair, the same job: the note under the "
       "panels gives its value beside the paper's Table 1 number.",
    inputs=_temperature_inputs, draw=_draw_temperature, paper_dataset="cifar100", check=_check,
    path_numbers=("temperatures",), paper_files=("table1.csv",))
