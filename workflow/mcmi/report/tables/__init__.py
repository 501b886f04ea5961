"""The tables, in target order: one declaration (``TABLE``) per module, and how a table is made."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mcmi.provenance import code_fingerprint
from mcmi.report.origin import HEADING, Origin
from mcmi.report.records import MetricsRecord, load_metrics, tag_foreign_dataset
from mcmi.report.render import write_table
from mcmi.report.spec import Registry, TableSpec
from mcmi.report.tables import table1, table1x, table2, table3, table4, table5, table6, table7, table8

TABLES: Registry[TableSpec] = Registry(
    "table",
    [table1.TABLE, table2.TABLE, table3.TABLE, table4.TABLE, table5.TABLE, table6.TABLE, table7.TABLE,
     table8.TABLE, table1x.TABLE],   # the paper's Tables 1-8, then tables beyond the paper
    normalise=str,
)


def _records(spec: TableSpec, metrics_paths: list[str | Path]) -> list[MetricsRecord]:
    records = load_metrics(metrics_paths)
    return [tag_foreign_dataset(r, spec.paper_dataset) for r in records] if spec.paper_dataset else records


def _frame(spec: TableSpec, records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    df = spec.build(records, paper_dir).copy()
    df.insert(0, "table", spec.id)
    return df.reset_index(drop=True)


def build_table(n: int | str, metrics_paths: list[str | Path], paper_dir: str) -> pd.DataFrame:
    """Tidy Table ``n`` (an id of ``TABLES``; 1 and "1" are the same): one row per cell with the paper
    value, ours mean/std/n, diff and status."""
    spec = TABLES[n]
    return _frame(spec, _records(spec, metrics_paths), paper_dir)


def make_table(n: int | str, metrics_paths: list[str | Path], paper_dir: str, out_prefix: str | Path) -> pd.DataFrame:
    """Build Table ``n`` and write its csv/md/tex/html files, with where its numbers come from
    (:mod:`mcmi.report.origin`); returns the tidy frame."""
    spec = TABLES[n]
    records = _records(spec, metrics_paths)
    df = _frame(spec, records, paper_dir)
    layout = spec.layout(df)
    origin = Origin.of(records, code_fingerprint())
    layout.summary[:0] = origin.summary()
    layout.closing = (HEADING, origin.lines())
    write_table(df, layout, out_prefix, spec.title, spec.caption, spec.cites)
    return df
