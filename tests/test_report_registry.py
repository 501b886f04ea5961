"""The registries of mcmi.report are the one place the CLI and the workflow take tables and figures from."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

import mcmi.pipeline.config
import mcmi.report
import mcmi.report.tables
from mcmi.cli import main
from mcmi.report import FIGURES, TABLES, Registry, TableSpec, all_targets, build_table, make_table
from mcmi.pipeline import ConfigError, WorkflowConfig

REPO = Path(__file__).resolve().parents[1]
PAPER_DIR = REPO / "config" / "paper"


@pytest.fixture(scope="module")
def test_config() -> dict:
    return yaml.safe_load((REPO / "config" / "test.yaml").read_text())


def _help(kind: str, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit):
        main([kind, "--help"])
    return capsys.readouterr().out


def test_ids_in_target_order() -> None:
    assert TABLES.ids == ["1", "2", "3", "4", "5", "6", "7", "8", "1x"]
    assert FIGURES.ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert [spec.target for spec in all_targets()] == [*(f"table{n}" for n in TABLES.ids),
                                                      *(f"figure{n}" for n in FIGURES.ids)]


def test_cli_help_and_workflow_targets_list_every_declaration(test_config: dict, capsys) -> None:
    assert f"table id: {', '.join(TABLES.ids)}" in _help("table", capsys)
    assert "figure id: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13" in _help("figure", capsys)
    w = WorkflowConfig(copy.deepcopy(test_config), REPO)
    assert list(w.targets()) == [spec.target for spec in all_targets()]     # test.yaml configures all
    assert w.targets()["table1x"] == [f"{w.results}/tables/table1x.{ext}" for ext in ("md", "tex", "csv", "html")]
    assert w.targets()["figure4"] == [f"{w.results}/figures/figure4.{ext}" for ext in ("pdf", "png")]


def test_an_unconfigured_experiment_has_no_target_and_its_inputs_name_the_key(test_config: dict) -> None:
    config = copy.deepcopy(test_config)
    del config["experiments"]["table3"], config["experiments"]["figure2"]
    w = WorkflowConfig(config, REPO)
    assert "table3" not in w.targets() and "figure2" not in w.targets() and "table4" in w.targets()
    with pytest.raises(ConfigError, match=r"experiments\.table3: not configured"):
        w.table_inputs(3)
    with pytest.raises(ValueError, match=r"no table 9; known tables: \['1', '2', '3', '4', '5', '6', '7', '8', '1x'\]"):
        w.table_inputs(9)


def test_inputs_of_each_declaration_on_a_small_config(test_config: dict) -> None:
    """Paths worked out by hand from the experiment blocks below (results = 'r')."""
    config = copy.deepcopy(test_config)
    config["results"] = "r"
    exp = {"dataset": "digits", "pairs": ["resnet14->resnet8"], "methods": ["KD"], "seeds": [0]}
    config["experiments"] = {
        "table1": exp, "table2": {**exp, "methods": ["KD", "CRD"]},
        "table3": {**exp, "alpha_percent": [5, 12.5]},
        "table4": {**exp, "es_epochs": {"resnet14": 1}}, "table5": {"delta_mu": [1, 0.5]},
        "table6": {"dataset": "digits", "teachers": ["resnet14", "resnet8"]}, "table7": {**exp, "lambdas": [0, 0.25]},
        "figure1": {**exp, "temperatures": [1, 4]}, "figure2": {"dataset": "digits", "teachers": ["resnet14"]},
        "figure4": {**exp, "lam": 0.1, "removed_classes": [3]},
    }
    w = WorkflowConfig(config, REPO)
    student = "r/digits/students/resnet14-resnet8/KD/{}/{}/seed0/metrics.json".format
    measure = "r/digits/measure/resnet14/{}/T{}.json".format
    assert w.table_inputs(1) == [measure("MLL", 1), measure("MCMI", 1), student("MLL", "full"),
                                 student("MCMI", "full"), "r/digits/students/vanilla/resnet8/seed0/metrics.json"]
    assert w.table_inputs("2")[2:] == [student("MLL", "full"), student("MCMI", "full"),
                                       student("MLL", "full").replace("/KD/", "/CRD/"),
                                       student("MCMI", "full").replace("/KD/", "/CRD/")]
    assert w.table_inputs(3) == [student("MLL", "fs5"), student("MLL", "fs12.5"), student("MCMI", "fs5"),
                                 student("MCMI", "fs12.5")]
    assert w.table_inputs(4) == [measure("MLL", 1), measure("ES1", 1), measure("MCMI", 1), student("MLL", "full"),
                                 student("ES1", "full"), student("MCMI", "full")]
    assert w.table_inputs(5) == [f"r/synthetic/as_written/dmu{d}.json" for d in ("1", "0.5")]
    assert w.table_inputs(6) == ["r/digits/teachers/resnet14/lambda_star.json",
                                 "r/digits/teachers/resnet8/lambda_star.json"]
    assert w.table_inputs(7) == [measure("MLL", 1), measure("MCMI_lam0", 1), measure("MCMI_lam0.25", 1),
                                 student("MLL", "full"), student("MCMI_lam0", "full"), student("MCMI_lam0.25", "full")]
    # at the KD temperature (4, KD's default here) Figure 1's student is Table 1's ('full'): one job
    assert w.figure_inputs(1) == [measure("MLL", 1), student("MLL", "T1"), measure("MLL", 4), student("MLL", "full")]
    assert w.figure_inputs(2) == ["r/digits/teachers/resnet14/MLL/metrics.json"]
    assert w.figure_inputs(4) == [student("MLL", "zs"), student("MCMI_lam0.1", "zs")]
    config["experiments"]["table4"]["es_epochs"] = {}
    with pytest.raises(ConfigError, match=r"experiments\.table4\.es_epochs\.resnet14: missing"):
        WorkflowConfig(config, REPO).table_inputs(4)


def test_every_declaration_names_paper_files_that_exist() -> None:
    for spec in TABLES:
        assert spec.paper_files, spec.id
        for name in spec.paper_files:
            assert (PAPER_DIR / name).is_file(), (spec.id, name)
        assert spec.cites.startswith(spec.paper_files[0]), spec.id
        assert spec.title.startswith(f"Table {spec.id}") and spec.caption


def test_a_registry_refuses_an_id_declared_twice() -> None:
    with pytest.raises(ValueError, match="table 3 is declared twice"):
        Registry("table", [*TABLES, TABLES["3"]], normalise=str)


def test_a_new_declaration_reaches_the_cli_the_workflow_and_make_table(test_config: dict, tmp_path: Path,
                                                                       monkeypatch, capsys) -> None:
    """Adding a table is one declaration in the registry (and its experiment block in the schema)."""
    few_shot = TABLES["3"]
    extra = TableSpec(id="9", title="Table 9", caption="Few-shot students again.", paper_files=("table3.csv",),
                      paper_dataset="cifar100",
                      inputs=lambda w, exp: [w.student(exp["dataset"], "resnet14", "resnet8", "KD", "MLL", "fs5", 0)],
                      build=few_shot.build, layout=few_shot.layout)
    registry = Registry("table", [*TABLES, extra], normalise=str)
    monkeypatch.setattr(mcmi.report, "TABLES", registry)
    monkeypatch.setattr(mcmi.report.tables, "TABLES", registry)

    assert "table id: 1, 2, 3, 4, 5, 6, 7, 8, 1x, 9" in _help("table", capsys)
    schema = yaml.safe_load(mcmi.pipeline.config.SCHEMA.read_text())    # its experiment block, in the schema
    schema["properties"]["experiments"]["properties"]["table9"] = {"type": "object"}
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    monkeypatch.setattr(mcmi.pipeline.config, "SCHEMA", tmp_path / "schema.yaml")
    config = copy.deepcopy(test_config)
    config["experiments"]["table9"] = {"dataset": "digits"}
    w = WorkflowConfig(config, REPO)
    assert list(w.targets())[len(TABLES)] == "table9"
    assert w.table_inputs(9) == [f"{w.results}/digits/students/resnet14-resnet8/KD/MLL/fs5/seed0/metrics.json"]

    metrics = tmp_path / "fs.json"
    metrics.write_text(json.dumps({"run": {"stage": "student", "dataset": "cifar100", "teacher": "resnet56",
                                           "student": "resnet20", "method": "KD", "variant": "MLL",
                                           "alpha_percent": 5}, "final": {"test_acc": 50.0}}))
    assert main(["table", "--paper-dir", str(PAPER_DIR), "--out", str(tmp_path / "t9"), "9", str(metrics)]) == 0
    assert (tmp_path / "t9.md").read_text().startswith("# Table 9\n\nFew-shot students again.")
    assert build_table(9, [metrics], str(PAPER_DIR))["table"].eq("9").all()


def test_unknown_ids_are_refused_naming_the_known_ones(tmp_path: Path, capsys) -> None:
    assert main(["table", "9", "--out", str(tmp_path / "t")]) == 2
    assert "no table 9; known tables: ['1', '2', '3', '4', '5', '6', '7', '8', '1x']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no figure 14"):
        mcmi.report.make_figure(14, [], str(tmp_path / "f"))
    with pytest.raises(ValueError, match="no table 9"):
        make_table(9, [], str(PAPER_DIR), str(tmp_path / "t"))


# ------------------------------------------------------------------------------ the Snakemake report
class _Tables(HTMLParser):
    """Collects the text of every <table>'s cells, <h1>/<h2> headings and <details> blocks of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self.details = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2"):
            self._heading = []
        elif tag == "details":
            self.details += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)


def _script_json(page: str, script_id: str, name: str):
    """The JSON value a Snakemake report assigns in one of its <script> blocks
    (<script id="results"> var results = {...}; </script>)."""
    found = re.search(rf'<script id="{script_id}">\s*var {name} = (.*?);\n\s*</script>', page, re.S)
    assert found, f"no 'var {name}' in the report"
    return json.loads(found.group(1))


def _data_uri_text(uri: str) -> str:
    header, _, payload = uri.partition(",")
    assert header.startswith("data:text/html") and header.endswith(";base64"), header
    return base64.b64decode(payload).decode()


@pytest.mark.slow
def test_snakemake_report_after_a_single_table_run_shows_html_tables_with_captions(tmp_path: Path,
                                                                                     test_config: dict) -> None:
    """`snakemake table5 figure2` then `snakemake table5 figure2 --report report.html`: the report (one
    self-contained HTML file, results embedded as base64 data URIs) holds the table as an HTML page with
    <table>s and a caption from workflow/report/table.rst, the figure with its caption, and opens on the
    run's description (workflow/report/workflow.rst) with the rule graph hidden."""
    config = copy.deepcopy(test_config)
    config["results"] = str(tmp_path / "results")
    config["datasets"]["demo_imagenet"]["root"] = str(tmp_path / "results/data/demo_imagenet")
    config["experiments"]["table5"]["synthetic"]["kernel"] = "torch"      # no C++ build in this test
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "table5", "figure2", "-s", str(REPO / "Snakefile"), "-d",
               str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*command, "--cores", "2"], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run([*command, "--report", str(tmp_path / "report.html")], capture_output=True, text=True,
                            timeout=300, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "System Message" not in report.stderr and "WARNING/" not in report.stderr   # the rst renders cleanly

    page = (tmp_path / "report.html").read_text()
    results = _script_json(page, "results", "results")
    table = next(entry for path, entry in results.items() if path.endswith("tables/table5.html"))
    assert table["mime_type"] == "text/html"     # shown in the report as a page, not offered as a download
    assert table["caption"].startswith("<p><strong>Table 5.</strong> Synthetic Gaussian task")
    assert "paired" in table["caption"] and "config/paper/" in table["caption"]
    parsed = _Tables()
    parsed.feed(_data_uri_text(table["data_uri"]))
    assert parsed.headings[0] == "Table 5"
    assert parsed.headings[1] == "as_written [reduced scale], Δμ = 2"        # our sections first
    assert parsed.details == 1                                              # the paper's, folded
    first = parsed.tables[0]
    assert first[0][0] == "Student target" and first[2][0] == "P* (ground truth)"
    assert any(row[0] == "MCMI − MLL teacher" and row[1].startswith(("+", "-")) for row in first)
    assert "paper" in first[1] and "Δ" in first[1]

    figure = next(entry for path, entry in results.items() if path.endswith("figures/figure2.png"))
    assert figure["mime_type"] == "image/png" and figure["caption"].startswith("<p><strong>Figure 2.</strong> Train CMI")

    landing = _script_json(page, "workflow-desc", "workflow_desc")
    assert "MCMI knowledge distillation: this run" in landing and "#rulegraph { display: none" in landing
    text = re.sub(r"<[^>]+>", "", landing)
    assert f"Results folder {config['results']};" in text
    assert "Where the paper" in text and "table5: Δμ 2; presets as_written, authors_code." in text
    assert "Tables: table5.html" in text and "Figures: figure2.png" in text          # what this report holds


def test_the_appendix_declarations_reach_the_cli(tmp_path: Path, capsys) -> None:
    """`mcmi table 8` and `mcmi figure <n>` for the appendix's declarations: written from hand-made metrics
    files, and a figure without its runs is one error line (exit 2)."""
    def write(name: str, run: dict, final: dict) -> str:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"run": run, "final": final}))
        return str(path)

    classes = [write(v, {"stage": "class_cmi", "dataset": "imagenet", "teacher": "resnet50", "variant": v},
                     {"split": "train", "classes": [{"class": "goldfish", "name": "goldfish", "cmi": 0.3 + k / 10}]})
               for k, v in enumerate(("MLL", "MCMI"))]
    assert main(["table", "8", "--paper-dir", str(PAPER_DIR), "--out", str(tmp_path / "t8"), *classes]) == 0
    assert "| goldfish | 0.3000 (1) | 0.2896 |" in (tmp_path / "t8.md").read_text()
    runs = []
    for k, (variant, extra) in enumerate((("MLL", {}), ("MCMI", {"lam": 0.25}))):
        run = {"dataset": "cifar10", "teacher": "ResNet50", "variant": variant, "labeled_count": 500,
               "labeled_seed": 0, **extra}
        runs.append(write(f"t{variant}", {"stage": "teacher", **run}, {"test_acc": 60.0 + k}))
        runs.append(write(f"s{variant}", {"stage": "student", "student": "ResNet18", "method": "SemiKD", "seed": 0,
                                          **run}, {"test_acc": 70.0 + k}))
    assert main(["figure", "9", "--out", str(tmp_path / "f9"), *runs]) == 0
    assert (tmp_path / "f9.png").stat().st_size > 1000 and (tmp_path / "f9.pdf").is_file()
    capsys.readouterr()
    assert main(["figure", "3", "--out", str(tmp_path / "f3"), *runs]) == 2
    assert capsys.readouterr().err.strip() == ("mcmi: error: figure 3: no Eigen-CAM run of the MLL and MCMI teacher "
                                               "among the metrics files")
