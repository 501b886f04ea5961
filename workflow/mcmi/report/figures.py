"""The figures, in target order: Figure 1 (temperature sweep), Figure 2 (CMI/LL during training) and
Figure 4 (zero-shot students' confusion matrices), each one ``FigureSpec``.

matplotlib and seaborn are imported when a figure is drawn, not when the registry is read (the
workflow reads it to list targets).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mcmi.provenance import write_file_atomic
from mcmi.report.records import MetricsRecord, load_metrics, of_stage, tag_foreign_dataset
from mcmi.report.spec import ConfigView, Experiment, FigureSpec, Registry
from mcmi.pipeline.naming import grid_variant, split_pair, temperature_setting

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

LR_DECAY_RATIO = 0.5  # a drop to at most half of a constant lr counts as a step decay
DPI = 300


@functools.cache
def _plotting() -> tuple[Any, Any, list]:
    """pyplot (Agg backend), seaborn and the colour-blind palette, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns, sns.color_palette("colorblind")


@contextmanager
def _style() -> Iterator[None]:
    """Seaborn whitegrid in print-sized fonts, limited to one figure."""
    _, sns, _ = _plotting()
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.1):
        yield


def _grid(n_panels: int, ncols: int = 3, size: tuple[float, float] = (4.0, 3.0)) -> tuple[plt.Figure, list]:
    plt, _, _ = _plotting()
    ncols = min(ncols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def _save(fig: plt.Figure, out_prefix: str) -> None:
    """``{prefix}.pdf`` and ``{prefix}.png``, each written whole or not at all."""
    plt, _, _ = _plotting()
    fig.tight_layout()
    for ext, options in (("pdf", {}), ("png", {"dpi": DPI})):
        write_file_atomic(Path(f"{out_prefix}.{ext}"), lambda handle: fig.savefig(handle, format=ext, **options))
    plt.close(fig)


def _pair_label(teacher: str, student: str) -> str:
    return f"{teacher} → {student}"


# ------------------------------------------------------------------------ Figure 1: temperature sweep
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


def _draw_temperature(records: list[MetricsRecord], out_prefix: str) -> None:
    """Per pair: student accuracy (mean ± std over seeds, left axis) and teacher CMI (right axis) vs T."""
    students, teachers = _temperature_frames(records)
    if students.empty:
        raise ValueError("figure 1: no KD student runs with a temperature among the metrics files")
    _, _, palette = _plotting()
    pairs = list(dict.fromkeys(zip(students["teacher"], students["student"])))
    with _style():
        fig, axes = _grid(len(pairs))
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
            ax.set_title(_pair_label(teacher, student))
            ax.set_xlabel("Temperature T (teacher and student)")
            ax.set_ylabel("Student top-1 accuracy (%)")
            cmi_ax.set_ylabel("Teacher CMI at T (nats)")
            handles = ax.get_legend_handles_labels()[0] + cmi_ax.get_legend_handles_labels()[0]
            labels = ax.get_legend_handles_labels()[1] + cmi_ax.get_legend_handles_labels()[1]
            cmi_ax.legend(handles, labels, fontsize="small", loc="best", framealpha=0.9)
        _save(fig, out_prefix)


# ------------------------------------------------------------------- Figure 2: CMI/LL during training
def _training_inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """The MLL training runs of ``teachers`` (their per-epoch history)."""
    return [w.teacher_metrics(exp["dataset"], t, "MLL") for t in exp["teachers"]]


def _history_frame(record: MetricsRecord) -> pd.DataFrame:
    """Per-epoch train_cmi, train_ll and lr of one teacher run; ValueError when neither curve is present."""
    history = record.history
    if not history:
        raise ValueError(f"{record.path}: missing required key 'history'")
    frame = pd.DataFrame(history)
    for key in ("epoch", "train_cmi", "train_ll"):
        if key not in frame or frame[key].isna().all():
            raise ValueError(f"{record.path}: missing required key 'history[].{key}'")
    return frame.reindex(columns=["epoch", "train_cmi", "train_ll", "lr"])


def lr_decay_epochs(history: pd.DataFrame) -> list[int]:
    """Epochs of step decays: lr falls to at most LR_DECAY_RATIO of a plateau (the two epochs before are equal).

    A cosine schedule never has a plateau, so none of its epochs is marked.
    """
    lr = history.dropna(subset=["lr"]).sort_values("epoch")
    previous = lr["lr"].shift()
    steps = (lr["lr"] <= LR_DECAY_RATIO * previous) & (previous == lr["lr"].shift(2))
    return [int(e) for e in lr.loc[steps, "epoch"]]


def _draw_training_curves(records: list[MetricsRecord], out_prefix: str) -> None:
    """Per MLL teacher: train CMI (top) and train LL (bottom) per epoch, mean ± std over seeds, lr decays."""
    runs: dict[str, list[pd.DataFrame]] = defaultdict(list)
    for record in of_stage(records, "teacher"):
        runs[record.need("run", "teacher")].append(_history_frame(record))
    if not runs:
        raise ValueError("figure 2: no teacher runs among the metrics files")
    plt, _, palette = _plotting()
    rows = (("train_cmi", "Train CMI (nats)", palette[0]), ("train_ll", "Train LL (nats)", palette[1]))
    with _style():
        fig, axes = plt.subplots(2, len(runs), figsize=(4.5 * len(runs), 5.5), squeeze=False, sharex="col")
        for col, (teacher, frames) in enumerate(runs.items()):
            history = pd.concat(frames, ignore_index=True)
            decays = sorted({e for frame in frames for e in lr_decay_epochs(frame)})
            for row, (key, label, colour) in enumerate(rows):
                ax = axes[row, col]
                stats = history.groupby("epoch")[key].agg(["mean", "std"]).dropna(subset=["mean"])
                ax.plot(stats.index, stats["mean"], color=colour, label=f"mean over {len(frames)} run(s)")
                ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0.0),
                                stats["mean"] + stats["std"].fillna(0.0), color=colour, alpha=0.25, linewidth=0)
                for i, epoch in enumerate(decays):
                    ax.axvline(epoch, color="0.4", linestyle=":", label="lr decay" if i == 0 else None)
                ax.set_ylabel(label)
                ax.legend(fontsize="small")
            axes[0, col].set_title(f"{teacher} (MLL training)")
            axes[1, col].set_xlabel("Epoch")
        _save(fig, out_prefix)


# ------------------------------------------------------------------------ Figure 4: zero-shot confusion
def _zero_shot_inputs(w: ConfigView, exp: Experiment) -> list[str]:
    """Students trained without ``removed_classes`` ('zs'), with the MLL and the MCMI teacher (the one at
    ``lam`` when given, else the λ* one)."""
    mcmi = grid_variant(exp["lam"]) if "lam" in exp else "MCMI"
    return [w.student(exp["dataset"], *split_pair(p), m, v, "zs", s)
            for p in exp["pairs"] for m in exp["methods"] for v in ("MLL", mcmi) for s in w.seeds(exp)]


def row_normalise(confusion: np.ndarray) -> np.ndarray:
    """Each row (true class) divided by its count; empty rows stay zero."""
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros_like(confusion, dtype=float), where=totals > 0)


def _draw_confusion(records: list[MetricsRecord], out_prefix: str) -> None:
    """Per zero-shot student (counts summed over seeds): row-normalised confusion heatmap, removed classes marked."""
    groups: dict[tuple[str, ...], dict] = {}
    for record in records:
        if "confusion" not in record.final:
            continue
        confusion = np.asarray(record.final["confusion"], dtype=float)
        removed = sorted(int(c) for c in record.need("run", "removed_classes"))
        key = tuple(str(record.run.get(k) or "") for k in ("teacher", "student", "variant", "method"))
        group = groups.setdefault(key, {"confusion": np.zeros_like(confusion), "removed": removed, "runs": 0})
        if group["confusion"].shape != confusion.shape or group["removed"] != removed:
            raise ValueError(f"{record.path}: confusion shape or removed_classes differ from other runs of {key}")
        group["confusion"] += confusion
        group["runs"] += 1
    if not groups:
        raise ValueError("confusion figure: no metrics file has 'final.confusion'")
    from matplotlib.patches import Rectangle

    _, sns, _ = _plotting()
    with _style():
        fig, axes = _grid(len(groups), ncols=2, size=(5.0, 4.5))
        for ax, ((teacher, student, variant, method), group) in zip(axes, groups.items()):
            matrix = row_normalise(group["confusion"])
            n_classes = matrix.shape[0]
            labels = [f"{c}*" if c in group["removed"] else str(c) for c in range(n_classes)]
            sns.heatmap(matrix, ax=ax, vmin=0.0, vmax=1.0, cmap="cividis", square=True, xticklabels=labels,
                        yticklabels=labels, annot=n_classes <= 10, fmt=".2f", annot_kws={"fontsize": 6},
                        cbar_kws={"label": "Fraction of true class"})
            for c in group["removed"]:  # black under white dashes: visible on every colour of the map
                ax.add_patch(Rectangle((0, c), n_classes, 1, fill=False, edgecolor="black", linewidth=3))
                ax.add_patch(Rectangle((0, c), n_classes, 1, fill=False, edgecolor="white", linewidth=1.5,
                                       linestyle="--"))
            for tick in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
                if tick.get_text().endswith("*"):
                    tick.set_fontweight("bold")
            title = _pair_label(teacher, student) if teacher else student
            ax.set_title(f"{title} ({variant or 'no teacher'}, {method}; {group['runs']} run(s))", fontsize="small")
            ax.set_xlabel("Predicted class")
            ax.set_ylabel("True class (outlined * = removed)")
        fig.suptitle("Row-normalised confusion of zero-shot students; * = class removed from the student's "
                     "training set")
        _save(fig, out_prefix)


# --------------------------------------------------------------------------------------- the registry
FIGURES: Registry[FigureSpec] = Registry("figure", [
    FigureSpec(1, "Teacher CMI vs KD student accuracy over the temperature T.",
               inputs=_temperature_inputs, draw=_draw_temperature, paper_dataset="cifar100"),
    FigureSpec(2, "Train CMI and LL per epoch of MLL teacher training, with the lr decays.",
               inputs=_training_inputs, draw=_draw_training_curves, paper_dataset="cifar100"),
    FigureSpec(4, "Row-normalised confusion matrices of zero-shot students (classes removed from training).",
               inputs=_zero_shot_inputs, draw=_draw_confusion, paper_dataset="cifar10"),
], normalise=int)


def make_figure(n: int, metrics_paths: list[str | Path], out_prefix: str | Path) -> None:
    """Write Figure ``n`` (an id of ``FIGURES``) as ``{prefix}.pdf`` and ``{prefix}.png``; model names of runs
    on another dataset than the paper's carry the dataset, as in the tables ('resnet14 [digits]')."""
    spec = FIGURES[n]
    records = load_metrics(metrics_paths)
    if spec.paper_dataset:
        records = [tag_foreign_dataset(r, spec.paper_dataset) for r in records]
    spec.draw(records, str(out_prefix))
