"""Figure 4: row-normalised confusion matrices of zero-shot students (classes removed from training)."""

from __future__ import annotations

import numpy as np

from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.naming import grid_variant, split_pair
from mcmi.report.figures import common
from mcmi.report.figures.common import grid, pair_label, plotting, style
from mcmi.report.records import MetricsRecord
from mcmi.report.spec import ConfigView, Experiment, FigureSpec


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


def _draw_confusion(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
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

    _, sns, _ = plotting()
    with style():
        fig, axes = grid(len(groups), ncols=2, size=(5.0, 4.5))
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
            title = pair_label(teacher, student) if teacher else student
            ax.set_title(f"{title} ({variant or 'no teacher'}, {method}; {group['runs']} run(s))", fontsize="small")
            ax.set_xlabel("Predicted class")
            ax.set_ylabel("True class (outlined * = removed)")
        fig.suptitle("Row-normalised confusion of zero-shot students; * = class removed from the student's "
                     "training set")
        common.save(fig, out_prefix)



def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    """The removed classes are distinct, exist in the dataset and leave the student some training data."""
    from mcmi.pipeline.config import known_num_classes

    removed = exp["removed_classes"]
    if len(set(removed)) != len(removed):
        raise ConfigError(f"{key}.removed_classes: repeated class")
    classes = known_num_classes(w.config["datasets"][exp["dataset"]])
    if classes is None:
        return   # an image folder not yet on disk: the job checks when it loads the data
    out_of_range = [c for c in removed if c >= classes]
    if out_of_range:
        raise ConfigError(f"{key}.removed_classes: {out_of_range} out of range for "
                          f"{exp['dataset']!r}, which has classes 0..{classes - 1}")
    if len(set(removed)) >= classes:
        raise ConfigError(f"{key}.removed_classes: removes every class of {exp['dataset']!r}; "
                          f"the student would have no training data")


FIGURE = FigureSpec(4, "Row-normalised confusion matrices of zero-shot students (classes removed from training).",
                    inputs=_zero_shot_inputs, draw=_draw_confusion, paper_dataset="cifar10", check=_check,
                    path_numbers=("lam",))
