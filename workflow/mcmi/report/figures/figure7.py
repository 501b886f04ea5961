"""Figure 7 (appendix A.4.2): a high-CMI teacher is not a high-entropy one. Per pair, the MLL teacher, the
MCMI (λ*) teacher and the MLL teacher fine-tuned with the MCMI recipe but an entropy or a label-smoothing
regulariser instead of the CMI term: the teacher's CMI and mean output entropy (training set, T = 1) and
the accuracy of its KD student.

The MLL and MCMI students are Table 1's KD cells (the same jobs), printed beside the paper's Table 1
numbers. The regularised teachers (ours; the paper states neither form nor weight): CE − β·H(P) with β the
pair's λ* (``experiments.figure7.beta``, default ``mcmi.paper_lambda_star``) -- the confidence penalty of
Pereyra et al. (2017), the sign of the authors' unused ``CE_KL_ENP_loss``; label smoothing ε = 0.1 as
cross-entropy on smoothed targets (``ls_form: standard``) or the authors' unused reverse-KL form
CE + w·KL(P‖q_ε) (``ls_form: code``, w = ``ls_weight``, default β)."""

from __future__ import annotations

import pandas as pd

from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.naming import (ENTROPY, LABEL_SMOOTHING, LABEL_SMOOTHING_KL, MCMI, MLL, entropy_variant,
                                  label_smoothing_variant, split_pair)
from mcmi.report.figures import common
from mcmi.report.figures.common import is_table1_cell, pair_label, paper_table1, plotting, reproduction_note, style
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import ConfigView, Experiment, FigureSpec

ORDER = (MLL, MCMI, ENTROPY, LABEL_SMOOTHING, LABEL_SMOOTHING_KL)
COLOURS = {MLL: "tab:blue", MCMI: "tab:red", ENTROPY: "tab:green", LABEL_SMOOTHING: "tab:orange",
           LABEL_SMOOTHING_KL: "tab:brown"}
PANELS = (("teacher_cmi", "Teacher CMI (nats)"), ("teacher_entropy", "Teacher mean entropy (nats)"),
          ("student_acc", "KD student top-1 accuracy (%)"))


def beta_of(w: ConfigView, exp: Experiment, teacher: str) -> float:
    """β of a teacher's entropy regulariser: ``beta[teacher]``, else the paper's λ* of the teacher."""
    if teacher in exp["beta"]:
        return float(exp["beta"][teacher])
    star = w.config["mcmi"].get("paper_lambda_star", {}).get(exp["dataset"], {})
    if teacher not in star:
        raise ConfigError(f"experiments.figure7.beta.{teacher}: missing (the default, "
                          f"mcmi.paper_lambda_star.{exp['dataset']}.{teacher}, is not set either)")
    return float(star[teacher])


def variants(w: ConfigView, exp: Experiment, teacher: str) -> list[str]:
    """The teachers compared for one pair: MLL, MCMI (λ*) and the configured regularised ones."""
    out = [MLL, MCMI]
    beta = beta_of(w, exp, teacher)
    if "entropy" in exp["regularizers"]:
        out.append(entropy_variant(beta))
    if "label_smoothing" in exp["regularizers"]:
        weight = exp.get("ls_weight", beta) if exp["ls_form"] == "code" else None
        out.append(label_smoothing_variant(exp["ls_eps"], weight))
    return out


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Per pair and teacher variant: the teacher measured at T = 1 (CMI, entropy) and its KD students."""
    ds, paths = exp["dataset"], []
    for pair in exp["pairs"]:
        teacher, student = split_pair(pair)
        for variant in variants(w, exp, teacher):
            paths.append(w.measure(ds, teacher, variant, 1))
            paths += [w.student(ds, teacher, student, "KD", variant, "full", s) for s in w.seeds(exp)]
    return paths


def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    if "KD" not in w.config["methods"]:
        raise ConfigError(f"{key}: its students are KD students, but 'methods' has no entry KD")
    for pair in exp["pairs"]:
        beta_of(w, exp, split_pair(pair)[0])
    if "ls_weight" in exp and exp["ls_form"] != "code":
        raise ConfigError(f"{key}.ls_weight: only used with ls_form 'code' (the reverse-KL form), not "
                          f"{exp['ls_form']!r}")


def _label(run: dict) -> str:
    kind = run.get("variant")
    if kind == ENTROPY:
        return f"entropy, β = {run.get('beta'):g}"
    if kind == LABEL_SMOOTHING:
        return f"label smoothing, ε = {run.get('eps'):g}"
    if kind == LABEL_SMOOTHING_KL:
        return f"LS (reverse KL), ε = {run.get('eps'):g}, w = {run.get('ls_weight'):g}"
    return "MCMI (λ*)" if kind == MCMI else str(kind)


def frame(records: list[MetricsRecord]) -> pd.DataFrame:
    """One row per observation: teacher, student ('' for a teacher's), variant kind, label, metric, seed,
    value, and whether it is Table 1's cell."""
    rows = []
    for r in of_stage(records, "measure"):
        if r.run.get("temperature") not in (None, 1):
            continue
        for key, metric in (("train_cmi", "teacher_cmi"), ("train_entropy", "teacher_entropy")):
            rows.append({"teacher": r.need("run", "teacher"), "student": "", "variant": r.need("run", "variant"),
                         "label": _label(r.run), "metric": metric, "seed": None,
                         "value": float(r.need("final", key)), "table1": False})
    for r in of_stage(records, "student"):
        rows.append({"teacher": r.need("run", "teacher"), "student": r.need("run", "student"),
                     "variant": r.need("run", "variant"), "label": _label(r.run), "metric": "student_acc",
                     "seed": r.run.get("seed"), "value": float(r.need("final", "test_acc")),
                     "table1": is_table1_cell(r) and r.run.get("variant") in (MLL, MCMI)})
    return pd.DataFrame(rows, columns=["teacher", "student", "variant", "label", "metric", "seed", "value", "table1"])


def _draw(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """One row per pair: bars of the teacher's CMI, its mean entropy and its KD student's accuracy (mean ±
    std over seeds) for each teacher; the MLL and MCMI students' values beside the paper's Table 1."""
    df = frame(records)
    students = df[df["metric"] == "student_acc"]
    if students.empty:
        raise ValueError("figure 7: no KD student runs among the metrics files")
    pairs = list(dict.fromkeys(zip(students["teacher"], students["student"])))
    plt, _, _ = plotting()
    notes = []
    with style():
        fig, axes = plt.subplots(len(pairs), len(PANELS), figsize=(4.2 * len(PANELS), 3.4 * len(pairs)),
                                 squeeze=False)
        for i, (teacher, student) in enumerate(pairs):
            mine = df[df["teacher"] == teacher]
            kinds = sorted(dict.fromkeys(mine["variant"]), key=lambda v: ORDER.index(v) if v in ORDER else len(ORDER))
            labels = [mine.loc[mine["variant"] == v, "label"].iloc[0] for v in kinds]
            for j, (metric, title) in enumerate(PANELS):
                ax = axes[i, j]
                part = mine[(mine["metric"] == metric) & ((mine["student"] == student) | (metric != "student_acc"))]
                stats = part.groupby("variant")["value"].agg(["mean", "std"]).reindex(kinds)
                spread = stats["std"].fillna(0.0) if metric == "student_acc" else None   # over seeds
                ax.bar(range(len(kinds)), stats["mean"], yerr=spread, capsize=3,
                       color=[COLOURS.get(v, "grey") for v in kinds])
                ax.set_xticks(range(len(kinds)), labels, rotation=25, ha="right", fontsize="small")
                ax.set_ylabel(title)
                if metric == "student_acc" and stats["mean"].notna().any():
                    low, high = stats["mean"].min(), stats["mean"].max()
                    ax.set_ylim(max(0.0, low - 1.5 * (high - low + 0.5)), min(100.0, high + 0.5 * (high - low + 0.5)))
                if j == 0:
                    ax.set_title(pair_label(teacher, student), loc="left")
            shared = students[(students["teacher"] == teacher) & (students["student"] == student) & students["table1"]]
            for variant in [v for v in (MLL, MCMI) if v in set(shared["variant"])]:
                notes.append(reproduction_note(
                    f"{pair_label(teacher, student)}, {variant} teacher: Table 1's KD cell (the same job)",
                    shared.loc[shared["variant"] == variant, "value"].tolist(),
                    paper_table1(paper_dir, teacher, student, "KD", variant)))
        common.footnote(fig, notes)
        common.save(fig, out_prefix, crop=True)


FIGURE = FigureSpec(
    7, "CMI vs entropy vs label smoothing: per pair, the training-set CMI and mean output entropy (T = 1) of the "
       "MLL teacher, the MCMI (λ*) teacher and the MLL teacher fine-tuned with the MCMI recipe but an entropy "
       "(CE − β·H, β = the pair's λ*) or label-smoothing (ε = 0.1) regulariser, and the accuracy of each one's "
       "KD student (mean ± std over seeds). The MLL and MCMI students are Table 1's KD cells (the same jobs), "
       "printed under the panels beside the paper's Table 1 numbers.",
    inputs=_inputs, draw=_draw, paper_dataset="cifar100", check=_check, path_numbers=("beta", "ls_eps", "ls_weight"),
    paper_files=("table1.csv",))
