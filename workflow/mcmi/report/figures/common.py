"""What every figure shares: matplotlib and seaborn imported on first use, one style, a grid of panels,
atomic .pdf/.png files, pair labels, and the note that names the Table 1 cell a figure reproduces.

matplotlib and seaborn are imported when a figure is drawn, not when the registry is read (the workflow
reads it to list targets).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmi.provenance import write_file_atomic

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

DPI = 300


@functools.cache
def plotting() -> tuple[Any, Any, list]:
    """pyplot (Agg backend), seaborn and the colour-blind palette, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns, sns.color_palette("colorblind")


@contextmanager
def style() -> Iterator[None]:
    """Seaborn whitegrid in print-sized fonts, limited to one figure."""
    _, sns, _ = plotting()
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.1):
        yield


def grid(n_panels: int, ncols: int = 3, size: tuple[float, float] = (4.0, 3.0)) -> tuple[plt.Figure, list]:
    """A figure of ``n_panels`` axes, ``ncols`` a row; unused cells hidden."""
    plt, _, _ = plotting()
    ncols = min(ncols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def save(fig: plt.Figure, out_prefix: str, tight_layout: bool = True, crop: bool = False) -> None:
    """``{prefix}.pdf`` and ``{prefix}.png``, each written whole or not at all; ``crop`` fits the page to
    everything drawn (a footnote below the axes included)."""
    plt, _, _ = plotting()
    if tight_layout:
        fig.tight_layout()
    extra = {"bbox_inches": "tight"} if crop else {}
    for ext, options in (("pdf", {}), ("png", {"dpi": DPI})):
        write_file_atomic(Path(f"{out_prefix}.{ext}"),
                          lambda handle: fig.savefig(handle, format=ext, **extra, **options))
    plt.close(fig)


def pair_label(teacher: str, student: str) -> str:
    return f"{teacher} → {student}"


def footnote(fig: plt.Figure, lines: list[str]) -> None:
    """Text under the panels (what a cell reproduces, with its values); wraps nothing, so keep lines short."""
    if lines:
        fig.text(0.01, -0.01, "\n".join(lines), ha="left", va="top", fontsize="small", wrap=False)


def kd_temperatures(record: Any) -> tuple[float, float]:
    """(teacher, student) temperature of a KD student's metrics: from its run block (settings 'T<t>',
    'Tt<t>_Ts<s>'), else from the KD hyperparameters it records (a 'full' student: Table 1's)."""
    run = record.run
    if run.get("temperature_teacher") is not None and run.get("temperature_student") is not None:
        return float(run["temperature_teacher"]), float(run["temperature_student"])
    if run.get("temperature") is not None:
        return float(run["temperature"]), float(run["temperature"])
    hparams = record.final.get("method_hparams") or {}
    if hparams.get("T") is None:
        raise ValueError(f"{record.path}: missing required key 'run.temperature' (or 'final.method_hparams.T')")
    common = float(hparams["T"])
    return (float(hparams.get("T_teacher") or common), float(hparams.get("T_student") or common))


def is_table1_cell(record: Any) -> bool:
    """Whether a KD student is Table 1's cell (setting 'full': no temperature in its run block)."""
    run = record.run
    return all(run.get(k) is None for k in ("temperature", "temperature_teacher", "temperature_student",
                                            "alpha_percent", "removed_classes"))


def paper_table1(paper_dir: str, teacher: str, student: str, method: str, variant: str) -> float | None:
    """The paper's Table 1 student accuracy of a cell (None when it has none: another pair, or a run on
    another dataset, whose model names carry the dataset tag)."""
    from mcmi.report.cells import read_paper

    table = read_paper(paper_dir, "table1.csv")
    rows = table[(table["teacher"] == teacher) & (table["student"] == student) & (table["method"] == method)
                 & (table["teacher_variant"] == variant)]
    values = [float(v) for v in rows["student_acc"] if str(v).strip()]
    return values[0] if values else None


def reproduction_note(what: str, ours: list[float], paper: float | None) -> str:
    """'<what>: ours 70.12 ± 0.20 (n = 5); paper (Table 1) 70.66' -- a cell a figure shares with Table 1."""
    import statistics

    if not ours:
        mine = "not run"
    elif len(ours) == 1:
        mine = f"{ours[0]:.2f} (n = 1)"
    else:
        mine = f"{statistics.fmean(ours):.2f} ± {statistics.stdev(ours):.2f} (n = {len(ours)})"
    theirs = f"{paper:.2f}" if paper is not None else "— (not the paper's dataset or pair)"
    return f"{what}: ours {mine}; paper (Table 1) {theirs}"
