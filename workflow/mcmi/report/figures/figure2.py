"""Figure 2: training-set CMI and LL of MLL teachers per epoch, with the lr decays."""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from mcmi.report.figures import common
from mcmi.report.figures.common import plotting, style
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import ConfigView, Experiment, FigureSpec

LR_DECAY_RATIO = 0.5  # a drop to at most half of a constant lr counts as a step decay


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


def _draw_training_curves(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """Per MLL teacher: train CMI (top) and train LL (bottom) per epoch, mean ± std over seeds, lr decays."""
    runs: dict[str, list[pd.DataFrame]] = defaultdict(list)
    for record in of_stage(records, "teacher"):
        runs[record.need("run", "teacher")].append(_history_frame(record))
    if not runs:
        raise ValueError("figure 2: no teacher runs among the metrics files")
    plt, _, palette = plotting()
    rows = (("train_cmi", "Train CMI (nats)", palette[0]), ("train_ll", "Train LL (nats)", palette[1]))
    with style():
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
        common.save(fig, out_prefix)



FIGURE = FigureSpec(2, "Train CMI and LL per epoch of MLL teacher training, with the lr decays.",
                    inputs=_training_inputs, draw=_draw_training_curves, paper_dataset="cifar100")
