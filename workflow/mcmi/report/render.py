"""Writing a tidy table as CSV, readable markdown, booktabs LaTeX and an HTML page; cell formatting, labels,
the summary that opens each table and the order of its sections (ours first, the paper's unrun ones last)."""

from __future__ import annotations

import html as html_lib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mcmi.provenance import write_text_atomic
from mcmi.report.cells import NO_PAPER, NOT_PAIRED, NOT_RUN, OK, Comparison, Signature, Spread, Verdict, verdict

DASH = "—"
PARTS = ("ours", "paper", "Δ")
METRIC_LABELS = {
    "student_acc": "Student Acc (%)", "student_top1": "Top-1 (%)", "student_top5": "Top-5 (%)",
    "teacher_acc": "Teacher Acc (%)", "teacher_top1": "Teacher Top-1 (%)", "teacher_top5": "Teacher Top-5 (%)",
    "teacher_ll": "Teacher LL (nats)", "teacher_cmi": "Teacher CMI (nats)", "lambda_star": "λ*",
    "acc": "Acc (%)", "pdist": "Pdist", "pdist_mean": "Pdist per sample (ours only)",
    "class_cmi": "CMI (nats)",
}
NOT_RUN_HEADING = "Paper cells not run"


@dataclass
class Layout:
    """Cells labelled with ``_section``, ``_row`` and ``_col``, plus column order and notes."""

    frame: pd.DataFrame
    row_header: str
    col_order: list[str]
    notes: dict[str, list[str]] = field(default_factory=dict)          # lines under a section, by its title
    header_lines: list[str] = field(default_factory=list)              # bullets under the caption
    summary: list[str] = field(default_factory=list)                   # the table's first lines (verdicts)
    intro: dict[str, list[str]] = field(default_factory=dict)          # lines above a section's table
    closing: tuple[str, list[str]] | None = None                       # a last section: heading, bullet lines


def pair_label(teacher: str, student: str) -> str:
    """'teacher → student', or the one that is given."""
    return f"{teacher} → {student}" if teacher and student else teacher or student


def numeric_order(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``frame`` sorted (stably) by the numbers written in a text column."""
    return frame.sort_values(column, key=lambda c: pd.to_numeric(c, errors="coerce"), kind="stable")


def split_sections(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Section titles in order: those holding at least one cell of ours, then those that are all paper.
    Where the frame has an ``_anchor`` column, only its True rows count (rows repeated in several
    sections, such as a teacher shared by several pairs, do not make each of them ours)."""
    counts = frame["_anchor"].astype(bool) if "_anchor" in frame else pd.Series(True, index=frame.index)
    ours = {s for s, n, c in zip(frame["_section"], frame["ours_n"], counts) if n > 0 and c}
    titles = list(dict.fromkeys(frame["_section"]))
    return [t for t in titles if t in ours], [t for t in titles if t not in ours]


# ------------------------------------------------------------------------------------ cell formatting
def _decimals(metric: str) -> int:
    return 4 if metric.endswith(("cmi", "ll", "pdist_mean")) else 2


def _number(value: float, metric: str, signed: bool = False) -> str:
    return f"{value:{'+' if signed else ''}.{_decimals(metric)}f}"


def is_difference(row: pd.Series) -> bool:
    """Whether a tidy row is a paired difference (e.g. MCMI − MLL) rather than a cell of one variant."""
    value = row.get("difference", False)
    return bool(pd.notna(value) and value)


def cell_parts(row: pd.Series) -> tuple[str, str, str]:
    """The three displayed parts of a cell: ours 'mean ± std (n)' or 'not run', paper or '—', and Δ.
    A paired difference adds its 95 % t-interval: 'mean ± std (n) [low, high]'."""
    metric = row["metric"]
    signed = is_difference(row)
    if row["ours_n"] == 0:
        ours = NOT_PAIRED if row["status"] == NOT_PAIRED else "not run"
    else:
        ours = _number(row["ours_mean"], metric, signed)
        if pd.notna(row["ours_std"]):
            ours += f" ± {_number(row['ours_std'], metric)}"
        ours += f" ({row['ours_n']})"
        if signed and pd.notna(row.get("ours_ci_low")):
            ours += f" [{_number(row['ours_ci_low'], metric, True)}, {_number(row['ours_ci_high'], metric, True)}]"
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


# ------------------------------------------------------------------------------------------ summary
def _interval(spread: Spread, metric: str, unit: str) -> str:
    mean = _number(spread.mean, metric, signed=True)
    n = f"n = {spread.n} {unit}{'s' if spread.n != 1 else ''}"
    if spread.n < 2:
        return f"{mean} ({n}, no interval)"
    return f"{mean} (95 % CI {_number(spread.low, metric, True)} to {_number(spread.high, metric, True)}, {n})"


def verdict_line(v: Verdict, what: str) -> str:
    """One summary line: in how many cells ours favours the treated side, the mean paired difference with
    its t-interval over every paired seed, and the paper's over the same cells (and over all its cells
    when those are more)."""
    c = v.comparison
    if v.cells == 0:
        ours = "no cell of ours has both sides"
    else:
        ours = (f"{c.treated_name} better in {v.better} of {v.cells} cell{'s' if v.cells != 1 else ''} of ours, "
                f"mean paired difference {_interval(v.ours, v.metric, 'pair')}")
    parts = [ours]
    if v.paper_same_cells.n:
        parts.append(f"paper on the same cells: better in {v.paper_better_same} of {v.paper_same_cells.n}, "
                     f"mean {_interval(v.paper_same_cells, v.metric, 'cell')}")
    elif v.cells:
        parts.append("the paper has none of these cells")
    if v.paper_all.n and v.paper_all.n != v.paper_same_cells.n:
        parts.append(f"paper on all its cells: better in {v.paper_better_all} of {v.paper_all.n}, "
                     f"mean {_interval(v.paper_all, v.metric, 'cell')}")
    return f"**{c.label}** ({what}): " + "; ".join(parts) + "."


def summary_lines(df: pd.DataFrame, items: list[tuple[Comparison, str]], context: str = "") -> list[str]:
    """A verdict line per (comparison, metric) that has difference rows in ``df``; ``context`` (e.g. a
    preset) is added to each line's head. Comparisons without a cell of ours are left out, unless no
    comparison has one (then the lines give the paper's)."""
    verdicts = []
    for comparison, metric in items:
        rows = df[(df[comparison.by] == comparison.label) & (df["metric"] == metric)] if comparison.by in df else df[:0]
        if len(rows):
            verdicts.append((verdict(df, comparison, metric), METRIC_LABELS.get(metric, metric)
                             + (f", {context}" if context else "")))
    ran = [(v, what) for v, what in verdicts if v.cells]      # without a run of ours: the paper's alone
    return [verdict_line(v, what) for v, what in (ran or verdicts)]


def signature_line(sig: Signature) -> str | None:
    """The paper's signature for one teacher in our runs (None when we did not measure both teachers),
    with the paper's beside it; a visible note when ours lacks it."""
    c = sig.comparison

    def values(cmi: tuple[float, float], ll: tuple[float, float]) -> str:
        return (f"CMI {_number(cmi[0], 'cmi')} vs {_number(cmi[1], 'cmi')}, "
                f"LL {_number(ll[0], 'll')} vs {_number(ll[1], 'll')} ({c.treated_name} vs {c.control_name} teacher)")

    if sig.holds is None:
        return None
    paper = "" if sig.paper_holds is None else f" Paper: {values(sig.paper_cmi, sig.paper_ll)}."
    if sig.holds:
        return (f"Signature (the {c.treated_name} teacher's training CMI above the {c.control_name} teacher's, its LL "
                f"below): holds in our runs: {values(sig.cmi, sig.ll)}.{paper}")
    if not sig.cmi_above:
        why = (f"its CMI is not above the {c.control_name} teacher's, so its students do not test the paper's mechanism "
               f"(a teacher with a higher CMI)")
        if not sig.ll_below:
            why += (f". Its LL is above the {c.control_name} teacher's: the fine-tuning went on fitting the training "
                    f"set, which lowers the CMI (the {c.control_name} teacher had not converged)")
    else:
        why = f"its CMI is above the {c.control_name} teacher's, as in the paper, but its LL is not below"
    return (f"**Note: the paper's signature does not hold here**: {values(sig.cmi, sig.ll)}; {why}.{paper}")


def signature_summary(sigs: list[Signature]) -> list[str]:
    """One line: for how many of our teacher pairs the paper's signature holds, naming those where not."""
    ours = [sig for sig in sigs if sig.holds is not None]
    if not ours:
        return []
    c = ours[0].comparison
    failing = [sig.teacher for sig in ours if not sig.holds]
    line = (f"**Signature** (the paper's pattern: the {c.treated_name} teacher's training CMI above the "
            f"{c.control_name} teacher's, its LL below): holds for {len(ours) - len(failing)} of {len(ours)} teacher"
            f"{'s' if len(ours) != 1 else ''} of ours")
    return [line + (f"; **not for {', '.join(failing)}** (see the note in its section)." if failing else ".")]


# ------------------------------------------------------------------------------------------ markdown
def _legend(df: pd.DataFrame, layout: Layout, cites: str) -> list[str]:
    differences = [
        "- **'A − B' rows and columns** (e.g. MCMI − MLL) are paired differences: our runs of A and B with the "
        "same pair, method, setting and seed (students of one seed share initialisation and data order), over "
        "the seeds both have: mean ± std (number of pairs) [95 % t-interval]; one pair gives the difference "
        "alone. The paper's difference is that of its two cells.",
    ] if "difference" in df and df["difference"].astype(bool).any() else []
    return [
        "- **ours** = mean ± sample std (ddof = 1) over our runs of the cell, with the number of runs in "
        "parentheses (no std when n = 1), computed from the metrics JSON files given to the table.",
        *differences,
        f"- **paper** = the published number (config/paper/{cites}); **Δ** = ours − paper.",
        f"- **not run** = a paper cell for which we have no run (kept, never filled); **{DASH}** = a cell of ours "
        f"with no published counterpart (e.g. a demo pair); an empty cell has neither.",
        f"- Cells: {int((df['status'] == OK).sum())} matched, {int((df['status'] == NOT_RUN).sum())} not run, "
        f"{int((df['status'] == NO_PAPER).sum())} without paper value.",
        *[f"- {line}" for line in layout.header_lines],
    ]


def _markdown_section(layout: Layout, title: str, level: str) -> list[str]:
    block = layout.frame[layout.frame["_section"] == title]
    cols, rows, grid = _section_grid(block, layout.col_order)
    header = [layout.row_header, *[f"{col} {part}" for col in cols for part in PARTS]]
    lines = [f"{level} {title}", ""]
    for line in layout.intro.get(title, []):
        lines += [line, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join([row, *values]) + " |" for row, values in zip(rows, grid)]
    return lines + ["", *layout.notes.get(title, []), ""]


def markdown(df: pd.DataFrame, layout: Layout, title: str, caption: str, cites: str) -> str:
    """The wide, readable table: the summary, a legend, our sections, then the paper's unrun sections."""
    lines = [f"# {title}", "", caption, ""]
    if layout.summary:
        lines += [*[f"- {line}" for line in layout.summary], ""]
    lines += [*_legend(df, layout, cites), ""]
    ours, paper_only = split_sections(layout.frame)
    for section in ours:
        lines += _markdown_section(layout, section, "##")
    if paper_only:
        lines += [f"## {NOT_RUN_HEADING} ({len(paper_only)} section{'s' if len(paper_only) != 1 else ''})", "",
                  "Sections of the paper's table of which we ran no cell, for reference.", ""]
        for section in paper_only:
            lines += _markdown_section(layout, section, "###")
    text = "\n".join(lines).rstrip() + "\n"
    if layout.closing:
        heading, bullets = layout.closing
        text += "\n".join(["", f"## {heading}", "", *bullets]) + "\n"
    return text


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


def _tex_text(line: str) -> str:
    """A summary or note line: markdown bold (**x**) as \\textbf, the rest escaped."""
    parts = line.split("**")
    return "".join(rf"\textbf{{{tex_escape(p)}}}" if i % 2 else tex_escape(p) for i, p in enumerate(parts))


def _latex_section(layout: Layout, title: str) -> list[str]:
    block = layout.frame[layout.frame["_section"] == title]
    cols, rows, grid = _section_grid(block, layout.col_order)
    spec = "l" + "rrr" * len(cols)
    groups = " & ".join(rf"\multicolumn{{3}}{{c}}{{{tex_escape(c)}}}" for c in cols)
    rules = " ".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(cols)))
    lines = [rf"\par\medskip\textbf{{{tex_escape(title)}}}\par\smallskip"]
    lines += [rf"{_tex_text(line)}\par\smallskip" for line in layout.intro.get(title, [])]
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", rf" & {groups} \\", rules,
              tex_escape(layout.row_header) + " & " + " & ".join(tex_escape(p) for _ in cols for p in PARTS) + r" \\",
              r"\midrule"]
    lines += [" & ".join(tex_escape(x) for x in [row, *values]) + r" \\" for row, values in zip(rows, grid)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines + [rf"\par\smallskip {_tex_text(note)}" for note in layout.notes.get(title, [])]


def latex(layout: Layout, title: str, caption: str) -> str:
    """A booktabs table environment: the summary, one tabular per section (ours first, then the paper's)."""
    lines = [TEX_HEADER, r"\begin{table}[t]", r"\centering",
             r"\scriptsize", rf"\caption{{{tex_escape(title)}. {tex_escape(caption)}}}"]
    if layout.summary:
        lines += [r"\begin{itemize}", *[rf"\item {_tex_text(line)}" for line in layout.summary], r"\end{itemize}"]
    ours, paper_only = split_sections(layout.frame)
    for section in ours:
        lines += _latex_section(layout, section)
    if paper_only:
        lines.append(rf"\par\medskip\textbf{{{tex_escape(NOT_RUN_HEADING)} ({len(paper_only)})}}\par")
        for section in paper_only:
            lines += _latex_section(layout, section)
    lines.append(r"\end{table}")
    if layout.closing:                                 # as comments: the table environment is unchanged
        heading, bullets = layout.closing
        lines += [f"% {heading}:", *[f"% {line[2:]}" for line in bullets]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- HTML
HTML_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; }
th.group { text-align: center; border-bottom: 1px solid #888; }
td.diff { background: #f4f7fb; }
td.notrun { color: #999; }
.summary { background: #fffbe6; border: 1px solid #e6d98c; padding: 0.5em 1em; }
.note { color: #8a1f11; }
details summary { cursor: pointer; font-weight: bold; margin: 1em 0; }
"""


def _html_text(line: str) -> str:
    """A summary or note line: markdown bold (**x**) as <strong>, code (`x`) as <code>, the rest escaped."""
    def spans(text: str) -> str:
        pieces = text.split("`")
        if len(pieces) % 2 == 0:                  # an unpaired backtick: plain text
            return html_lib.escape(text)
        return "".join(f"<code>{html_lib.escape(p)}</code>" if i % 2 else html_lib.escape(p)
                       for i, p in enumerate(pieces))

    return "".join(f"<strong>{spans(p)}</strong>" if i % 2 else spans(p) for i, p in enumerate(line.split("**")))


def _html_section(layout: Layout, title: str, level: str) -> list[str]:
    block = layout.frame[layout.frame["_section"] == title]
    cols, rows, grid = _section_grid(block, layout.col_order)
    esc = html_lib.escape
    lines = [f"<{level}>{esc(title)}</{level}>"]
    lines += [f'<p class="note">{_html_text(line)}</p>' for line in layout.intro.get(title, [])]
    lines += ["<table>", "<thead>",
              f'<tr><th rowspan="2">{esc(layout.row_header)}</th>'
              + "".join(f'<th class="group" colspan="3">{esc(c)}</th>' for c in cols) + "</tr>",
              "<tr>" + "".join(f"<th>{esc(p)}</th>" for _ in cols for p in PARTS) + "</tr>", "</thead>", "<tbody>"]
    for row, values in zip(rows, grid):
        cells = []
        for i, value in enumerate(values):
            css = "diff" if " − " in cols[i // 3] or " − " in row else ""
            css += " notrun" if value in ("not run", NOT_PAIRED) else ""
            cells.append(f'<td class="{css.strip()}">{esc(value)}</td>' if css.strip() else f"<td>{esc(value)}</td>")
        lines.append(f"<tr><th>{esc(row)}</th>{''.join(cells)}</tr>")
    lines += ["</tbody>", "</table>"]
    return lines + [f"<p>{_html_text(note)}</p>" for note in layout.notes.get(title, [])]


def html_page(df: pd.DataFrame, layout: Layout, title: str, caption: str, cites: str) -> str:
    """The table as one self-contained HTML page (what the Snakemake report shows): title, caption,
    summary, legend, our sections, and the paper's unrun sections folded under one heading."""
    esc = html_lib.escape
    lines = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>{HTML_STYLE}</style>", "</head>", "<body>",
             f"<h1>{esc(title)}</h1>", f'<p class="caption">{esc(caption)}</p>']
    if layout.summary:
        lines += ['<ul class="summary">', *[f"<li>{_html_text(line)}</li>" for line in layout.summary], "</ul>"]
    lines += ["<ul>", *[f"<li>{_html_text(line[2:])}</li>" for line in _legend(df, layout, cites)], "</ul>"]
    ours, paper_only = split_sections(layout.frame)
    for section in ours:
        lines += _html_section(layout, section, "h2")
    if paper_only:
        lines += [f"<details><summary>{esc(NOT_RUN_HEADING)} ({len(paper_only)} sections)</summary>"]
        for section in paper_only:
            lines += _html_section(layout, section, "h3")
        lines.append("</details>")
    if layout.closing:
        heading, bullets = layout.closing
        lines += [f"<h2>{esc(heading)}</h2>", "<ul>", *[f"<li>{_html_text(line[2:])}</li>" for line in bullets], "</ul>"]
    lines += ["</body>", "</html>"]
    return "\n".join(lines) + "\n"


TABLE_EXTENSIONS = ("md", "tex", "csv", "html")


def write_table(df: pd.DataFrame, layout: Layout, out_prefix: str | Path, title: str, caption: str,
                cites: str) -> None:
    """Write ``{prefix}.csv`` (tidy: the cells only), ``{prefix}.md`` (wide, readable), ``{prefix}.tex``
    (booktabs) and ``{prefix}.html`` (a page for the Snakemake report)."""
    write_text_atomic(f"{out_prefix}.csv", df.to_csv(index=False))
    write_text_atomic(f"{out_prefix}.md", markdown(df, layout, title, caption, cites))
    write_text_atomic(f"{out_prefix}.tex", latex(layout, title, caption))
    write_text_atomic(f"{out_prefix}.html", html_page(df, layout, title, caption, cites))

