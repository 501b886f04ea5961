"""Tests of the tables of mcmi.report on small synthetic metrics files (all numbers are fake test fixtures)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mcmi.report import build_table, make_table
from mcmi.report.cells import GAIN, NO_PAPER, NOT_RUN, OK
from mcmi.report.render import DASH
from mcmi.report.tables.table5 import orderings as table5_orderings

PAPER_DIR = str(Path(__file__).resolve().parents[1] / "config" / "paper")


def write_metrics(directory: Path, name: str, run: dict[str, Any], final: dict[str, Any],
                  history: list[dict[str, Any]] | None = None) -> str:
    """Write one fake metrics JSON file and return its path."""
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"run": run, "final": final, "history": history or [], "provenance": {}}))
    return str(path)


def student(directory: Path, name: str, acc: float, seed: int = 0, **run: Any) -> str:
    """A fake KD student run on resnet56 -> resnet20 unless overridden."""
    base = {"stage": "student", "dataset": "cifar100", "teacher": "resnet56", "student": "resnet20",
            "method": "KD", "variant": "MCMI", "seed": seed, "temperature": 4}
    return write_metrics(directory, name, {**base, **run}, {"test_acc": acc, "test_top5": acc + 20})


def measure(directory: Path, name: str, acc: float, cmi: float, ll: float, **run: Any) -> str:
    """A fake teacher measurement at T = 1."""
    base = {"stage": "measure", "dataset": "cifar100", "teacher": "resnet56", "variant": "MLL", "temperature": 1}
    return write_metrics(directory, name, {**base, **run},
                         {"test_acc": acc, "train_cmi": cmi, "train_ll": ll, "test_top5": acc + 15})


def cell(df: pd.DataFrame, **keys: Any) -> pd.Series:
    """The single row of ``df`` matching ``keys``."""
    mask = pd.Series(True, index=df.index)
    for key, value in keys.items():
        mask &= df[key] == value
    rows = df[mask]
    assert len(rows) == 1, f"{len(rows)} rows for {keys}"
    return rows.iloc[0]


@pytest.fixture()
def table1_paths(tmp_path: Path) -> list[str]:
    return [
        student(tmp_path, "kd_mcmi_s0", 70.0, seed=0),
        student(tmp_path, "kd_mcmi_s1", 71.0, seed=1),
        student(tmp_path, "kd_mcmi_s2", 72.0, seed=2),
        student(tmp_path, "kd_mll_s0", 69.5, seed=0, variant="MLL"),
        student(tmp_path, "demo_kd", 55.0, teacher="mlp_big", student="mlp_small", variant="MLL"),
        student(tmp_path, "vanilla", 68.0, teacher=None, variant=None, method="vanilla"),
        measure(tmp_path, "teacher_mll", 72.0, 0.16, -0.10),
    ]


def test_table1_cell_placement_and_aggregation(table1_paths: list[str]) -> None:
    df = build_table(1, table1_paths, PAPER_DIR)
    kd = cell(df, block="student", teacher="resnet56", student="resnet20", method="KD", variant="MCMI")
    assert kd["paper"] == pytest.approx(70.84)
    assert kd["ours_mean"] == pytest.approx(71.0)
    assert kd["ours_std"] == pytest.approx(1.0)  # sample std of 70, 71, 72
    assert kd["ours_n"] == 3
    assert kd["diff"] == pytest.approx(71.0 - 70.84)
    assert kd["status"] == OK

    single = cell(df, block="student", teacher="resnet56", student="resnet20", method="KD", variant="MLL")
    assert single["ours_n"] == 1 and math.isnan(single["ours_std"])

    gain = cell(df, block="student", teacher="resnet56", student="resnet20", method="KD", variant=GAIN)
    assert gain["paper"] == pytest.approx(70.84 - 70.66)
    assert gain["ours_mean"] == pytest.approx(71.0 - 69.5)

    baseline = cell(df, block="baseline", student="resnet20")
    assert baseline["paper"] == pytest.approx(69.06) and baseline["ours_mean"] == pytest.approx(68.0)
    teacher_cmi = cell(df, block="teacher", teacher="resnet56", variant="MLL", metric="teacher_cmi")
    assert teacher_cmi["paper"] == pytest.approx(0.1583) and teacher_cmi["ours_mean"] == pytest.approx(0.16)


def test_table1_not_run_and_no_paper_value(table1_paths: list[str]) -> None:
    df = build_table(1, table1_paths, PAPER_DIR)
    paper_only = cell(df, block="student", teacher="vgg13", student="vgg8", method="CRD", variant="MCMI")
    assert paper_only["status"] == NOT_RUN and paper_only["ours_n"] == 0 and math.isnan(paper_only["ours_mean"])
    assert len(df[(df["block"] == "student") & (df["variant"].isin(["MLL", "MCMI"]))]) == 264 + 1
    demo = cell(df, block="student", teacher="mlp_big", student="mlp_small", method="KD", variant="MLL")
    assert demo["status"] == NO_PAPER and math.isnan(demo["paper"]) and demo["section"] == "ours only"


def test_write_table_formats(table1_paths: list[str], tmp_path: Path) -> None:
    prefix = tmp_path / "out" / "table1"
    make_table(1, table1_paths, PAPER_DIR, str(prefix))
    for suffix in ("csv", "md", "tex"):
        assert Path(f"{prefix}.{suffix}").stat().st_size > 0
    md = Path(f"{prefix}.md").read_text()
    assert "## resnet56 → resnet20 (same-arch)" in md
    kd_row = next(line for line in md.splitlines() if line.startswith("| KD |"))
    assert "71.00 ± 1.00 (3) | 70.84 | +0.16" in kd_row
    assert "69.50 (1) | 70.66 | -1.16" in kd_row
    assert "not run" in md
    demo_row = [line for line in md.split("## mlp_big → mlp_small")[1].splitlines() if line.startswith("| KD |")]
    assert f"55.00 (1) | {DASH} |" in demo_row[0]
    tex = Path(f"{prefix}.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"$\pm$" in tex
    assert len(pd.read_csv(f"{prefix}.csv")) > 264


def synthetic(directory: Path, delta_mu: float, accs: dict[str, list[float]], pdists: dict[str, float],
              preset: str = "as_written", scale: str = "paper") -> str:
    records = [{"seed": seed, "target": target, "test_acc": acc, "pdist_l2": pdists[target],
                "pdist_mean": pdists[target] / 100}
               for target, values in accs.items() for seed, acc in enumerate(values)]
    return write_metrics(directory, f"synthetic_{preset}_{scale}_{delta_mu}",
                         {"stage": "synthetic", "delta_mu": delta_mu, "preset": preset, "scale": scale},
                         {"lambda_selected": 0.1, "pdist_norm": "L2 over the test set", "records": records,
                          "teachers": []})


GOOD_ACC = {"GroundTruth": [60, 62], "MCMI_KD": [59, 61], "MLL_KD": [58, 60], "OneHot": [50, 52]}
GOOD_PDIST = {"GroundTruth": 0.0, "MCMI_KD": 10.0, "MLL_KD": 12.0, "OneHot": 40.0}


def test_table5_orderings(tmp_path: Path) -> None:
    good = synthetic(tmp_path, 0.5, GOOD_ACC, GOOD_PDIST)
    bad = synthetic(tmp_path, 2, {"GroundTruth": [70], "MCMI_KD": [66], "MLL_KD": [68], "OneHot": [60]},
                    {"GroundTruth": 0.0, "MCMI_KD": 5.0, "MLL_KD": 4.0, "OneHot": 7.0})
    df = build_table(5, [good, bad], PAPER_DIR)
    acc = cell(df, preset="as_written", delta_mu="0.5", target="MCMI_KD", metric="acc")
    assert acc["ours_mean"] == pytest.approx(60.0) and acc["ours_n"] == 2 and acc["paper"] == pytest.approx(57.02)
    orderings = table5_orderings(df).set_index(["preset", "delta_mu"])
    assert orderings.loc[("as_written", "0.5"), "acc_holds"] and orderings.loc[("as_written", "0.5"), "pdist_holds"]
    assert not orderings.loc[("as_written", "2"), "acc_holds"]
    assert not orderings.loc[("as_written", "2"), "pdist_holds"]
    assert cell(df, preset="as_written", delta_mu="4", target="OneHot", metric="acc")["status"] == NOT_RUN

    prefix = tmp_path / "table5"
    make_table(5, [good, bad], PAPER_DIR, str(prefix))
    md = Path(f"{prefix}.md").read_text()
    assert "L2 over the test set" in md
    assert "as_written, Δμ = 0.5: accuracy P* ≥ MCMI ≥ MLL ≥ one-hot holds" in md
    assert "as_written, Δμ = 2: accuracy P* ≥ MCMI ≥ MLL ≥ one-hot does NOT hold" in md


def test_table5_presets_are_separate_sections_beside_the_same_paper_cells(tmp_path: Path) -> None:
    written = synthetic(tmp_path, 1, GOOD_ACC, GOOD_PDIST)
    authors = synthetic(tmp_path, 1, {t: [a + 10 for a in v] for t, v in GOOD_ACC.items()}, GOOD_PDIST,
                        preset="authors_code")
    df = build_table(5, [written, authors], PAPER_DIR)
    for preset, ours in (("as_written", 61.0), ("authors_code", 71.0)):
        row = cell(df, preset=preset, delta_mu="1", target="GroundTruth", metric="acc")
        assert row["status"] == OK and row["paper"] == pytest.approx(69.68)
        assert row["ours_mean"] == pytest.approx(ours) and row["diff"] == pytest.approx(ours - 69.68)
    prefix = tmp_path / "table5"
    make_table(5, [written, authors], PAPER_DIR, str(prefix))
    md = Path(f"{prefix}.md").read_text()
    assert md.index("## as_written, Δμ = 0.5") < md.index("## as_written, Δμ = 1") < md.index("## authors_code, Δμ = 0.5")
    assert "authors_code, Δμ = 1: accuracy P* ≥ MCMI ≥ MLL ≥ one-hot holds" in md


def test_table5_reduced_scale_run_never_sits_beside_paper_numbers(tmp_path: Path) -> None:
    """A demo/test-scale run (fewer points, epochs or seeds) shows '—' for the paper and no Δ."""
    demo = synthetic(tmp_path, 1, GOOD_ACC, GOOD_PDIST, scale="reduced")
    unknown = write_metrics(tmp_path, "old", {"stage": "synthetic", "delta_mu": 4},   # says nothing of its scale
                            {"records": [{"seed": 0, "target": "OneHot", "test_acc": 40.0, "pdist_l2": 3.0}]})
    df = build_table(5, [demo, unknown], PAPER_DIR)
    paper_cell = cell(df, preset="as_written", delta_mu="1", target="GroundTruth", metric="acc")
    assert paper_cell["status"] == NOT_RUN and paper_cell["ours_n"] == 0
    for delta_mu, target in (("1", "GroundTruth"), ("4", "OneHot")):
        ours = cell(df, preset="as_written [reduced scale]", delta_mu=delta_mu, target=target, metric="acc")
        assert ours["status"] == NO_PAPER and math.isnan(ours["paper"]) and math.isnan(ours["diff"])
    prefix = tmp_path / "table5"
    make_table(5, [demo], PAPER_DIR, str(prefix))
    md = Path(f"{prefix}.md").read_text()
    section = md.split("## as_written [reduced scale], Δμ = 1")[1].split("##")[0]
    truth = next(line for line in section.splitlines() if line.startswith("| P* (ground truth) |"))
    assert f"61.00 ± 1.41 (2) | {DASH} |  |" in truth


def test_table6_lambda_star(tmp_path: Path) -> None:
    path = write_metrics(tmp_path, "select", {"stage": "select_lambda", "teacher": "resnet56", "dataset": "cifar100"},
                         {"lambda_grid": [0.1, 0.15], "scores": {"0.1": 70.2, "0.15": 70.9},
                          "score_name": "val_acc", "lambda_star": 0.15})
    df = build_table(6, [path], PAPER_DIR)
    star = cell(df, dataset="CIFAR-100", teacher="resnet56", metric="lambda_star")
    assert star["ours_mean"] == pytest.approx(0.15) and star["paper"] == pytest.approx(0.15)
    assert star["diff"] == pytest.approx(0.0)
    assert cell(df, dataset="CIFAR-100", teacher="vgg13", metric="lambda_star")["status"] == NOT_RUN
    assert cell(df, teacher="resnet56", metric="score: val_acc", lam="0.15")["status"] == NO_PAPER
    assert cell(df, dataset="ImageNet", teacher="resnet34", metric="lambda_star")["paper"] == pytest.approx(0.1)


def test_tables_2_3_4_7(tmp_path: Path) -> None:
    imagenet = [student(tmp_path, "in_kd", 71.5, teacher="resnet34", student="resnet18", dataset="imagenet"),
                measure(tmp_path, "in_t", 71.0, 0.86, -0.62, teacher="resnet34", variant="MCMI", dataset="imagenet")]
    df2 = build_table(2, imagenet, PAPER_DIR)
    assert cell(df2, block="student", teacher="resnet34", method="KD", variant="MCMI",
                metric="student_top5")["ours_mean"] == pytest.approx(91.5)
    assert cell(df2, block="teacher", teacher="resnet34", variant="MCMI", metric="teacher_top1")["paper"] == 71.62

    few = [student(tmp_path, "few", 57.0, alpha_percent=5), student(tmp_path, "few_mll", 52.0, alpha_percent=5,
                                                                    variant="MLL")]
    df3 = build_table(3, few, PAPER_DIR)
    assert cell(df3, method="KD", alpha_percent="5", variant="MCMI")["paper"] == pytest.approx(58.02)
    assert cell(df3, method="KD", alpha_percent="5", variant=GAIN)["ours_mean"] == pytest.approx(5.0)
    assert len(build_table(1, few, PAPER_DIR).query("ours_n > 0")) == 0  # few-shot runs stay out of Table 1

    es = [measure(tmp_path, "es", 68.0, 0.99, -0.9, teacher="resnet34", variant="ES", dataset="imagenet"),
          student(tmp_path, "es_kd", 71.2, teacher="resnet34", student="resnet18", variant="ES", dataset="imagenet")]
    df4 = build_table(4, es, PAPER_DIR)
    assert cell(df4, teacher="resnet34", variant="ES", metric="student_acc")["paper"] == pytest.approx(71.25)
    assert cell(df4, teacher="resnet34", variant="ES", metric="teacher_cmi")["ours_n"] == 1

    lam = [measure(tmp_path, "lam0", 72.0, 0.15, -0.11, lam=0), student(tmp_path, "lam0_kd", 70.5, lam=0, variant="MLL")]
    df7 = build_table(7, lam, PAPER_DIR)
    assert cell(df7, lam="0", metric="student_acc")["paper"] == pytest.approx(70.62)
    assert cell(df7, lam="0", metric="teacher_cmi")["ours_mean"] == pytest.approx(0.15)
    assert cell(df7, lam="0.25", metric="teacher_ll")["status"] == NOT_RUN
    for n, paths in ((2, imagenet), (3, few), (4, es), (7, lam)):
        make_table(n, paths, PAPER_DIR, str(tmp_path / f"table{n}"))
        assert Path(tmp_path / f"table{n}.md").read_text().count("|") > 10


def test_runs_on_another_dataset_never_sit_beside_paper_numbers(tmp_path: Path) -> None:
    demo = student(tmp_path, "demo", 55.0, dataset="digits")            # paper names, demo data
    df = build_table(1, [demo], PAPER_DIR)
    assert cell(df, teacher="resnet56", student="resnet20", method="KD", variant="MCMI")["status"] == NOT_RUN
    ours = cell(df, teacher="resnet56 [digits]", student="resnet20 [digits]", method="KD", variant="MCMI")
    assert ours["status"] == NO_PAPER and ours["ours_mean"] == pytest.approx(55.0)


def test_missing_key_names_file_and_key(tmp_path: Path) -> None:
    path = write_metrics(tmp_path, "broken", {"stage": "student", "teacher": "resnet56", "student": "resnet20",
                                              "method": "KD", "variant": "MCMI"}, {"test_top5": 90.0})
    with pytest.raises(ValueError, match=r"broken\.json.*final\.test_acc"):
        build_table(1, [path], PAPER_DIR)
    no_variant = student(tmp_path, "no_variant", 70.0, variant=None)
    with pytest.raises(ValueError, match=r"no_variant\.json.*run\.variant"):
        build_table(1, [no_variant], PAPER_DIR)
    no_run = tmp_path / "no_run.json"
    no_run.write_text(json.dumps({"final": {}}))
    with pytest.raises(ValueError, match="'run'"):
        build_table(1, [str(no_run)], PAPER_DIR)


def test_table1x_matches_each_methods_own_published_numbers(tmp_path: Path) -> None:
    runs = [student(tmp_path, "itrd_mll", 71.0, method="ITRD", variant="MLL"),
            student(tmp_path, "itrd_mcmi", 71.5, method="ITRD", variant="MCMI"),
            student(tmp_path, "mimkd_mll", 70.0, method="MIMKD", variant="MLL"),
            student(tmp_path, "itrd_digits", 40.0, method="ITRD", variant="MLL", dataset="digits")]
    df = build_table("1x", runs, PAPER_DIR)
    itrd = cell(df, block="student", teacher="resnet56", student="resnet20", method="ITRD", variant="MLL")
    assert itrd["paper"] == pytest.approx(71.47) and itrd["status"] == OK   # roymiles/ITRD README
    assert itrd["section"] == "same_arch"
    gain = cell(df, teacher="resnet56", student="resnet20", method="ITRD", variant=GAIN)
    assert gain["ours_mean"] == pytest.approx(0.5) and math.isnan(gain["paper"])
    mimkd = cell(df, teacher="resnet56", student="resnet20", method="MIMKD", variant="MLL")
    assert mimkd["paper"] == pytest.approx(71.31) and mimkd["status"] == OK   # MIMKD paper, its own teacher
    assert cell(df, block="teacher", teacher="resnet56", variant="MLL", metric="teacher_acc")["paper"] == 72.34
    digits = cell(df, teacher="resnet56 [digits]", student="resnet20 [digits]", method="ITRD", variant="MLL")
    assert digits["status"] == NO_PAPER
    assert "note" not in df   # no run reports method_info
    make_table("1x", runs, PAPER_DIR, str(tmp_path / "table1x"))
    md = (tmp_path / "table1x.md").read_text()
    assert md.startswith("# Table 1x (beyond the paper)") and "| ITRD | 71.00 (1) | 71.47 | -0.47 |" in md


def test_hsakd_rows_say_which_heads_were_used(tmp_path: Path) -> None:
    info = {"method_info": {"heads": "student reference, teacher reference"}}
    paths = [write_metrics(tmp_path, f"hsakd_{v}", {"stage": "student", "dataset": "cifar100", "teacher": "resnet56",
                                                    "student": "resnet20", "method": "HSAKD", "variant": v, "seed": 0},
                           {"test_acc": acc, **info}) for v, acc in (("MLL", 71.0), ("MCMI", 72.0))]
    paths.append(student(tmp_path, "kd", 70.0))
    df = build_table(1, paths, PAPER_DIR)
    assert cell(df, method="HSAKD", variant="MLL", teacher="resnet56")["note"] == "heads: student reference, teacher reference"
    assert cell(df, method="KD", variant="MCMI", teacher="resnet56")["note"] == ""
    make_table(1, paths, PAPER_DIR, str(tmp_path / "table1"))
    md = (tmp_path / "table1.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| HSAKD"))
    assert row.startswith("| HSAKD [heads: student reference, teacher reference] | 71.00 (1) |")
    assert "+1.00 (1)" in row   # the MCMI − MLL gain stays in the same row
