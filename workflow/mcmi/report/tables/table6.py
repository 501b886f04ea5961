"""Table 6: the λ* selected for MCMI fine-tuning per teacher, and our selection scores per λ."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from mcmi.report.cells import aggregate, as_float, combine, read_paper
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.render import Layout, numeric_order
from mcmi.report.spec import ConfigView, Experiment, TableSpec

KEYS = ["dataset", "teacher", "metric", "lam"]
DATASET_LABELS = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "imagenet": "ImageNet"}


def dataset_label(name: str) -> str:
    """Display name of a dataset (cifar100 -> CIFAR-100); unknown names are kept."""
    return DATASET_LABELS.get(name.lower(), name)


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    return [w.lambda_star_file(exp["dataset"], t) for t in exp["teachers"]]


def _paper(paper_dir: str) -> pd.DataFrame:
    """table6.csv (CIFAR-100) and, from setup.yaml, the ImageNet λ* the paper states in its setup."""
    paper = read_paper(paper_dir, "table6.csv")
    setup_path = Path(paper_dir) / "setup.yaml"
    if setup_path.exists():
        setup = yaml.safe_load(setup_path.read_text())
        imagenet = setup.get("mcmi_finetune", {}).get("imagenet", {}).get("lambda_star", {})
        extra = pd.DataFrame({"dataset": "ImageNet", "teacher": list(imagenet),
                              "lambda_star": [str(v) for v in imagenet.values()]})
        paper = pd.concat([paper, extra], ignore_index=True)
    return paper.assign(metric="lambda_star", lam="", paper=as_float(paper["lambda_star"]))[[*KEYS, "paper"]]


def _build(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    observations = []
    for rec in of_stage(records, "select_lambda"):
        cell = {"dataset": dataset_label(rec.need("run", "dataset")), "teacher": rec.need("run", "teacher")}
        observations.append({**cell, "metric": "lambda_star", "lam": "",
                             "value": float(rec.need("final", "lambda_star"))})
        score_name = rec.final.get("score_name", "score")
        observations += [{**cell, "metric": f"score: {score_name}", "lam": lam, "value": float(score)}
                         for lam, score in (rec.final.get("scores") or {}).items()]
    return combine(_paper(paper_dir), aggregate(observations, KEYS), KEYS)


def _layout(df: pd.DataFrame) -> Layout:
    star = df[df["metric"] == "lambda_star"]
    scores = numeric_order(df[df["metric"] != "lambda_star"], "lam")
    frame = pd.concat([
        star.assign(_section="Selected λ*", _row=star["teacher"], _col=star["dataset"]),
        scores.assign(_section="Selection score per λ (ours only): " + scores["metric"].str.removeprefix("score: "),
                      _row=scores["teacher"] + " (" + scores["dataset"] + ")", _col="λ = " + scores["lam"]),
    ], ignore_index=True)
    ours = star[star["ours_n"] > 0]
    summary = []
    if len(ours):
        picked = [f"{t} ({d}) {m:g}" + (f" vs {p:g}" if pd.notna(p) else " (no paper value)")
                  for t, d, m, p in zip(ours["teacher"], ours["dataset"], ours["ours_mean"], ours["paper"])]
        summary.append(f"**λ*** selected (ours vs paper): {'; '.join(picked)}. This table compares no teachers; "
                       "the λ* teacher is the MCMI teacher of Tables 1-4.")
    return Layout(frame, "Teacher", list(dict.fromkeys(star["dataset"])), summary=summary)


TABLE = TableSpec(
    id="6",
    title="Table 6",
    caption="Selected λ* for MCMI fine-tuning per teacher.",
    paper_files=("table6.csv", "setup.yaml"),
    paper_citation="table6.csv (+ ImageNet λ* from setup.yaml)",
    paper_dataset=None,      # keyed by the dataset itself
    inputs=_inputs,
    build=_build,
    layout=_layout,
)
