"""The tidy frame every table is built in, with the published numbers beside ours.

One row per cell with its keys, the metric, the paper's value, ``ours_mean``/``ours_std``/``ours_n``
over the runs of that cell, ``diff = ours_mean - paper`` and a ``status``: ``ok`` (both), ``not run``
(paper cell we have no run for, never filled) or ``no paper value`` (our cell without a published
counterpart, shown as "—"). A paired comparison (``Comparison``, e.g. MCMI − MLL) adds one row per cell
whose ours columns describe the per-seed differences (students of the same cell and seed share their
initialisation and data order): mean, std, n and a 95 % t-interval ``ours_ci_low``/``ours_ci_high``.
Matching to the paper is by the cell keys (teacher, student, method, variant, alpha, lambda, ...), and only for runs on the paper's dataset of that table: a run on another
dataset (the demo's digits) keeps its model names tagged with the dataset, so it can never sit beside
a published number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

OK, NOT_RUN, NO_PAPER, NOT_PAIRED = "ok", "not run", "no paper value", "no common seed"
GAIN = "MCMI − MLL"
CONFIDENCE = 0.95
VALUE_COLUMNS = ["paper", "ours_mean", "ours_std", "ours_n", "ours_ci_low", "ours_ci_high", "diff", "status"]


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
    merged["ours_ci_low"] = merged["ours_ci_high"] = math.nan     # intervals belong to paired differences
    extra = [c for c in merged.columns if c not in {*keys, *VALUE_COLUMNS} and not c.startswith("_")]
    return merged[[*keys, *VALUE_COLUMNS, *extra]].reset_index(drop=True)


@dataclass(frozen=True)
class Spread:
    """Mean, sample std (ddof = 1), n and the two-sided t-interval of a sample (no std/interval when n < 2)."""

    mean: float
    std: float
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        return cls.pooled((float(v), math.nan, 1) for v in values)

    @classmethod
    def pooled(cls, parts: Iterable[tuple[float, float, int]]) -> Spread:
        """The spread of the union of samples given as (mean, std, n) each (std NaN when n = 1): the same
        as ``of`` over all their values, so a table's summary follows from its difference rows alone."""
        from scipy import stats

        parts = [(m, 0.0 if math.isnan(s) else s, n) for m, s, n in parts if n > 0]
        n = sum(k for _, _, k in parts)
        if n == 0:
            return cls(math.nan, math.nan, 0, math.nan, math.nan)
        mean = sum(m * k for m, _, k in parts) / n
        if n < 2:
            return cls(mean, math.nan, n, math.nan, math.nan)
        std = math.sqrt(sum((k - 1) * s ** 2 + k * (m - mean) ** 2 for m, s, k in parts) / (n - 1))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
        return cls(mean, std, n, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    """Cells of ``by`` = ``treated`` against the same cells (all other keys equal) of ``by`` = ``control``,
    paired by seed; the difference rows carry ``by`` = ``label``. ``higher_is_better`` says which sign of
    ``treated − control`` favours ``treated`` (False for Pdist); ``names`` are how text calls the two sides
    (default: their values)."""

    by: str
    treated: str
    control: str
    label: str
    higher_is_better: bool = True
    names: tuple[str, str] | None = None

    @property
    def treated_name(self) -> str:
        return self.names[0] if self.names else self.treated

    @property
    def control_name(self) -> str:
        return self.names[1] if self.names else self.control


MCMI_VS_MLL = Comparison("variant", "MCMI", "MLL", GAIN)


@dataclass(frozen=True)
class Pairs:
    """One cell of a paired comparison: the per-seed differences and how many sides (0-2) have runs."""

    differences: list[float]
    sides: int


def _values_by_cell(frame: pd.DataFrame, cell_keys: list[str]) -> dict[tuple, dict[str, float]]:
    """{cell: {seed: value}} (the mean where a seed of a cell occurs twice)."""
    out: dict[tuple, dict[str, float]] = {}
    for index, value in frame.groupby([*cell_keys, "seed"], sort=False)["value"].mean().items():
        out.setdefault(tuple(index[:-1]), {})[index[-1]] = float(value)
    return out


def paired_differences(observations: list[dict[str, Any]], keys: list[str],
                       comparison: Comparison) -> dict[tuple, Pairs]:
    """Per cell (the values of ``keys`` without ``comparison.by``, as text): the differences treated −
    control of the observations with the same ``seed``, over the seeds both sides have (a missing seed,
    as of a teacher measurement, pairs with a missing seed)."""
    if not observations:
        return {}
    cell_keys = [k for k in keys if k != comparison.by]
    frame = pd.DataFrame(observations)
    frame["seed"] = frame["seed"].map(key_text) if "seed" in frame else ""
    frame[keys] = frame[keys].map(key_text)
    treated, control = (_values_by_cell(frame[frame[comparison.by] == value], cell_keys)
                        for value in (comparison.treated, comparison.control))
    return {cell: Pairs([treated[cell][s] - control[cell][s] for s in treated.get(cell, {}) if s in control.get(cell, {})],
                        (cell in treated) + (cell in control))
            for cell in dict.fromkeys([*treated, *control])}


def with_paired(df: pd.DataFrame, observations: list[dict[str, Any]], keys: list[str],
                comparison: Comparison = MCMI_VS_MLL) -> pd.DataFrame:
    """Append one difference row per cell of ``comparison``: ours from the per-seed differences of
    ``observations`` (see ``paired_differences``), the paper's from its two cells where it has both."""
    by, cell_keys = comparison.by, [k for k in keys if k != comparison.by]
    pairs = paired_differences(observations, keys, comparison)
    df = df if "difference" in df else df.assign(difference=False)
    rows = []
    for cell, block in df[df[by].isin([comparison.treated, comparison.control])].groupby(cell_keys, sort=False):
        cell = cell if isinstance(cell, tuple) else (cell,)
        by_side = block.set_index(by)["paper"]
        paper = by_side.get(comparison.treated, math.nan) - by_side.get(comparison.control, math.nan)
        found = pairs.get(cell, Pairs([], 0))
        spread = Spread.of(found.differences)
        if spread.n == 0 and found.sides < 2 and math.isnan(paper):
            continue            # neither a difference of ours nor the paper's
        if spread.n == 0:
            status = NOT_PAIRED if found.sides == 2 else NOT_RUN
        else:
            status = NO_PAPER if math.isnan(paper) else OK
        rows.append({**dict(zip(cell_keys, cell)), by: comparison.label, "paper": paper, "ours_mean": spread.mean,
                     "ours_std": spread.std, "ours_n": spread.n, "ours_ci_low": spread.low,
                     "ours_ci_high": spread.high, "diff": spread.mean - paper, "status": status,
                     "difference": True})
    return pd.concat([df, pd.DataFrame(rows, columns=df.columns)], ignore_index=True) if rows else df


@dataclass(frozen=True)
class Verdict:
    """A paired comparison summed up over a table's difference rows of one metric."""

    comparison: Comparison
    metric: str
    cells: int                 # difference cells with at least one pair of ours
    better: int                # ... of which ours favours ``treated``
    ours: Spread               # over every pair of those cells
    paper_same_cells: Spread   # the paper's differences on those cells (one per cell)
    paper_better_same: int
    paper_all: Spread          # the paper's differences on every cell it has
    paper_better_all: int


def verdict(df: pd.DataFrame, comparison: Comparison, metric: str) -> Verdict:
    """Sum up the difference rows of ``comparison`` for ``metric``: ours pooled over every pair (a
    t-interval over all paired seeds of the table), the paper's over its cells (one difference each)."""
    rows = df[(df[comparison.by] == comparison.label) & (df["metric"] == metric)]
    sign = 1.0 if comparison.higher_is_better else -1.0
    ours = rows[rows["ours_n"] > 0]
    same = ours[ours["paper"].notna()]
    paper = rows[rows["paper"].notna()]
    return Verdict(
        comparison, metric, len(ours), int((sign * ours["ours_mean"] > 0).sum()),
        Spread.pooled(zip(ours["ours_mean"], ours["ours_std"], ours["ours_n"])),
        Spread.of(same["paper"]), int((sign * same["paper"] > 0).sum()),
        Spread.of(paper["paper"]), int((sign * paper["paper"] > 0).sum()),
    )


def with_gain(df: pd.DataFrame, observations: list[dict[str, Any]], keys: list[str]) -> pd.DataFrame:
    """MCMI − MLL rows, paired by seed, for every cell keyed by ``keys`` (which include ``variant``)."""
    return with_paired(df, observations, keys, MCMI_VS_MLL)


# ------------------------------------------------------------------------------ the paper's signature
TEACHER_CMI, TEACHER_LL = "teacher_cmi", "teacher_ll"


@dataclass(frozen=True)
class Signature:
    """The paper's Table 1 pattern for one teacher: the ``treated`` teacher's training CMI above the
    ``control`` teacher's and its LL below. Values are (treated, control); NaN where not measured."""

    teacher: str
    comparison: Comparison
    cmi: tuple[float, float]
    ll: tuple[float, float]
    paper_cmi: tuple[float, float]
    paper_ll: tuple[float, float]

    @staticmethod
    def _check(values: tuple[float, float], above: bool) -> bool | None:
        if any(math.isnan(v) for v in values):
            return None
        return values[0] > values[1] if above else values[0] < values[1]

    @property
    def cmi_above(self) -> bool | None:
        return self._check(self.cmi, above=True)

    @property
    def ll_below(self) -> bool | None:
        return self._check(self.ll, above=False)

    @property
    def holds(self) -> bool | None:
        checks = (self.cmi_above, self.ll_below)
        return None if None in checks else all(checks)

    @property
    def paper_holds(self) -> bool | None:
        checks = (self._check(self.paper_cmi, above=True), self._check(self.paper_ll, above=False))
        return None if None in checks else all(checks)


def signatures(df: pd.DataFrame, comparison: Comparison = MCMI_VS_MLL) -> list[Signature]:
    """The signature of every teacher that has a CMI or LL cell (ours or the paper's) on both sides."""
    rows = df[df["metric"].isin([TEACHER_CMI, TEACHER_LL]) & df[comparison.by].isin([comparison.treated,
                                                                                     comparison.control])]
    out = []
    for teacher, block in rows.groupby("teacher", sort=False):
        def pair(metric: str, column: str) -> tuple[float, float]:
            cells = block[block["metric"] == metric]

            def side(value: str) -> float:
                found = pd.to_numeric(cells.loc[cells[comparison.by] == value, column], errors="coerce").dropna()
                return float(found.iloc[0]) if len(found) else math.nan

            return side(comparison.treated), side(comparison.control)

        sig = Signature(teacher, comparison, pair(TEACHER_CMI, "ours_mean"), pair(TEACHER_LL, "ours_mean"),
                        pair(TEACHER_CMI, "paper"), pair(TEACHER_LL, "paper"))
        if sig.holds is not None or sig.paper_holds is not None:
            out.append(sig)
    return out


def with_signature(df: pd.DataFrame, comparison: Comparison = MCMI_VS_MLL) -> pd.DataFrame:
    """Add a ``signature`` column: on our treated teacher's CMI and LL cells, whether it is above (CMI)
    or below (LL) the control teacher's ('above MLL', 'not above MLL', ...); empty elsewhere."""
    df = df.copy()
    if "signature" not in df:
        df["signature"] = ""
    for sig in signatures(df, comparison):
        for metric, verdict_, word in ((TEACHER_CMI, sig.cmi_above, "above"), (TEACHER_LL, sig.ll_below, "below")):
            if verdict_ is None:
                continue
            mask = ((df["teacher"] == sig.teacher) & (df["metric"] == metric)
                    & (df[comparison.by] == comparison.treated))
            df.loc[mask, "signature"] = f"{'' if verdict_ else 'not '}{word} {comparison.control}"
    return df
