"""The figures, in target order: one declaration (``FIGURE``) per module (Eigen-CAM's module declares
Figures 3 and 10-13, ``FIGURES``, which share one experiment), and how a figure is made."""

from __future__ import annotations

from pathlib import Path

from mcmi.report.figures import (eigen_cam, figure1, figure2, figure4, figure5, figure6, figure7, figure8,
                                 figure9)
from mcmi.report.figures.figure2 import lr_decay_epochs
from mcmi.report.figures.figure4 import row_normalise
from mcmi.report.records import load_metrics, tag_foreign_dataset
from mcmi.report.spec import FigureSpec, Registry

PAPER_DIR = Path(__file__).resolve().parents[4] / "config" / "paper"   # this repository's published numbers

FIGURES: Registry[FigureSpec] = Registry(
    "figure", sorted([figure1.FIGURE, figure2.FIGURE, figure4.FIGURE, figure5.FIGURE, figure6.FIGURE, figure7.FIGURE, figure8.FIGURE,
            figure9.FIGURE, *eigen_cam.FIGURES], key=lambda spec: spec.id),
    normalise=int)


def make_figure(n: int, metrics_paths: list[str | Path], out_prefix: str | Path,
                paper_dir: str | Path = PAPER_DIR) -> None:
    """Write Figure ``n`` (an id of ``FIGURES``) as ``{prefix}.pdf`` and ``{prefix}.png``; model names of runs
    on another dataset than the paper's carry the dataset, as in the tables ('resnet14 [digits]')."""
    spec = FIGURES[n]
    records = load_metrics(metrics_paths)
    if spec.paper_dataset:
        records = [tag_foreign_dataset(r, spec.paper_dataset) for r in records]
    spec.draw(records, str(out_prefix), str(paper_dir))


__all__ = ["FIGURES", "PAPER_DIR", "lr_decay_epochs", "make_figure", "row_normalise"]
