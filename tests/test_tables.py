"""Tests of the tables of mcmi.report on small synthetic metrics files (all numbers are fake test fixtures)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mcmi.report import build_table, make_table
from mcmi.report.cells import GAIN, NO_PAPER, NOT_PAIRED, NOT_RUN, OK, Spread
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
    return write_metrics(directory, name, {**base, **run}, {"test_acc": acc, "test_top5": min(acc + 20, 100.0)})


def measure(directory: Path, name: str, acc: float, cmi: float, ll: float, **run: Any) -> str:
    """A fake teacher measurement at T = 1."""
    base = {"stage": "measure", "dataset": "cifar100", "teacher": "resnet56", "variant": "MLL", "temperature": 1}
    return write_metrics(directory, name, {**base, **run},
                         {"test_acc": acc, "train_cmi": cmi, "train_ll": ll, "test_top5": min(acc + 15, 100.0)})


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
    assert gain["ours_mean"] == pytest.approx(70.0 - 69.5)     # paired: only seed 0 has both teachers
    assert gain["ours_n"] == 1 and math.isnan(gain["ours_std"]) and math.isnan(gain["ours_ci_low"])

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
    # sections we ran come first, in the paper's order; the paper's other sections follow under one heading
    assert (md.index("## as_written, Δμ = 1") < md.index("## authors_code, Δμ = 1") < md.index("## Paper cells not run")
            < md.index("### as_written, Δμ = 0.5") < md.index("### authors_code, Δμ = 0.5"))
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
    # nothing of ours beside the paper: the summary adds the paper's own differences once
    assert ("- **MCMI − MLL teacher** (Acc (%), the paper): no cell of ours has both sides; paper on all its cells: "
            "better in 4 of 4, mean +0.39") in md


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


# ------------------------------------------------------------------ paired differences and the summary
T_975 = {1: 12.706204736174707, 2: 4.302652729749464, 3: 3.182446305284263}   # scipy.stats.t.ppf(0.975, df)


def test_paired_differences_with_t_intervals(tmp_path: Path) -> None:
    """MCMI − MLL per seed: KD has seeds 0-2 on both sides; CRD seeds {0, 1, 2} against {1, 2, 3} pairs
    seeds 1 and 2 only; DKD has one seed on each side (the difference, no interval)."""
    runs = [student(tmp_path, f"kd_{v}_{seed}", acc, seed=seed, variant=v)
            for v, accs in (("MLL", (70.0, 71.0, 69.0)), ("MCMI", (71.0, 71.5, 71.0)))
            for seed, acc in enumerate(accs)]
    runs += [student(tmp_path, f"crd_mll_{seed}", 60.0 + seed, seed=seed, method="CRD", variant="MLL")
             for seed in (0, 1, 2)]
    runs += [student(tmp_path, f"crd_mcmi_{seed}", 63.0 + 2 * seed, seed=seed, method="CRD") for seed in (1, 2, 3)]
    runs += [student(tmp_path, "dkd_mll", 72.0, method="DKD", variant="MLL"), student(tmp_path, "dkd_mcmi", 72.5,
                                                                                      method="DKD")]
    df = build_table(1, runs, PAPER_DIR)

    kd = cell(df, block="student", teacher="resnet56", method="KD", variant=GAIN)
    differences = [1.0, 0.5, 2.0]
    mean, std = 7 / 6, math.sqrt(sum((d - 7 / 6) ** 2 for d in differences) / 2)
    half = T_975[2] * std / math.sqrt(3)
    assert (kd["ours_mean"], kd["ours_std"], kd["ours_n"]) == (pytest.approx(mean), pytest.approx(std), 3)
    assert (kd["ours_ci_low"], kd["ours_ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert kd["paper"] == pytest.approx(70.84 - 70.66) and kd["diff"] == pytest.approx(mean - 0.18)

    crd = cell(df, block="student", teacher="resnet56", method="CRD", variant=GAIN)
    assert crd["ours_n"] == 2 and crd["ours_mean"] == pytest.approx(((65 - 61) + (67 - 62)) / 2)   # seeds 1, 2
    assert crd["ours_ci_high"] - crd["ours_ci_low"] == pytest.approx(2 * T_975[1] * math.sqrt(0.5) / math.sqrt(2))
    dkd = cell(df, block="student", teacher="resnet56", method="DKD", variant=GAIN)
    assert dkd["ours_n"] == 1 and dkd["ours_mean"] == pytest.approx(0.5)
    assert math.isnan(dkd["ours_std"]) and math.isnan(dkd["ours_ci_low"]) and math.isnan(dkd["ours_ci_high"])

    make_table(1, runs, PAPER_DIR, str(tmp_path / "table1"))
    md = (tmp_path / "table1.md").read_text()
    kd_row = next(line for line in md.splitlines() if line.startswith("| KD |"))
    assert f"+1.17 ± {std:.2f} (3) [{mean - half:+.2f}, {mean + half:+.2f}] | +0.18 |" in kd_row
    dkd_row = next(line for line in md.splitlines() if line.startswith("| DKD |"))
    assert "| +0.50 (1) | +0.34 |" in dkd_row
    csv = pd.read_csv(tmp_path / "table1.csv", keep_default_na=False, dtype=str)
    kd_csv = csv[(csv["method"] == "KD") & (csv["variant"] == GAIN) & (csv["block"] == "student")
                 & (csv["teacher"] == "resnet56") & (csv["student"] == "resnet20")].iloc[0]
    assert float(kd_csv["ours_ci_low"]) == pytest.approx(mean - half) and kd_csv["ours_n"] == "3"
    tex = (tmp_path / "table1.tex").read_text()
    assert f"+1.17 $\\pm$ {std:.2f} (3) [{mean - half:+.2f}, {mean + half:+.2f}]" in tex

    # the summary: all seven pairs pooled (same as a t-interval over the seven differences)
    pooled = [*differences, 4.0, 5.0, 0.5]
    p_mean = sum(pooled) / 6
    p_std = math.sqrt(sum((d - p_mean) ** 2 for d in pooled) / 5)
    from scipy import stats
    p_half = stats.t.ppf(0.975, 5) * p_std / math.sqrt(6)
    first = md.split("\n\n")[2].splitlines()[0]
    assert first.startswith("- **MCMI − MLL** (Student Acc (%)): MCMI better in 3 of 3 cells of ours, mean paired "
                            f"difference {p_mean:+.2f} (95 % CI {p_mean - p_half:+.2f} to {p_mean + p_half:+.2f}, "
                            "n = 6 pairs); paper on the same cells: better in 3 of 3")


def test_disjoint_seeds_give_no_difference(tmp_path: Path) -> None:
    runs = [student(tmp_path, "mll", 70.0, seed=0, variant="MLL"), student(tmp_path, "mcmi", 71.0, seed=1)]
    gain = cell(build_table(1, runs, PAPER_DIR), block="student", teacher="resnet56", method="KD", variant=GAIN)
    assert gain["status"] == NOT_PAIRED and gain["ours_n"] == 0 and math.isnan(gain["ours_mean"])
    make_table(1, runs, PAPER_DIR, str(tmp_path / "table1"))
    assert "| no common seed | +0.18 |" in (tmp_path / "table1.md").read_text()


def test_spread_pooled_equals_the_spread_of_all_values() -> None:
    parts = [[1.0, 2.5, 0.5], [4.0], [-1.0, 3.0]]
    pooled = Spread.pooled((Spread.of(p).mean, Spread.of(p).std, Spread.of(p).n) for p in parts)
    direct = Spread.of([v for p in parts for v in p])
    assert (pooled.mean, pooled.std, pooled.n, pooled.low, pooled.high) == pytest.approx(
        (direct.mean, direct.std, direct.n, direct.low, direct.high))
    assert Spread.of([2.0]).n == 1 and math.isnan(Spread.of([2.0]).low)


# ------------------------------------------------------------------------------- sections and signature
def _demo_pair(tmp_path: Path, mcmi_cmi: float, mcmi_ll: float) -> list[str]:
    """The demo's digits pair: both teachers measured, KD students of seeds 0 and 1 with each teacher."""
    digits = {"dataset": "digits", "teacher": "resnet14"}
    runs = [measure(tmp_path, "t_mll", 91.0, 0.20, -0.21, **digits),
            measure(tmp_path, "t_mcmi", 90.0, mcmi_cmi, mcmi_ll, variant="MCMI", **digits)]
    runs += [student(tmp_path, f"kd_{v}_{seed}", 80.0 + seed + (v == "MCMI"), seed=seed, variant=v, student="resnet8",
                     **digits) for v in ("MLL", "MCMI") for seed in (0, 1)]
    return runs


def test_sections_with_our_cells_come_first(tmp_path: Path) -> None:
    make_table(1, _demo_pair(tmp_path, 0.25, -0.30), PAPER_DIR, str(tmp_path / "table1"))
    md = (tmp_path / "table1.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[0] == "## resnet14 [digits] → resnet8 [digits] (ours only)"
    assert sections[1] == "## Paper cells not run (12 sections)"
    assert sections[2] == "## Where these numbers come from" and len(sections) == 3      # always last
    assert md.index("### resnet56 → resnet20 (same-arch)") > md.index("## Paper cells not run")
    assert md.index("- **MCMI − MLL**") < md.index("- **ours** =") < md.index("## resnet14 [digits]")
    html = (tmp_path / "table1.html").read_text()
    assert html.index("<h2>resnet14 [digits] → resnet8 [digits] (ours only)</h2>") < html.index("<details>")


def test_signature_note_when_the_mcmi_teacher_has_a_lower_cmi(tmp_path: Path) -> None:
    low = tmp_path / "low"
    low.mkdir()
    make_table(1, _demo_pair(low, 0.16, -0.14), PAPER_DIR, str(low / "table1"))
    md = (low / "table1.md").read_text()
    section = md.split("## resnet14 [digits] → resnet8 [digits] (ours only)")[1].split("\n## ")[0]
    assert ("**Note: the paper's signature does not hold here**: CMI 0.1600 vs 0.2000, LL -0.1400 vs -0.2100 "
            "(MCMI vs MLL teacher); its CMI is not above the MLL teacher's") in section
    assert "Its LL is above the MLL teacher's: the fine-tuning went on fitting the training set" in section
    assert "holds for 0 of 1 teacher of ours; **not for resnet14 [digits]**" in md.split("\n\n")[2]
    df = build_table(1, _demo_pair(low, 0.16, -0.14), PAPER_DIR)
    assert cell(df, block="teacher", teacher="resnet14 [digits]", variant="MCMI", metric="teacher_cmi")[
        "signature"] == "not above MLL"
    assert cell(df, block="teacher", teacher="resnet14 [digits]", variant="MCMI", metric="teacher_ll")[
        "signature"] == "not below MLL"
    teacher_gain = cell(df, block="teacher", teacher="resnet14 [digits]", variant=GAIN, metric="teacher_cmi")
    assert teacher_gain["ours_mean"] == pytest.approx(-0.04) and teacher_gain["ours_n"] == 1

    high = tmp_path / "high"
    high.mkdir()
    make_table(1, _demo_pair(high, 0.25, -0.30), PAPER_DIR, str(high / "table1"))
    md = (high / "table1.md").read_text()
    assert "Note: the paper's signature" not in md
    assert ("Signature (the MCMI teacher's training CMI above the MLL teacher's, its LL below): holds in our runs: "
            "CMI 0.2500 vs 0.2000, LL -0.3000 vs -0.2100") in md
    assert "holds for 1 of 1 teacher of ours." in md


def test_table4_compares_early_stopped_and_mcmi_teachers_with_the_mll_one(tmp_path: Path) -> None:
    imagenet = {"dataset": "imagenet", "teacher": "resnet34"}
    runs = [measure(tmp_path, f"t_{v}", acc, cmi, ll, variant=v, **imagenet)
            for v, acc, cmi, ll in (("MLL", 73.0, 0.70, -0.56), ("ES", 68.0, 0.99, -0.92), ("MCMI", 71.0, 0.86, -0.62))]
    runs += [student(tmp_path, f"s_{v}_{seed}", acc + seed, seed=seed, variant=v, student="resnet18", **imagenet)
             for v, acc in (("MLL", 71.0), ("ES", 71.5), ("MCMI", 71.25)) for seed in (0, 1)]
    df = build_table(4, runs, PAPER_DIR)
    es = cell(df, teacher="resnet34", variant="ES − MLL", metric="student_acc")
    assert es["ours_mean"] == pytest.approx(0.5) and es["ours_n"] == 2 and es["paper"] == pytest.approx(71.25 - 71.03)
    assert cell(df, teacher="resnet34", variant=GAIN, metric="teacher_cmi")["ours_mean"] == pytest.approx(0.16)
    make_table(4, runs, PAPER_DIR, str(tmp_path / "table4"))
    summary = (tmp_path / "table4.md").read_text().split("\n\n")[2]
    assert summary.startswith("- **ES − MLL** (Student Acc (%)): ES better in 1 of 1 cell of ours")
    assert "- **MCMI − MLL** (Student Acc (%)): MCMI better in 1 of 1 cell of ours" in summary
    assert "holds for 1 of 1 teacher of ours." in summary


def test_table7_lambda_zero_control_is_a_row_of_its_own(tmp_path: Path) -> None:
    """The MLL teacher, the λ = 0 control and the λ rows; 'λ = 0 − MLL' (fine-tuning alone) and
    'λ − λ = 0' (the CMI term) as paired differences; the MLL row's paper numbers are Table 1's."""
    runs = [measure(tmp_path, "mll", 72.0, 0.16, -0.10)]
    runs += [student(tmp_path, f"kd_mll_{seed}", 70.0 + seed, seed=seed, variant="MLL") for seed in (0, 1)]
    for lam, cmi, ll, acc in ((0, 0.15, -0.09, 70.5), (0.1, 0.30, -0.20, 71.0)):
        runs.append(measure(tmp_path, f"m{lam}", 71.5, cmi, ll, variant="MCMI", lam=lam))
        runs += [student(tmp_path, f"kd{lam}_{seed}", acc + seed * (1 + lam * 10), seed=seed, lam=lam)
                 for seed in (0, 1)]
    df = build_table(7, runs, PAPER_DIR)
    mll = cell(df, variant="MLL", metric="student_acc")
    assert mll["paper"] == pytest.approx(70.66) and mll["ours_mean"] == pytest.approx(70.5) and mll["lam"] == ""
    assert cell(df, variant="MLL", metric="teacher_cmi")["paper"] == pytest.approx(0.1583)
    control = cell(df, variant="MCMI_lam0", metric="student_acc")
    assert control["paper"] == pytest.approx(70.62) and control["lam"] == "0"
    tuning = cell(df, variant="λ = 0 − MLL (fine-tuning alone)", metric="student_acc")
    assert tuning["ours_mean"] == pytest.approx(0.5) and tuning["ours_n"] == 2
    assert tuning["paper"] == pytest.approx(70.62 - 70.66)
    term = cell(df, variant="λ = 0.1 − λ = 0", metric="student_acc")
    assert term["ours_mean"] == pytest.approx((0.5 + 1.5) / 2) and term["ours_std"] == pytest.approx(math.sqrt(0.5))
    assert term["paper"] == pytest.approx(70.81 - 70.62)
    assert cell(df, variant="λ = 0.1 − λ = 0", metric="teacher_cmi")["ours_mean"] == pytest.approx(0.15)
    assert cell(df, variant="MCMI_lam0.1", metric="teacher_cmi")["signature"] == "above MCMI_lam0"

    make_table(7, runs, PAPER_DIR, str(tmp_path / "table7"))
    md = (tmp_path / "table7.md").read_text()
    rows = [line.split(" | ")[0][2:] for line in md.split("## resnet56 → resnet20, KD")[1].splitlines()
            if line.startswith("| ") and not line.startswith("| Teacher")]
    assert rows[:3] == ["MLL teacher (not fine-tuned)", "λ = 0: control (fine-tuned without the CMI term)", "λ = 0.005"]
    assert rows.index("λ = 0.1") < rows.index("λ = 0 − MLL (fine-tuning alone)") < rows.index("λ = 0.1 − λ = 0")
    summary = md.split("\n\n")[2]
    assert summary.startswith("- **λ = 0 − MLL (fine-tuning alone)** (Student Acc (%)): λ = 0 control better in 1 of 1")
    assert "- **λ = 0.1 − λ = 0** (Student Acc (%)): λ = 0.1 better in 1 of 1 cell of ours" in summary
    assert "**The CMI term's signature** (resnet56: training CMI above the λ = 0 control's, LL below): holds for λ = 0.1." in summary


def test_table5_summary_per_preset_pairs_students_by_seed(tmp_path: Path) -> None:
    path = synthetic(tmp_path, 1, GOOD_ACC, GOOD_PDIST)
    df = build_table(5, [path], PAPER_DIR)
    gain = cell(df, preset="as_written", delta_mu="1", target="MCMI − MLL teacher", metric="acc")
    assert gain["ours_mean"] == pytest.approx(1.0) and gain["ours_n"] == 2 and gain["paper"] == pytest.approx(69.32 - 68.88)
    make_table(5, [path], PAPER_DIR, str(tmp_path / "table5"))
    summary = (tmp_path / "table5.md").read_text().split("\n\n")[2]
    assert summary.startswith("- **MCMI − MLL teacher** (Acc (%), as_written): MCMI teacher better in 1 of 1 cell")
    assert "- **MCMI − MLL teacher** (Pdist, as_written): MCMI teacher better in 1 of 1 cell" in summary   # lower


# ------------------------------------------------------------------------------ Table 8: per-class CMI
def _class_cmi(directory: Path, name: str, dataset: str, variant: str, values: dict[str, float]) -> str:
    names = {"goldfish": "goldfish", "bee_eater": "bee eater", "toy_terrier": "toy terrier",
             "mountain_tent": "mountain tent"}
    classes = [{"class": key, "name": names[key], "images": 1300, "cmi": value} for key, value in values.items()]
    return write_metrics(directory, name, {"stage": "class_cmi", "dataset": dataset, "teacher": "resnet50",
                                           "variant": variant}, {"split": "train", "classes": classes})


def test_table8_per_class_cmi_beside_the_paper_with_mcmi_minus_mll(tmp_path: Path) -> None:
    """ImageNet runs sit beside the paper's four classes (goldfish 0.2896 MLL, 0.4173 MCMI), MCMI − MLL per
    class; a demo run's classes carry their dataset and are never matched."""
    paths = [_class_cmi(tmp_path, "mll", "imagenet", "MLL", {"goldfish": 0.3, "toy_terrier": 0.4}),
             _class_cmi(tmp_path, "mcmi", "imagenet", "MCMI", {"goldfish": 0.5, "toy_terrier": 0.35}),
             _class_cmi(tmp_path, "demo", "demo_imagenet", "MLL", {"goldfish": 0.7})]
    df = build_table(8, paths, PAPER_DIR)
    goldfish = cell(df, **{"class": "goldfish", "variant": "MLL"})
    assert (goldfish["paper"], goldfish["ours_mean"], goldfish["status"]) == (0.2896, 0.3, OK)
    gain = cell(df, **{"class": "goldfish", "variant": GAIN})
    assert gain["ours_mean"] == pytest.approx(0.2) and gain["paper"] == pytest.approx(0.4173 - 0.2896)
    assert cell(df, **{"class": "toy terrier", "variant": GAIN})["ours_mean"] == pytest.approx(-0.05)
    assert cell(df, **{"class": "bee eater", "variant": "MCMI"})["status"] == NOT_RUN
    demo = cell(df, **{"class": "goldfish [demo_imagenet]", "variant": "MLL"})
    assert demo["status"] == NO_PAPER and math.isnan(demo["paper"])
    make_table(8, paths, PAPER_DIR, tmp_path / "table8")
    md = (tmp_path / "table8.md").read_text()
    assert md.startswith("# Table 8") and "**MCMI − MLL** (CMI (nats)): MCMI better in 1 of 2 cells of ours" in md
    assert md.index("## ImageNet") < md.index("## demo_imagenet (not ImageNet: never matched to the paper)")
    assert "| goldfish | 0.3000 (1) | 0.2896 | +0.0104 |" in md


def test_ranges_know_loss_terms_and_entropies(tmp_path: Path) -> None:
    """An MCMI teacher's per-epoch loss term 'loss_cmi' (-λ·KL, negative) is not a CMI; an entropy is >= 0."""
    from mcmi.report.records import load_metrics

    history = [{"epoch": 1, "test_acc": 60.0, "loss_ce": 1.2, "loss_cmi": -0.004}]
    teacher = write_metrics(tmp_path, "mcmi", {"stage": "mcmi", "teacher": "resnet56", "variant": "MCMI", "lam": 0.1},
                            {"test_acc": 60.0, "epochs": 1}, history)
    assert load_metrics([teacher])[0].history[0]["loss_cmi"] == -0.004
    bad = measure(tmp_path, "negative_entropy", 70.0, 0.2, -0.3)
    data = json.loads(Path(bad).read_text())
    data["final"]["train_entropy"] = -0.1
    Path(bad).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"'train_entropy' is -0\.1, expected an entropy >= 0 \(nats\)"):
        load_metrics([bad])
