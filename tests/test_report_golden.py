"""Every table regenerated from a fixed set of fake metrics files is byte-identical to the expected files.

The expected files in tests/data/report_golden/ were first written by the code before mcmi.report (commit
f2a5e3a, mcmi/tables.py) from report_fixtures.write_report_metrics, and regenerated for issue 24 (our
sections first, a summary, paired MCMI − MLL differences with t-intervals, the signature, Table 7's MLL row
and λ = 0 control, an HTML page per table); every value of the earlier csv files is unchanged in the
regenerated ones. After an intended change of a table's output, regenerate them with

    MCMI_REGENERATE_GOLDEN=1 python -m pytest tests/test_report_golden.py

and review the diff of tests/data/report_golden/ before committing it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

import mcmi.report.tables
from mcmi.report import TABLES, make_table
from mcmi.report.render import TABLE_EXTENSIONS
from report_fixtures import write_report_metrics

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "report_golden"
PAPER_DIR = str(REPO / "config" / "paper")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    out = GOLDEN if os.environ.get("MCMI_REGENERATE_GOLDEN") else root / "tables"
    with pytest.MonkeyPatch.context() as patch:     # the table names the code that built it: pinned here
        patch.setattr(mcmi.report.tables, "code_fingerprint", lambda: "0" * 64)
        for n, paths in write_report_metrics(root / "metrics").items():
            make_table(n, paths, PAPER_DIR, str(out / f"table{n}"))
    return out


@pytest.mark.parametrize("name", [f"table{spec.id}.{ext}" for spec in TABLES for ext in TABLE_EXTENSIONS])
def test_table_is_byte_identical_to_the_expected_file(regenerated: Path, name: str) -> None:
    expected, ours = (GOLDEN / name).read_bytes(), (regenerated / name).read_bytes()
    if ours != expected:
        diff = difflib.unified_diff(expected.decode().splitlines(), ours.decode().splitlines(),
                                    f"expected/{name}", f"regenerated/{name}", lineterm="", n=1)
        pytest.fail("\n".join(list(diff)[:40]))


def test_the_fixtures_reach_matched_and_unmatched_cells() -> None:
    """The expected tables hold matched cells, our cells without a paper value and unrun paper cells."""
    for spec in TABLES:
        md = (GOLDEN / f"table{spec.id}.md").read_text()
        counts = next(line for line in md.splitlines() if line.startswith("- Cells:"))
        matched, not_run, no_paper = (int(word) for word in counts.replace(",", "").split() if word.isdigit())
        assert matched > 0 and not_run > 0 and no_paper > 0, (spec.id, counts)
