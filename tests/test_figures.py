"""Tests of the figures of mcmi.report on small synthetic metrics files (all numbers are fake test fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import mcmi.report.figures.common
from mcmi.report.figures import lr_decay_epochs, make_figure, row_normalise


def write_metrics(directory: Path, name: str, run: dict[str, Any], final: dict[str, Any],
                  history: list[dict[str, Any]] | None = None) -> str:
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"run": run, "final": final, "history": history or []}))
    return str(path)


def assert_written(prefix: Path) -> None:
    for suffix in ("pdf", "png"):
        assert Path(f"{prefix}.{suffix}").stat().st_size > 1000


def test_figure1_temperature_sweep(tmp_path: Path) -> None:
    paths = []
    for teacher in ("resnet56", "resnet110"):
        for temperature in (1, 2, 4):
            paths.append(write_metrics(tmp_path, f"m_{teacher}_{temperature}",
                                       {"stage": "measure", "teacher": teacher, "variant": "MLL",
                                        "temperature": temperature},
                                       {"test_acc": 72.0, "train_cmi": 0.1 * temperature, "train_ll": -0.1}))
            for seed in (0, 1):
                paths.append(write_metrics(tmp_path, f"s_{teacher}_{temperature}_{seed}",
                                           {"stage": "student", "teacher": teacher, "student": "resnet20",
                                            "method": "KD", "variant": "MLL", "seed": seed,
                                            "temperature": temperature},
                                           {"test_acc": 70.0 + temperature / 10 + seed}))
    make_figure(1, paths, str(tmp_path / "fig" / "figure1"))
    assert_written(tmp_path / "fig" / "figure1")


def test_figure2_training_curves(tmp_path: Path) -> None:
    history = [{"epoch": e, "lr": 0.05 if e < 6 else 0.005, "train_cmi": 0.5 - 0.03 * e, "train_ll": -2 + 0.2 * e}
               for e in range(1, 11)]
    paths = [write_metrics(tmp_path, f"t{seed}", {"stage": "teacher", "teacher": "wrn_40_2", "seed": seed},
                           {"test_acc": 75.0}, history) for seed in (0, 1)]
    make_figure(2, paths, str(tmp_path / "figure2"))
    assert_written(tmp_path / "figure2")
    assert lr_decay_epochs(pd.DataFrame(history)) == [6]
    cosine = pd.DataFrame({"epoch": range(1, 6), "lr": [0.05, 0.045, 0.035, 0.02, 0.01]})
    assert lr_decay_epochs(cosine) == []


def test_figure2_missing_key(tmp_path: Path) -> None:
    path = write_metrics(tmp_path, "nocmi", {"stage": "teacher", "teacher": "resnet56"}, {"test_acc": 70.0},
                         [{"epoch": 1, "train_ll": -1.0}])
    with pytest.raises(ValueError, match=r"nocmi\.json.*history\[\]\.train_cmi"):
        make_figure(2, [path], str(tmp_path / "bad"))


def test_confusion_figure(tmp_path: Path) -> None:
    confusion = (np.eye(4) * 20 + 1).tolist()
    paths = [write_metrics(tmp_path, f"zs_{variant}",
                           {"stage": "student", "teacher": "resnet56", "student": "resnet20", "method": "KD",
                            "variant": variant, "removed_classes": [1, 3]},
                           {"test_acc": 50.0, "confusion": confusion}) for variant in ("MLL", "MCMI")]
    make_figure(4, paths, str(tmp_path / "confusion"))
    assert_written(tmp_path / "confusion")
    assert np.allclose(row_normalise(np.array(confusion)).sum(axis=1), 1.0)
    broken = write_metrics(tmp_path, "zs_broken", {"stage": "student", "student": "resnet20"},
                           {"confusion": confusion})
    with pytest.raises(ValueError, match=r"zs_broken\.json.*run\.removed_classes"):
        make_figure(4, [broken], str(tmp_path / "bad"))


def test_figure_titles_carry_the_dataset_tag_of_the_tables(tmp_path: Path, monkeypatch) -> None:
    """A run on another dataset than the paper's is titled as in the tables: 'resnet14 [digits]'."""
    titles: list[str] = []
    save = mcmi.report.figures.common.save

    def keep_titles(fig, out_prefix, **options):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_title())
        save(fig, out_prefix, **options)

    monkeypatch.setattr(mcmi.report.figures.common, "save", keep_titles)
    digits = {"dataset": "digits", "teacher": "resnet14"}
    sweep = [write_metrics(tmp_path, "m", {"stage": "measure", "variant": "MLL", "temperature": 4, **digits},
                           {"test_acc": 90.0, "train_cmi": 0.2, "train_ll": -0.2}),
             write_metrics(tmp_path, "s", {"stage": "student", "student": "resnet8", "method": "KD", "variant": "MLL",
                                           "seed": 0, "temperature": 4, **digits}, {"test_acc": 80.0})]
    make_figure(1, sweep, str(tmp_path / "figure1"))
    history = [{"epoch": e, "lr": 0.05, "train_cmi": 0.2, "train_ll": -0.5} for e in (1, 2)]
    make_figure(2, [write_metrics(tmp_path, "t", {"stage": "teacher", "seed": 0, **digits}, {"test_acc": 90.0},
                                  history)], str(tmp_path / "figure2"))
    confusion = (np.eye(3) * 5 + 1).tolist()
    make_figure(4, [write_metrics(tmp_path, "zs", {"stage": "student", "student": "resnet8", "method": "KD",
                                                   "variant": "MLL", "removed_classes": [1], **digits},
                                  {"test_acc": 50.0, "confusion": confusion})], str(tmp_path / "figure4"))
    paper = write_metrics(tmp_path, "paper", {"stage": "teacher", "seed": 0, "dataset": "cifar100",
                                              "teacher": "resnet56"}, {"test_acc": 70.0}, history)
    make_figure(2, [paper], str(tmp_path / "figure2_cifar"))
    assert titles == ["resnet14 [digits] → resnet8 [digits]", "resnet14 [digits] (MLL training)",
                      "resnet14 [digits] → resnet8 [digits] (MLL, KD; 1 run(s))", "resnet56 (MLL training)"]


def _kd_student(directory: Path, name: str, teacher: str, student: str, variant: str, seed: int, acc: float,
                temperatures: tuple[float, float] | None, dataset: str = "cifar100") -> str:
    """A KD student: with ``temperatures`` (T_t, T_s) in its run block (settings T<t>, Tt<t>_Ts<s>), or
    without, as Table 1's 'full' student, whose temperature is in its recorded hyperparameters."""
    run = {"stage": "student", "dataset": dataset, "teacher": teacher, "student": student, "method": "KD",
           "variant": variant, "seed": seed}
    if temperatures and temperatures[0] == temperatures[1]:
        run["temperature"] = temperatures[0]
    elif temperatures:
        run.update(temperature_teacher=temperatures[0], temperature_student=temperatures[1])
    final = {"test_acc": acc, "method_hparams": {"T": 4, "T_teacher": 4, "T_student": 4, "alpha": 0.9}}
    return write_metrics(directory, name, run, final)


def test_figure1_bars_curve_and_the_table1_cell_note(tmp_path: Path, monkeypatch) -> None:
    """Blue bars (mean, std error bars), a red CMI curve on a right axis, no legend; the T = 4 bar is Table
    1's student ('full'), noted with ours and the paper's Table 1 value (70.66 for resnet56 -> resnet20)."""
    drawn: dict = {}
    save = mcmi.report.figures.common.save

    def keep(fig, out_prefix, **options):
        ax = fig.axes[0]
        drawn["bars"] = [round(p.get_height(), 3) for p in ax.patches]
        drawn["bar_colour"] = ax.patches[0].get_facecolor()[:3]
        drawn["curve"] = [list(line.get_ydata()) for a in fig.axes[1:] for line in a.get_lines()]
        drawn["curve_colour"] = fig.axes[1].get_lines()[0].get_color()
        drawn["legends"] = [a.get_legend() for a in fig.axes]
        drawn["text"] = " ".join(t.get_text() for t in fig.texts)
        save(fig, out_prefix, **options)

    monkeypatch.setattr(mcmi.report.figures.common, "save", keep)
    paths = []
    for t, cmi in ((1, 0.1), (2, 0.3), (4, 0.2)):
        paths.append(write_metrics(tmp_path, f"m{t}", {"stage": "measure", "dataset": "cifar100",
                                                       "teacher": "resnet56", "variant": "MLL", "temperature": t},
                                   {"test_acc": 72.0, "train_cmi": cmi, "train_ll": -0.1}))
        for seed in (0, 1):
            paths.append(_kd_student(tmp_path, f"s{t}_{seed}", "resnet56", "resnet20", "MLL", seed,
                                     69.0 + t / 2 + seed, None if t == 4 else (t, t)))
    make_figure(1, paths, str(tmp_path / "figure1"))
    assert_written(tmp_path / "figure1")
    assert drawn["bars"] == [70.0, 70.5, 71.5]              # means over seeds 0, 1 at T = 1, 2, 4
    assert drawn["curve"] == [[0.1, 0.3, 0.2]]
    import matplotlib.colors
    assert drawn["bar_colour"] == matplotlib.colors.to_rgb("tab:blue") and drawn["curve_colour"] == "tab:red"
    assert all(legend is None for legend in drawn["legends"])
    assert "T = 4, resnet56 → resnet20 is Table 1's KD cell" in drawn["text"]
    assert "ours 71.50 ± 0.71 (n = 2); paper (Table 1) 70.66" in drawn["text"]


def test_figure8_grid_of_pairs_and_student_temperatures(tmp_path: Path, monkeypatch) -> None:
    """Rows = pairs, columns = T_s; an MLL and an MCMI curve over T_t per panel; T_t = T_s = 4 is Table 1's
    cell, noted beside the paper's (MLL 70.66, MCMI 70.84 for resnet56 -> resnet20)."""
    drawn: dict = {}
    save = mcmi.report.figures.common.save

    def keep(fig, out_prefix, **options):
        drawn["titles"] = [ax.get_title() for ax in fig.axes]
        drawn["lines"] = {ax.get_title(): [list(line.get_ydata()) for line in ax.get_lines() if line.get_marker() == "o"] for ax in fig.axes}
        drawn["text"] = " ".join(t.get_text() for t in fig.texts)
        save(fig, out_prefix, **options)

    monkeypatch.setattr(mcmi.report.figures.common, "save", keep)
    paths = []
    for pair in (("resnet56", "resnet20"), ("resnet110", "resnet20")):
        for t_s in (1, 4):
            for t_t in (1, 2, 4):
                for k, variant in enumerate(("MLL", "MCMI")):
                    table1 = t_t == t_s == 4
                    paths.append(_kd_student(tmp_path, f"{pair[0]}_{t_t}_{t_s}_{variant}", *pair, variant, 0,
                                             50 + t_t + 5 * t_s + k, None if table1 else (t_t, t_s)))
    make_figure(8, paths, str(tmp_path / "figure8"))
    assert_written(tmp_path / "figure8")
    assert drawn["titles"] == ["resnet56 → resnet20, $T_s$ = 1", "resnet56 → resnet20, $T_s$ = 4",
                               "resnet110 → resnet20, $T_s$ = 1", "resnet110 → resnet20, $T_s$ = 4"]
    panel = drawn["lines"]["resnet56 → resnet20, $T_s$ = 4"]
    mll, mcmi_curve = panel[0], panel[-1]
    assert list(mll) == [71, 72, 74] and list(mcmi_curve) == [72, 73, 75]   # 50 + T_t + 5 T_s (+1 for MCMI)
    assert "resnet56 → resnet20, MLL teacher is Table 1's KD cell (the same job): ours 74.00 (n = 1); " \
           "paper (Table 1) 70.66" in drawn["text"]
    assert "MCMI teacher is Table 1's KD cell (the same job): ours 75.00 (n = 1); paper (Table 1) 70.84" in drawn["text"]


def test_figure5_teacher_size_panels(tmp_path: Path, monkeypatch) -> None:
    """Per method a row of student accuracy, teacher CMI and LL against the teachers ordered by depth
    (resnet110 after resnet32 whatever the file order), an MLL and an MCMI curve in each."""
    drawn: dict = {}
    save = mcmi.report.figures.common.save

    def keep(fig, out_prefix, **options):
        drawn["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        drawn["lines"] = [[list(line.get_ydata()) for line in ax.get_lines() if line.get_marker() == "o"] for ax in fig.axes]
        save(fig, out_prefix, **options)

    monkeypatch.setattr(mcmi.report.figures.common, "save", keep)
    paths = []
    for depth, teacher in ((110, "resnet110"), (32, "resnet32"), (56, "resnet56")):
        for k, (variant, extra) in enumerate((("MLL", {}), ("MCMI", {"lam": 0.25}))):
            run = {"dataset": "cifar100", "teacher": teacher, "variant": variant, **extra}
            paths.append(write_metrics(tmp_path, f"m{teacher}{variant}", {"stage": "measure", "temperature": 1, **run},
                                       {"test_acc": 70.0, "train_cmi": 0.5 - depth / 1000 + k / 10,
                                        "train_ll": -0.5 + depth / 1000 - k / 10}))
            for method in ("KD", "CRD"):
                paths.append(write_metrics(tmp_path, f"s{teacher}{variant}{method}",
                                           {"stage": "student", "student": "resnet8", "method": method, "seed": 0,
                                            **run}, {"test_acc": 60.0 + depth / 100 + k}))
    make_figure(5, paths, str(tmp_path / "figure5"))
    assert_written(tmp_path / "figure5")
    assert drawn["ticks"] == ["resnet32", "resnet56", "resnet110"]
    kd_acc, kd_cmi = drawn["lines"][0], drawn["lines"][1]
    assert kd_acc[0] == [60.32, 60.56, 61.1] and kd_acc[-1] == [61.32, 61.56, 62.1]     # MLL, MCMI
    assert [round(v, 3) for v in kd_cmi[0]] == [0.468, 0.444, 0.39]


def test_figure7_teacher_cmi_entropy_and_students(tmp_path: Path, monkeypatch) -> None:
    """Per pair: bars of teacher CMI, teacher mean entropy and KD student accuracy for MLL, MCMI, entropy-
    and label-smoothing teachers (in that order); the MLL and MCMI students are Table 1's cells, noted
    beside the paper's (vgg13 -> MobileNetV2: 67.37 and 69.14)."""
    drawn: dict = {}
    save = mcmi.report.figures.common.save

    def keep(fig, out_prefix, **options):
        drawn["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        drawn["bars"] = [[round(p.get_height(), 4) for p in ax.patches] for ax in fig.axes]
        drawn["text"] = " ".join(t.get_text() for t in fig.texts)
        save(fig, out_prefix, **options)

    monkeypatch.setattr(mcmi.report.figures.common, "save", keep)
    teachers = [("LS", {"eps": 0.1}), ("MLL", {}), ("ENT", {"beta": 0.2}), ("MCMI", {})]   # any file order
    paths = []
    for k, (variant, extra) in enumerate(teachers):
        run = {"dataset": "cifar100", "teacher": "vgg13", "variant": variant, **extra}
        paths.append(write_metrics(tmp_path, f"m{variant}", {"stage": "measure", "temperature": 1, **run},
                                   {"test_acc": 74.0, "train_cmi": 0.1 * (k + 1), "train_ll": -0.1,
                                    "train_entropy": 0.5 + k}))
        for seed in (0, 1):
            paths.append(write_metrics(tmp_path, f"s{variant}{seed}",
                                       {"stage": "student", "student": "MobileNetV2", "method": "KD", "seed": seed,
                                        **run}, {"test_acc": 66.0 + k + seed,
                                                 "method_hparams": {"T": 4, "alpha": 0.9}}))
    make_figure(7, paths, str(tmp_path / "figure7"))
    assert_written(tmp_path / "figure7")
    assert drawn["ticks"] == ["MLL", "MCMI (λ*)", "entropy, β = 0.2", "label smoothing, ε = 0.1"]
    cmi, entropy, acc = drawn["bars"]
    assert cmi == [0.2, 0.4, 0.3, 0.1] and entropy == [1.5, 3.5, 2.5, 0.5] and acc == [67.5, 69.5, 68.5, 66.5]
    assert "vgg13 → MobileNetV2, MLL teacher: Table 1's KD cell (the same job): ours 67.50 ± 0.71 (n = 2); " \
           "paper (Table 1) 67.37" in drawn["text"]
    assert "MCMI teacher: Table 1's KD cell (the same job): ours 69.50 ± 0.71 (n = 2); paper (Table 1) 69.14" in drawn["text"]


def test_figure9_students_and_teachers_against_the_number_of_labels(tmp_path: Path, monkeypatch) -> None:
    drawn: dict = {}
    save = mcmi.report.figures.common.save

    def keep(fig, out_prefix, **options):
        drawn["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        drawn["lines"] = [[list(line.get_ydata()) for line in ax.get_lines() if line.get_marker() == "o"] for ax in fig.axes]
        save(fig, out_prefix, **options)

    monkeypatch.setattr(mcmi.report.figures.common, "save", keep)
    paths = []
    for count in (4000, 500):                       # any order: the x-axis is sorted
        for seed in (0, 1):
            for k, (variant, extra) in enumerate((("MLL", {}), ("MCMI", {"lam": 0.25}))):
                run = {"dataset": "cifar10", "teacher": "ResNet50", "variant": variant, "labeled_count": count,
                       "labeled_seed": seed, **extra}
                paths.append(write_metrics(tmp_path, f"t{count}{seed}{variant}",
                                           {"stage": "mcmi" if k else "teacher", **run},
                                           {"test_acc": 50.0 + count / 200 + k}))
                paths.append(write_metrics(tmp_path, f"s{count}{seed}{variant}",
                                           {"stage": "student", "student": "ResNet18", "method": "SemiKD",
                                            "seed": seed, **run}, {"test_acc": 40.0 + count / 100 + k + seed}))
    make_figure(9, paths, str(tmp_path / "figure9"))
    assert_written(tmp_path / "figure9")
    assert drawn["ticks"] == ["500", "4,000"]
    students, teachers = drawn["lines"][0], drawn["lines"][1]
    assert students[0] == [45.5, 80.5] and students[-1] == [46.5, 81.5]      # MLL, MCMI: mean over seeds 0, 1
    assert teachers[0] == [52.5, 70.0] and teachers[-1] == [53.5, 71.0]


def test_figure6_two_embeddings_side_by_side(tmp_path: Path, monkeypatch) -> None:
    drawn: dict = {}
    save = mcmi.report.figures.common.save

    def keep(fig, out_prefix, **options):
        drawn["titles"] = [ax.get_title() for ax in fig.axes if ax.get_title()]
        drawn["points"] = [len(ax.collections[0].get_offsets()) for ax in fig.axes if ax.get_title()]
        save(fig, out_prefix, **options)

    monkeypatch.setattr(mcmi.report.figures.common, "save", keep)
    paths = []
    for k, (variant, extra) in enumerate((("MCMI", {"lam": 0.25}), ("MLL", {}))):
        points = [[float(i), float(i % 7) + k] for i in range(30)]
        paths.append(write_metrics(tmp_path, variant, {"stage": "embedding", "dataset": "cifar10", "teacher": "resnet56",
                                                       "variant": variant, "split": "test", **extra},
                                   {"points": points, "labels": [i % 10 for i in range(30)], "split": "test",
                                    "input": "probs", "perplexity": 15, "init": "pca", "n_points": 30,
                                    "split_acc": 90.0 + k, "split_cmi": 0.1 + 0.3 * (1 - k), "split_ll": -0.2}))
    make_figure(6, paths, str(tmp_path / "figure6"))
    assert_written(tmp_path / "figure6")
    assert drawn["titles"] == ["resnet56 MLL: CMI 0.1000, acc 91.00 %", "resnet56 MCMI (λ = 0.25): CMI 0.4000, acc 90.00 %"]
    assert drawn["points"] == [30, 30]
    bad = write_metrics(tmp_path, "bad", {"stage": "embedding", "teacher": "resnet56", "variant": "MLL"},
                        {"points": [[0.0, 1.0]], "labels": [1, 2], "split_cmi": 0.1, "split_acc": 50.0})
    with pytest.raises(ValueError, match=r"bad\.json: final\.points must hold one \(x, y\) per label"):
        make_figure(6, [bad], str(tmp_path / "bad"))
