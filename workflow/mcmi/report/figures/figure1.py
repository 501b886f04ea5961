"""Figure 1: the MLL teacher's CMI and its KD students' accuracy over the temperature T (teacher and
student at the same T)."""

from __future__ import annotations

import pandas as pd

from mcmi.pipeline.naming import split_pair, temperature_setting
from mcmi.report.figures import common
from mcmi.report.figures.common import grid, pair_label, plotting, style
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import ConfigView, Experiment, FigureSpec


def _temperature_inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Per pair and temperature: the MLL teacher measured at T, and its KD students trained at T."""
    ds = exp["dataset"]
    return [path for pair in exp["pairs"] for t in exp["temperatures"] for path in
            [w.measure(ds, split_pair(pair)[0], "MLL", t)]
            + [w.student(ds, *split_pair(pair), "KD", "MLL", temperature_setting(t), s) for s in w.seeds(exp)]]


def _temperature_frames(records: list[MetricsRecord]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """KD student accuracy per (pair, variant, T, seed) and teacher CMI per (teacher, variant, T)."""
    students = pd.DataFrame([
        {"teacher": r.need("run", "teacher"), "student": r.need("run", "student"),
         "variant": r.run.get("variant") or "MLL", "T": float(r.need("run", "temperature")),
         "acc": float(r.need("final", "test_acc"))}
        for r in of_stage(records, "student") if r.run.get("method") == "KD"
    ], columns=["teacher", "student", "variant", "T", "acc"])
    teachers = pd.DataFrame([
        {"teacher": r.need("run", "teacher"), "variant": r.run.get("variant") or "MLL",
         "T": float(r.need("run", "temperature")), "cmi": float(r.need("final", "train_cmi"))}
        for r in of_stage(records, "measure") if r.run.get("temperature") is not None
    ], columns=["teacher", "variant", "T", "cmi"])
    return students, teachers


def _draw_temperature(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """Per pair: student accuracy (mean ± std over seeds, left axis) and teacher CMI (right axis) vs T."""
    students, teachers = _temperature_frames(records)
    if students.empty:
        raise ValueError("figure 1: no KD student runs with a temperature among the metrics files")
    _, _, palette = plotting()
    pairs = list(dict.fromkeys(zip(students["teacher"], students["student"])))
    with style():
        fig, axes = grid(len(pairs))
        for ax, (teacher, student) in zip(axes, pairs):
            cmi_ax = ax.twinx()
            cmi_ax.grid(False)
            runs = students[(students["teacher"] == teacher) & (students["student"] == student)]
            for i, (variant, part) in enumerate(runs.groupby("variant", sort=True)):
                stats = part.groupby("T")["acc"].agg(["mean", "std"]).reset_index()
                ax.errorbar(stats["T"], stats["mean"], yerr=stats["std"].fillna(0.0), color=palette[i], marker="o",
                            capsize=3, label=f"student acc ({variant} teacher)")
                cmi = teachers[(teachers["teacher"] == teacher) & (teachers["variant"] == variant)]
                if not cmi.empty:
                    curve = cmi.groupby("T")["cmi"].mean()
                    cmi_ax.plot(curve.index, curve.values, color=palette[i + 3], marker="s", linestyle="--",
                                label=f"teacher CMI ({variant})")
            ax.set_title(pair_label(teacher, student))
            ax.set_xlabel("Temperature T (teacher and student)")
            ax.set_ylabel("Student top-1 accuracy (%)")
            cmi_ax.set_ylabel("Teacher CMI at T (nats)")
            handles = ax.get_legend_handles_labels()[0] + cmi_ax.get_legend_handles_labels()[0]
            labels = ax.get_legend_handles_labels()[1] + cmi_ax.get_legend_handles_labels()[1]
            cmi_ax.legend(handles, labels, fontsize="small", loc="best", framealpha=0.9)
        common.save(fig, out_prefix)


FIGURE = FigureSpec(1, "Teacher CMI vs KD student accuracy over the temperature T.",
                    inputs=_temperature_inputs, draw=_draw_temperature, paper_dataset="cifar100",
                    path_numbers=("temperatures",))
