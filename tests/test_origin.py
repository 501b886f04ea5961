"""Each table says where its numbers come from, and says first when some come from other code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mcmi.report.tables
from mcmi.report import make_table
from mcmi.report.origin import HEADING
from report_fixtures import write_report_metrics

REPO = Path(__file__).resolve().parents[1]
PAPER_DIR = str(REPO / "config" / "paper")
CURRENT, OTHER = "c" * 64, "d" * 64


def _stamp(path: str, code: str, commit: str) -> None:
    """Give a fixture metrics file the provenance a pipeline job records (no seal: not a job's file)."""
    data = json.loads(Path(path).read_text())
    data["provenance"] = {"code_fingerprint": code, "git_commit": commit, "device": "cpu",
                          "versions": {"torch": "2.14.1"}}
    Path(path).write_text(json.dumps(data))


@pytest.fixture
def table3_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(mcmi.report.tables, "code_fingerprint", lambda: CURRENT)
    return write_report_metrics(tmp_path / "metrics")["3"]


def test_results_of_the_current_code_are_listed_without_a_warning(tmp_path, table3_paths):
    for path in table3_paths:
        _stamp(path, CURRENT, "a" * 40)
    make_table(3, table3_paths, PAPER_DIR, str(tmp_path / "table3"))
    md = (tmp_path / "table3.md").read_text()
    assert "**Code**" not in md
    origin = md.split(f"## {HEADING}")[1]
    assert f"`{CURRENT[:12]}` (commit aaaaaaa; {len(table3_paths)} files, this checkout's code)" in origin
    assert "All of it is this checkout's code." in origin and "torch 2.14.1; device cpu." in origin
    assert f"<h2>{HEADING}</h2>" in (tmp_path / "table3.html").read_text()
    assert f"% {HEADING}:" in (tmp_path / "table3.tex").read_text()


def test_results_of_other_code_are_named_first_and_counted(tmp_path, table3_paths):
    old = table3_paths[:3]
    for path in table3_paths:
        _stamp(path, OTHER if path in old else CURRENT, ("b" * 40 + "-dirty") if path in old else "a" * 40)
    make_table(3, table3_paths, PAPER_DIR, str(tmp_path / "table3"))
    md = (tmp_path / "table3.md").read_text()
    summary = md.split("\n\n")[2]          # title, caption, then the summary's lines
    assert summary.startswith(f"- **Code**: 3 of {len(table3_paths)} result files were produced by other code")
    assert "`snakemake --forcerun RULE`" in summary
    assert f"`{OTHER[:12]}` (commit bbbbbbb-dirty; 3 files)" in md
    assert f"`{CURRENT[:12]}` (commit aaaaaaa; {len(table3_paths) - 3} files, this checkout's code)" in md
    assert "All of it is this checkout's code." not in md
    csv = (tmp_path / "table3.csv").read_text()
    assert "Code" not in csv and HEADING not in csv      # the csv holds the cells only


def test_files_without_provenance_are_counted_as_unrecorded(tmp_path, table3_paths):
    _stamp(table3_paths[0], CURRENT, "a" * 40)
    make_table(3, table3_paths, PAPER_DIR, str(tmp_path / "table3"))
    md = (tmp_path / "table3.md").read_text()
    n = len(table3_paths)
    assert f"- {n - 1} of {n} files record no code fingerprint or commit" in md and "**Code**" not in md


def test_a_lambda_selection_records_its_code_and_a_missing_device_is_left_out(tmp_path, monkeypatch):
    """Table 6 reads λ* selections: they record the code that chose them; a file recording torch but no
    device lists torch alone."""
    from mcmi.provenance import code_fingerprint
    from mcmi.selection import select_lambda

    students = []
    for lam, acc in ((0.1, 50.0), (0.2, 60.0)):
        path = tmp_path / f"kd_{lam}.json"
        path.write_text(json.dumps({"run": {"lam": lam}, "final": {"test_acc": acc}}))
        students.append(str(path))
    out = tmp_path / "lambda_star.json"
    select_lambda(students, str(out), teacher="resnet14", dataset="digits")
    recorded = json.loads(out.read_text())["provenance"]
    assert recorded["code_fingerprint"] == code_fingerprint() and "git_commit" in recorded

    monkeypatch.setattr(mcmi.report.tables, "code_fingerprint", lambda: recorded["code_fingerprint"])
    make_table(6, [str(out)], PAPER_DIR, str(tmp_path / "table6"))
    md = (tmp_path / "table6.md").read_text()
    assert "- 1 metrics file (" in md and "this checkout's code" in md and "**Code**" not in md
    assert "- torch " in md and "device" not in md.split(f"## {HEADING}")[1]
