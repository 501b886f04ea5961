"""Writing a tidy table as CSV, readable markdown and booktabs LaTeX; cell formatting and labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mcmi.provenance import write_text_atomic
from mcmi.report.cells import GAIN, NO_PAPER, NOT_RUN, OK

DASH = "—"
PARTS = ("ours", "paper", "Δ")
METRIC_LABELS = {
    "student_acc": "Student Acc (%)", "student_top1": "Top-1 (%)", "student_top5": "Top-5 (%)",
    "teacher_acc": "Teacher Acc (%)", "teacher_top1": "Teacher Top-1 (%)", "teacher_top5": "Teacher Top-5 (%)",
    "teacher_ll": "Teacher LL (nats)", "teacher_cmi": "Teacher CMI (nats)", "lambda_star": "λ*",
    "acc": "Acc (%)", "pdist": "Pdist", "pdist_mean": "Pdist per sample (ours only)",
}


@dataclass
class Layout:
    """Cells labelled with ``_section``, ``_row`` and ``_col``, plus column order and notes."""

    frame: pd.DataFrame
    row_header: str
    col_order: list[str]
    notes: dict[str, list[str]] = field(default_factory=dict)          # lines under a section, by its title
    header_lines: list[str] = field(default_factory=list)              # bullets under the caption


def pair_label(teacher: str, student: str) -> str:
    """'teacher → student', or the one that is given."""
    return f"{teacher} → {student}" if teacher and student else teacher or student


def numeric_order(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``frame`` sorted (stably) by the numbers written in a text column."""
    return frame.sort_values(column, key=lambda c: pd.to_numeric(c, errors="coerce"), kind="stable")


# ------------------------------------------------------------------------------------ cell formatting
def _decimals(metric: str) -> int:
    return 4 if metric.endswith(("cmi", "ll", "pdist_mean")) else 2


def _number(value: float, metric: str, signed: bool = False) -> str:
    return f"{value:{'+' if signed else ''}.{_decimals(metric)}f}"


def cell_parts(row: pd.Series) -> tuple[str, str, str]:
    """The three displayed parts of a cell: ours 'mean ± std (n)' or 'not run', paper or '—', and Δ."""
    metric = row["metric"]
    signed = row.get("variant") == GAIN
    if row["ours_n"] == 0:
        ours = "not run"
    else:
        ours = _number(row["ours_mean"], metric, signed)
        if pd.notna(row["ours_std"]):
            ours += f" ± {_number(row['ours_std'], metric)}"
        ours += f" ({row['ours_n']})"
    if pd.isna(row["paper"]):
        paper = DASH
    else:
        paper = _number(row["paper"], metric, signed)
        if pd.notna(row.get("paper_std")):
            paper += f" ± {_number(row['paper_std'], metric)}"
    delta = _number(row["diff"], metric, signed=True) if pd.notna(row["diff"]) else ""
    return ours, paper, delta


def _section_grid(block: pd.DataFrame, col_order: list[str]) -> tuple[list[str], list[str], list[list[str]]]:
    """Columns, row labels and a row-major grid of strings (three parts per column) for one section."""
    cols = sorted(dict.fromkeys(block["_col"]), key=lambda c: col_order.index(c) if c in col_order else len(col_order))
    rows = list(dict.fromkeys(block["_row"]))
    cells = {(r["_row"], r["_col"]): cell_parts(r) for _, r in block.iterrows()}
    grid = [[part for col in cols for part in cells.get((row, col), ("", "", ""))] for row in rows]
    return cols, rows, grid


# ------------------------------------------------------------------------------------------ markdown
def markdown(df: pd.DataFrame, layout: Layout, title: str, caption: str, cites: str) -> str:
    """The wide, readable table: a legend, then one markdown table per section."""
    lines = [
        f"# {title}", "", caption, "",
        f"- **ours** = mean ± sample std (ddof = 1) over our runs of the cell, with the number of runs in "
        f"parentheses (no std when n = 1), computed from the metrics JSON files given to the table.",
        f"- **paper** = the published number (config/paper/{cites}); **Δ** = ours − paper.",
        f"- **not run** = a paper cell for which we have no run (kept, never filled); **{DASH}** = a cell of ours "
        f"with no published counterpart (e.g. a demo pair); an empty cell has neither.",
        f"- Cells: {int((df['status'] == OK).sum())} matched, {int((df['status'] == NOT_RUN).sum())} not run, "
        f"{int((df['status'] == NO_PAPER).sum())} without paper value.",
        *[f"- {line}" for line in layout.header_lines], "",
    ]
    for section, block in layout.frame.groupby("_section", sort=False):
        cols, rows, grid = _section_grid(block, layout.col_order)
        header = [layout.row_header, *[f"{col} {part}" for col in cols for part in PARTS]]
        lines += [f"## {section}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join([row, *values]) + " |" for row, values in zip(rows, grid)]
        lines += ["", *[f"{note}" for note in layout.notes.get(section, [])], ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------- LaTeX
TEX_REPLACEMENTS = {
    "\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
    "±": r"$\pm$", "Δ": r"$\Delta$", "→": r"$\to$", "λ": r"$\lambda$", "μ": r"$\mu$", "α": r"$\alpha$",
    "≥": r"$\geq$", "−": "--", "—": "---", "*": r"$^*$",
}
# The first line of every .tex file; it names the module the tables came from before mcmi.report, and is
# kept as it was so that regenerated tables stay byte-identical to earlier ones.
TEX_HEADER = r"% Generated by mcmi.tables; requires \usepackage{booktabs}."


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and map the Unicode symbols used in labels to math."""
    return "".join(TEX_REPLACEMENTS.get(ch, ch) for ch in str(text))


def latex(layout: Layout, title: str, caption: str) -> str:
    """A booktabs table environment with one tabular per section."""
    lines = [TEX_HEADER, r"\begin{table}[t]", r"\centering",
             r"\scriptsize", rf"\caption{{{tex_escape(title)}. {tex_escape(caption)}}}"]
    for section, block in layout.frame.groupby("_section", sort=False):
        cols, rows, grid = _section_grid(block, layout.col_order)
        spec = "l" + "rrr" * len(cols)
        groups = " & ".join(rf"\multicolumn{{3}}{{c}}{{{tex_escape(c)}}}" for c in cols)
        rules = " ".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(cols)))
        lines += [rf"\par\medskip\textbf{{{tex_escape(section)}}}\par\smallskip", rf"\begin{{tabular}}{{{spec}}}",
                  r"\toprule", rf" & {groups} \\", rules,
                  tex_escape(layout.row_header) + " & " + " & ".join(tex_escape(p) for _ in cols for p in PARTS)
                  + r" \\", r"\midrule"]
        lines += [" & ".join(tex_escape(x) for x in [row, *values]) + r" \\" for row, values in zip(rows, grid)]
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [rf"\par\smallskip {tex_escape(note)}" for note in layout.notes.get(section, [])]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, layout: Layout, out_prefix: str | Path, title: str, caption: str,
                cites: str) -> None:
    """Write ``{prefix}.csv`` (tidy), ``{prefix}.md`` (wide, readable) and ``{prefix}.tex`` (booktabs)."""
    write_text_atomic(f"{out_prefix}.csv", df.to_csv(index=False))
    write_text_atomic(f"{out_prefix}.md", markdown(df, layout, title, caption, cites))
    write_text_atomic(f"{out_prefix}.tex", latex(layout, title, caption))
