"""The tidy frame every table is built in, with the published numbers beside ours.

One row per cell with its keys, the metric, the paper's value, ``ours_mean``/``ours_std``/``ours_n``
over the runs of that cell, ``diff = ours_mean - paper`` and a ``status``: ``ok`` (both), ``not run``
(paper cell we have no run for, never filled) or ``no paper value`` (our cell without a published
counterpart, shown as "—"). Matching to the paper is by the cell keys (teacher, student, method,
variant, alpha, lambda, ...), and only for runs on the paper's dataset of that table: a run on another
dataset (the demo's digits) keeps its model names tagged with the dataset, so it can never sit beside
a published number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

OK, NOT_RUN, NO_PAPER = "ok", "not run", "no paper value"
GAIN = "MCMI − MLL"
VALUE_COLUMNS = ["paper", "ours_mean", "ours_std", "ours_n", "diff", "status"]


def key_text(value: Any) -> str:
    """A cell key as text: numbers in shortest form (0.10 -> '0.1', 5.0 -> '5'), missing -> ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return ""
    try:
        return format(float(value), "g")
    except (TypeError, ValueError):
        return str(value)


def read_paper(paper_dir: str, name: str) -> pd.DataFrame:
    """A CSV of published numbers, every column as text (empty cells stay '')."""
    return pd.read_csv(Path(paper_dir) / name, dtype=str, keep_default_na=False)


def as_float(column: pd.Series) -> pd.Series:
    """Numbers of a text column; an empty or non-numeric cell becomes NaN."""
    return pd.to_numeric(column, errors="coerce").astype(float)


def aggregate(observations: list[dict[str, Any]], keys: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN when n=1) and n of ``value`` per key combination."""
    if not observations:
        return pd.DataFrame(columns=[*keys, "ours_mean", "ours_std", "ours_n"])
    frame = pd.DataFrame(observations)
    frame[keys] = frame[keys].map(key_text)
    grouped = frame.groupby(keys, sort=False)["value"]
    out = grouped.agg(ours_mean="mean", ours_std="std", ours_n="count").reset_index()
    out["ours_n"] = out["ours_n"].astype(int)
    return out


def combine(paper: pd.DataFrame, ours: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Outer-join paper cells and our cells: paper order first, then our cells without a paper value."""
    paper = paper.copy()
    paper[keys] = paper[keys].map(key_text)
    paper = paper[paper["paper"].notna()].assign(_paper_rank=lambda f: range(len(f)))
    ours = ours.assign(_ours_rank=range(len(ours)))
    merged = paper.merge(ours, on=keys, how="outer", indicator=True)  # an outer merge sorts keys: restore order
    merged = merged.sort_values(["_paper_rank", "_ours_rank"], kind="stable", na_position="last")
    merged["status"] = merged["_merge"].map({"both": OK, "left_only": NOT_RUN, "right_only": NO_PAPER}).astype(str)
    merged["ours_n"] = merged["ours_n"].fillna(0).astype(int)
    merged["diff"] = merged["ours_mean"] - merged["paper"]
    extra = [c for c in merged.columns if c not in {*keys, *VALUE_COLUMNS} and not c.startswith("_")]
    return merged[[*keys, *VALUE_COLUMNS, *extra]].reset_index(drop=True)


def with_gain(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Append MCMI − MLL rows (ours and paper) for every student cell keyed by ``keys`` (without variant)."""
    pick = df[df["variant"].isin(["MLL", "MCMI"])]
    if "block" in pick:
        pick = pick[pick["block"] == "student"]
    rows = []
    for index, cell in pick.groupby(keys, sort=False):
        by_variant = cell.set_index("variant")
        paper, ours = (by_variant[col].get("MCMI", math.nan) - by_variant[col].get("MLL", math.nan)
                       for col in ("paper", "ours_mean"))
        if math.isnan(paper) and math.isnan(ours):
            continue
        ours_n = 0 if math.isnan(ours) else int(by_variant["ours_n"].min())
        status = NOT_RUN if math.isnan(ours) else NO_PAPER if math.isnan(paper) else OK
        rows.append({**dict(zip(keys, index)), "variant": GAIN, "paper": paper, "ours_mean": ours,
                     "ours_std": math.nan, "ours_n": ours_n, "diff": ours - paper, "status": status})
    return pd.concat([df, pd.DataFrame(rows, columns=df.columns)], ignore_index=True) if rows else df
