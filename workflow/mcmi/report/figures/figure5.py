"""Figure 5 (appendix A.2): why a larger teacher can hurt KD. A student distilled (KD, CRD) from MLL and
MCMI teachers of increasing size; per method, the student's accuracy and the teacher's CMI and LL
(training set, T = 1) against the teacher.

The paper's caption says the student is ResNet8; the authors' first-commit scripts (runa1-3.sh,
local.sh) distil resnet20 from resnet32/56/110/152 teachers fine-tuned at λ = 0.25, and cannot have run
as committed (docs/appendix_facts.md). Student, teachers and λ (per teacher too) are config; the default
follows the caption for the student and the scripts for teachers and λ. The MCMI teachers are the grid
teachers at that λ (``MCMI_lam<λ>``), so a λ of the λ grid reuses its fine-tune."""

from __future__ import annotations

import re

import pandas as pd

from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.naming import MCMI, MLL, grid_variant
from mcmi.report.figures import common
from mcmi.report.figures.common import plotting, style
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import ConfigView, Experiment, FigureSpec

COLOURS = {MLL: "tab:blue", MCMI: "tab:red"}
PANELS = (("student_acc", "Student top-1 accuracy (%)"), ("teacher_cmi", "Teacher CMI (nats)"),
          ("teacher_ll", "Teacher LL (nats)"))


def teacher_lambda(exp: Experiment, teacher: str) -> float:
    """The λ of a teacher's MCMI fine-tune: ``lam_per_teacher`` if it names the teacher, else ``lam``."""
    return exp["lam_per_teacher"].get(teacher, exp["lam"])


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Per teacher: MLL and its fine-tune at λ measured at T = 1, and the students of every method and seed."""
    ds, student = exp["dataset"], exp["student"]
    paths = []
    for teacher in exp["teachers"]:
        variants = (MLL, grid_variant(teacher_lambda(exp, teacher)))
        paths += [w.measure(ds, teacher, v, 1) for v in variants]
        paths += [w.student(ds, teacher, student, m, v, "full", s)
                  for m in exp["methods"] for v in variants for s in w.seeds(exp)]
    return paths


def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    unknown = sorted(set(exp["lam_per_teacher"]) - set(exp["teachers"]))
    if unknown:
        raise ConfigError(f"{key}.lam_per_teacher.{unknown[0]}: not one of {key}.teachers {exp['teachers']}")


def size_order(teacher: str) -> tuple[float, str]:
    """Teachers along the x-axis by depth, the number in their name (resnet32 < resnet56 < resnet110)."""
    found = re.search(r"\d+", teacher)
    return (float(found.group()) if found else float("inf"), teacher)


def frame(records: list[MetricsRecord]) -> pd.DataFrame:
    """One row per observation: method ('' for a teacher measurement), teacher, variant, metric, seed, value."""
    rows = []
    for r in of_stage(records, "measure"):
        if r.run.get("temperature") not in (None, 1):
            continue
        for key, metric in (("train_cmi", "teacher_cmi"), ("train_ll", "teacher_ll")):
            rows.append({"method": "", "teacher": r.need("run", "teacher"), "variant": r.need("run", "variant"),
                         "metric": metric, "seed": None, "value": float(r.need("final", key))})
    for r in of_stage(records, "student"):
        rows.append({"method": r.need("run", "method"), "teacher": r.need("run", "teacher"),
                     "variant": r.need("run", "variant"), "metric": "student_acc", "seed": r.run.get("seed"),
                     "value": float(r.need("final", "test_acc")), "student": r.need("run", "student")})
    return pd.DataFrame(rows, columns=["method", "teacher", "variant", "metric", "seed", "value", "student"])


def _draw(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """One row per method: student accuracy (mean ± std over seeds), teacher CMI and LL against the
    teacher (ordered by depth), an MLL and an MCMI curve in each panel."""
    df = frame(records)
    methods = [m for m in dict.fromkeys(df["method"]) if m]
    if not methods:
        raise ValueError("figure 5: no student runs among the metrics files")
    teachers = sorted(dict.fromkeys(df["teacher"]), key=size_order)
    students = sorted(set(df["student"].dropna()))
    plt, _, _ = plotting()
    with style():
        fig, axes = plt.subplots(len(methods), len(PANELS), figsize=(4.0 * len(PANELS), 3.0 * len(methods)),
                                 squeeze=False)
        for i, method in enumerate(methods):
            for j, (metric, label) in enumerate(PANELS):
                ax = axes[i, j]
                part = df[(df["metric"] == metric) & ((df["method"] == method) | (metric != "student_acc"))]
                for variant in [v for v in (MLL, MCMI) if v in set(part["variant"])]:
                    stats = part[part["variant"] == variant].groupby("teacher")["value"].agg(["mean", "std"])
                    stats = stats.reindex([t for t in teachers if t in stats.index])
                    ax.errorbar([teachers.index(t) for t in stats.index], stats["mean"],
                                yerr=stats["std"].fillna(0.0), marker="o", capsize=3, color=COLOURS[variant],
                                label=f"{variant} teacher")
                ax.set_xticks(range(len(teachers)), teachers, rotation=20)
                ax.set_ylabel(label)
                ax.set_title(f"({chr(ord('a') + i)}) {method}" if j == 0 else "", loc="left")
                if i == len(methods) - 1:
                    ax.set_xlabel("Teacher (by depth)")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, bbox_to_anchor=(0.5, 1.0), frameon=False)
        lams = sorted({f"{r.run['lam']:g}" for r in records if r.run.get("lam") is not None})
        common.footnote(fig, [f"Student: {', '.join(students)}. MCMI teacher: the MLL teacher fine-tuned with the "
                              f"MCMI recipe at λ = {' / '.join(lams) or '?'} (its own metrics record it)."])
        common.save(fig, out_prefix, crop=True)


FIGURE = FigureSpec(
    5, "Teacher size: a student distilled by KD and CRD from MLL and MCMI teachers of increasing size (CIFAR-100); "
       "per method, the student's accuracy (mean ± std over seeds) and the teacher's training-set CMI and LL "
       "against the teacher. The paper's caption names ResNet8 as student; the authors' scripts use resnet20, "
       "teachers resnet32/56/110/152 and λ = 0.25 (experiments.figure5: student, teachers, lam).",
    inputs=_inputs, draw=_draw, paper_dataset="cifar100", check=_check, path_numbers=("lam", "lam_per_teacher"))
