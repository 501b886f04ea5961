"""Tables and figures from metrics JSON files, each beside the paper's published numbers.

Every table and figure is one declaration (``TableSpec`` in ``report/tables/table<id>.py``, ``FigureSpec`` in
``report/figures/<module>.py``) in an ordered registry (``TABLES``, ``FIGURES``): the one home of its
experiment (config block, checks, inputs, own jobs, drawing). The CLI (``mcmi table``, ``mcmi figure``)
and the workflow (targets, their inputs, the experiments' own jobs) take them from these registries only.
"""

from mcmi.report.figures import FIGURES, make_figure
from mcmi.report.records import MetricsRecord, load_metrics
from mcmi.report.spec import ConfigView, FigureSpec, Registry, TableSpec
from mcmi.report.tables import TABLES, build_table, make_table


def all_targets() -> list[TableSpec | FigureSpec]:
    """Every declaration in target order: the tables, then the figures."""
    return [*TABLES, *FIGURES]


__all__ = ["FIGURES", "TABLES", "ConfigView", "FigureSpec", "MetricsRecord", "Registry", "TableSpec", "all_targets",
           "build_table", "load_metrics", "make_figure", "make_table"]
