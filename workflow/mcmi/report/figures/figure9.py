"""Figure 9 (appendix A.9): semi-supervised distillation. Teachers see only ``count`` class-balanced
labelled training images (``data.subsets.labelled_indices``, drawn with the run's seed, the same subset
for the MLL teacher and its MCMI fine-tune, nested over the counts of one seed); the student learns every
training image from the frozen teacher's soft labels (``SemiKD``, after Chen et al. 2020b). The student's
accuracy against the number of labels, MLL vs MCMI teacher, mean ± std over seeds.

Representation: the teacher of a labelled subset is a teacher *variant* of the same dataset,
``MLL_lab<count>s<seed>`` and ``MCMI_lam<λ>_lab<count>s<seed>`` (pipeline/naming.py), so the student, which
trains on all of that dataset's images, and its teacher live under one dataset name and the generic
teacher, mcmi_finetune and student rules make them. Teacher, student, λ and loss (τ = 1, distillation
only) are ours: the paper states none (docs/appendix_facts.md)."""

from __future__ import annotations

import pandas as pd

from mcmi.pipeline.config import ConfigError, known_num_classes
from mcmi.pipeline.naming import MCMI, MLL, grid_variant, labelled_variant
from mcmi.report.figures import common
from mcmi.report.figures.common import plotting, style
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import ConfigView, Experiment, FigureSpec

COLOURS = {MLL: "tab:blue", MCMI: "tab:red"}


def teacher_variants(exp: Experiment, count: int, seed: int) -> tuple[str, str]:
    """The MLL teacher of ``count`` labelled images drawn with ``seed``, and its MCMI fine-tune at ``lam``."""
    return labelled_variant(MLL, count, seed), labelled_variant(grid_variant(exp["lam"]), count, seed)


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Per number of labels and seed: both teachers (their test accuracy) and their students."""
    ds, teacher, paths = exp["dataset"], exp["teacher"], []
    for count in exp["labels"]:
        for seed in w.seeds(exp):
            for variant in teacher_variants(exp, count, seed):
                paths.append(w.teacher_metrics(ds, teacher, variant))
                paths.append(w.student(ds, teacher, exp["student"], exp["method"], variant, "full", seed))
    return paths


def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    if exp["method"] not in w.config["methods"]:
        raise ConfigError(f"{key}.method: {exp['method']!r} has no entry under 'methods'")
    dataset = w.config["datasets"][exp["dataset"]]
    classes = known_num_classes(dataset)
    for i, count in enumerate(exp["labels"]):
        if classes is not None and count < classes:
            raise ConfigError(f"{key}.labels[{i}]: {count} labelled images cannot hold every one of the "
                              f"{classes} classes of {exp['dataset']!r}")
        if dataset.get("max_train") and count > dataset["max_train"]:
            raise ConfigError(f"{key}.labels[{i}]: {count} is more than the {dataset['max_train']} training "
                              f"images of {exp['dataset']!r} (datasets.{exp['dataset']}.max_train)")


def frame(records: list[MetricsRecord]) -> pd.DataFrame:
    """One row per run: role (student or teacher), variant, number of labels, seed, test accuracy."""
    rows = []
    for r in records:
        if r.run.get("labeled_count") is None or r.stage not in ("student", "teacher", "mcmi"):
            continue
        rows.append({"role": "student" if r.stage == "student" else "teacher", "variant": r.need("run", "variant"),
                     "labels": int(r.run["labeled_count"]), "seed": r.run.get("labeled_seed"),
                     "acc": float(r.need("final", "test_acc")),
                     "model": r.run.get("student" if r.stage == "student" else "teacher"),
                     "method": r.run.get("method")})
    return pd.DataFrame(rows, columns=["role", "variant", "labels", "seed", "acc", "model", "method"])


def _draw(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """Two panels against the number of labelled images: the student's accuracy and its teacher's, MLL and
    MCMI, mean ± std over seeds."""
    df = frame(records)
    if df[df["role"] == "student"].empty:
        raise ValueError("figure 9: no student of a labelled-subset teacher among the metrics files")
    plt, _, _ = plotting()
    counts = sorted(df["labels"].unique())
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4), squeeze=False)
        for ax, role in zip(axes[0], ("student", "teacher")):
            part = df[df["role"] == role]
            for variant in [v for v in (MLL, MCMI) if v in set(part["variant"])]:
                stats = part[part["variant"] == variant].groupby("labels")["acc"].agg(["mean", "std", "count"])
                ax.errorbar([counts.index(c) for c in stats.index], stats["mean"], yerr=stats["std"].fillna(0.0),
                            marker="o", capsize=3, color=COLOURS[variant], label=f"{variant} teacher")
            models = ", ".join(sorted({str(m) for m in part["model"]}))
            method = ", ".join(sorted({str(m) for m in part["method"] if m})) if role == "student" else ""
            ax.set_title(f"({'a' if role == 'student' else 'b'}) {role}: {models}" + (f" [{method}]" if method else ""),
                         loc="left", fontsize="small")
            ax.set_xticks(range(len(counts)), [f"{c:,}" for c in counts])
            ax.set_xlabel("Labelled training images (class-balanced)")
            ax.set_ylabel(f"{role.capitalize()} top-1 accuracy (%)")
        axes[0, 0].legend(fontsize="small", loc="lower right")
        seeds = sorted({int(s) for s in df["seed"].dropna()})
        common.footnote(fig, [f"Mean ± std over {len(seeds)} seed(s); each seed draws its own labelled subset, the same "
                              "for the MLL teacher and its MCMI fine-tune.",
                              "The student sees every training image, with the teacher's soft labels only."])
        common.save(fig, out_prefix, crop=True)


FIGURE = FigureSpec(
    9, "Semi-supervised distillation (CIFAR-10): the teachers are trained (MLL) and MCMI-fine-tuned on a "
       "class-balanced labelled subset of 1/2/4/8 % of the training images; the student (ResNet18) learns every "
       "image from the teacher's soft labels. Student and teacher accuracy against the number of labels, mean "
       "± std over 3 seeds (each its own subset). Teacher, λ and the loss (τ = 1) are ours: the paper states none.",
    inputs=_inputs, draw=_draw, paper_dataset="cifar10", check=_check, path_numbers=("lam",))
