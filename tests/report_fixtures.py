"""A small, fixed set of fake metrics files that reaches every table's builder (all numbers are fake).

Kept free of mcmi imports so that the expected tables in tests/data/report_golden/ can be regenerated
by any version of the code (see test_report_golden.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGETS = ("GroundTruth", "MCMI_KD", "MLL_KD", "OneHot")


def _writer(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []

    def write(run: dict[str, Any], final: dict[str, Any]) -> None:
        path = directory / f"m{len(paths):03d}.json"
        path.write_text(json.dumps({"run": run, "final": final, "history": []}))
        paths.append(str(path))

    return write, paths


def write_report_metrics(directory: Path) -> dict[str, list[str]]:
    """Write the fake runs; returns the metrics files of each table id (Table 7's runs carry ``lam``)."""
    write, paths = _writer(directory / "main")
    for ds, teacher, student in (("cifar100", "resnet56", "resnet20"), ("imagenet", "resnet34", "resnet18"),
                                 ("digits", "resnet14", "resnet8")):       # digits: never beside a paper number
        for k, variant in enumerate(("MLL", "MCMI", "ES")):
            write({"stage": "measure", "dataset": ds, "teacher": teacher, "variant": variant, "temperature": 1},
                  {"test_acc": 70.25 + k, "train_cmi": 0.125 + k / 8, "train_ll": -0.5 + k / 16, "test_top5": 90.5})
        write({"stage": "measure", "dataset": ds, "teacher": teacher, "variant": "MLL", "temperature": 4},
              {"test_acc": 70.0, "train_cmi": 0.9, "train_ll": -0.4})                 # Figure 1 only
        for seed in (0, 1):
            for k, method in enumerate(("KD", "CRD", "HSAKD")):
                for j, variant in enumerate(("MLL", "MCMI", "ES")):
                    final = {"test_acc": 69.5 + k + j / 2 + seed / 4, "test_top5": 89.0 + seed}
                    if method == "HSAKD":
                        final["method_info"] = {"heads": "reference"}
                    write({"stage": "student", "dataset": ds, "teacher": teacher, "student": student,
                           "method": method, "variant": variant, "seed": seed, "temperature": 4}, final)
            write({"stage": "student", "dataset": ds, "student": student, "method": "vanilla", "seed": seed},
                  {"test_acc": 68.75 - seed})
            for alpha in (5, 25):
                for j, variant in enumerate(("MLL", "MCMI")):
                    write({"stage": "student", "dataset": ds, "teacher": teacher, "student": student,
                           "method": "KD", "variant": variant, "seed": seed, "alpha_percent": alpha},
                          {"test_acc": 40.0 + alpha / 2 + j + seed})
        write({"stage": "select_lambda", "dataset": ds, "teacher": teacher},
              {"lambda_star": 0.15, "score_name": "val_acc", "scores": {"0.1": 70.5, "0.15": 71.0}})
    for preset, scale in (("as_written", "paper"), ("authors_code", "reduced")):
        for dmu in (0.5, 2):
            records = [{"seed": seed, "target": target, "test_acc": 60.0 + 2 * (3 - t) + seed + dmu,
                        "pdist_l2": 5.0 * t + seed, "pdist_mean": 0.05 * t}
                       for t, target in enumerate(TARGETS) for seed in (0, 1)]
            write({"stage": "synthetic", "delta_mu": dmu, "preset": preset, "scale": scale},
                  {"pdist_norm": "L2 over the test set", "records": records})
    main = list(paths)

    write, paths = _writer(directory / "lam")
    for lam in (0, 0.1, 0.25):
        write({"stage": "measure", "dataset": "cifar100", "teacher": "resnet56", "variant": "MCMI", "lam": lam,
               "temperature": 1}, {"test_acc": 72.0 - lam, "train_cmi": 0.15 + lam, "train_ll": -0.1 - lam})
        for seed in (0, 1):
            write({"stage": "student", "dataset": "cifar100", "teacher": "resnet56", "student": "resnet20",
                   "method": "KD", "variant": "MCMI", "lam": lam, "seed": seed}, {"test_acc": 70.5 + lam + seed})
    lam = list(paths)

    write, paths = _writer(directory / "classes")
    names = {"goldfish": "goldfish", "toy_terrier": "toy terrier", "bee_eater": "bee eater"}
    for ds, keys in (("imagenet", ("goldfish", "toy_terrier")), ("demo_imagenet", ("goldfish", "bee_eater"))):
        for k, variant in enumerate(("MLL", "MCMI")):
            classes = [{"class": key, "name": names[key], "images": 1300 if ds == "imagenet" else 30,
                        "cmi": 0.25 + j / 8 + k / 16} for j, key in enumerate(keys)]
            write({"stage": "class_cmi", "dataset": ds, "teacher": "resnet50", "variant": variant},
                  {"split": "train", "classes": classes})
    return {**{n: main for n in ("1", "2", "3", "4", "5", "6", "1x")}, "7": lam, "8": list(paths)}
