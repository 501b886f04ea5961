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
