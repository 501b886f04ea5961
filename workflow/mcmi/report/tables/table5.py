"""Table 5: the synthetic Gaussian task; student accuracy and Pdist per target, per preset and Δμ."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from mcmi.report.cells import Comparison, aggregate, as_float, combine, key_text, read_paper, with_paired
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.render import METRIC_LABELS, Layout, numeric_order, summary_lines
from mcmi.report.spec import ConfigView, Experiment, TableSpec

KEYS = ["preset", "delta_mu", "target", "metric"]
ORDER = ["GroundTruth", "MCMI_KD", "MLL_KD", "OneHot"]      # the paper's accuracy ordering, best first
REDUCED = "reduced scale"
# Students of the MCMI teacher against students of the MLL teacher of the same seed: higher accuracy and
# lower Pdist favour the MCMI teacher (same difference rows, two readings).
TEACHERS = Comparison("target", "MCMI_KD", "MLL_KD", "MCMI − MLL teacher", names=("MCMI teacher", "MLL teacher"))
TEACHERS_PDIST = dataclasses.replace(TEACHERS, higher_is_better=False)
TARGET_LABELS = {"GroundTruth": "P* (ground truth)", "MCMI_KD": "MCMI teacher", "MLL_KD": "MLL teacher",
                 "OneHot": "one-hot", TEACHERS.label: TEACHERS.label}


def preset_label(run: dict[str, Any]) -> str:
    """The preset key of a synthetic run: its preset name, tagged '[reduced scale]' unless the run says it
    ran at the paper's scale (so a demo- or test-scale run never sits beside a published cell)."""
    preset = str(run.get("preset") or "as_written")
    return preset if run.get("scale") == "paper" else f"{preset} [{REDUCED}]"


def _inputs(w: ConfigView, exp: Experiment) -> list[str]:
    return [w.synthetic(preset, d) for preset in w.synthetic_presets for d in exp["delta_mu"]]


def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    """Every preset resolves with the block's ``synthetic`` keys (e.g. a split summing to one)."""
    from mcmi.pipeline.config import ConfigError
    from mcmi.synthetic import resolve_config

    for preset in w.synthetic_presets:
        try:
            resolve_config(exp.get("synthetic", {}), preset)
        except ValueError as error:
            raise ConfigError(f"{key}.synthetic (preset {preset}): {error}") from error


def _build(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    from mcmi.synthetic import PRESETS  # the paper's cells are listed beside each preset

    raw = read_paper(paper_dir, "table5.csv")
    paper = pd.concat([
        raw.assign(preset=preset, metric=metric, paper=as_float(raw[f"{metric}_mean"]),
                   paper_std=as_float(raw[f"{metric}_std"]))
        for preset in PRESETS for metric in ("acc", "pdist")
    ], ignore_index=True)[[*KEYS, "paper", "paper_std"]]
    observations, norms = [], {}
    for rec in of_stage(records, "synthetic"):
        delta_mu, preset = key_text(rec.need("run", "delta_mu")), preset_label(rec.run)
        norms[(preset, delta_mu)] = str(rec.final.get("pdist_norm", "not stated by the run"))
        for i, entry in enumerate(rec.need("final", "records")):
            for key, metric in (("test_acc", "acc"), ("pdist_l2", "pdist"), ("pdist_mean", "pdist_mean")):
                if key not in entry and metric == "pdist_mean":
                    continue
                if key not in entry or "target" not in entry:
                    missing = "target" if "target" not in entry else key
                    raise ValueError(f"{rec.path}: missing required key 'final.records[{i}].{missing}'")
                value = float(entry[key])
                if math.isnan(value):
                    raise ValueError(f"{rec.path}: final.records[{i}].{key} is NaN")
                observations.append({"preset": preset, "delta_mu": delta_mu, "target": entry["target"],
                                     "seed": entry.get("seed"), "metric": metric, "value": value})
    df = with_paired(combine(paper, aggregate(observations, KEYS), KEYS), observations, KEYS, TEACHERS)
    df["pdist_norm"] = [norms.get((p, d), "") for p, d in zip(df["preset"], df["delta_mu"])]
    return df


def orderings(df: pd.DataFrame) -> pd.DataFrame:
    """Per preset and Δμ whether our means keep the paper's orderings (None when a target is missing).

    ``acc_holds``: P* ≥ MCMI ≥ MLL ≥ one-hot accuracy; ``pdist_holds``: Pdist(MCMI) < Pdist(MLL).
    """
    rows = []
    for (preset, delta_mu), block in df[df["ours_n"] > 0].groupby(["preset", "delta_mu"], sort=False):
        means = {metric: dict(zip(part["target"], part["ours_mean"])) for metric, part in block.groupby("metric")}
        acc = [means.get("acc", {}).get(t) for t in ORDER]
        pdist = [means.get("pdist", {}).get(t) for t in ("MCMI_KD", "MLL_KD")]
        rows.append({
            "preset": preset, "delta_mu": delta_mu,
            "acc_holds": None if None in acc else all(a >= b for a, b in zip(acc, acc[1:])),
            "pdist_holds": None if None in pdist else pdist[0] < pdist[1],
            "acc_means": acc, "pdist_means": pdist,
        })
    return pd.DataFrame(rows, columns=["preset", "delta_mu", "acc_holds", "pdist_holds", "acc_means", "pdist_means"])


def _section(preset: str, delta_mu: str) -> str:
    return f"{preset}, Δμ = {delta_mu}"


def _ordering_lines(df: pd.DataFrame) -> dict[str, list[str]]:
    def verdict(holds: bool | None) -> str:
        return {True: "holds", False: "does NOT hold", None: "cannot be checked (target missing)"}[holds]

    def values(means: list[float | None]) -> str:
        return ", ".join("missing" if m is None else f"{m:.2f}" for m in means)

    return {
        _section(row.preset, row.delta_mu): [
            f"{row.preset}, Δμ = {row.delta_mu}: accuracy P* ≥ MCMI ≥ MLL ≥ one-hot {verdict(row.acc_holds)} "
            f"in our run (ours: {values(row.acc_means)}); Pdist MCMI < MLL {verdict(row.pdist_holds)} "
            f"(ours: {values(row.pdist_means)})."
        ]
        for row in orderings(df).itertuples()
    }


def _layout(df: pd.DataFrame) -> Layout:
    presets = list(dict.fromkeys(sorted(df["preset"], key=lambda p: (REDUCED in p, p))))
    frame = numeric_order(df, "delta_mu")
    frame = frame.sort_values("preset", key=lambda c: c.map(presets.index), kind="stable")
    frame = frame.assign(_section=[_section(p, d) for p, d in zip(frame["preset"], frame["delta_mu"])],
                         _row=frame["target"].map(TARGET_LABELS), _col=frame["metric"].map(METRIC_LABELS))
    norms = {p: sorted({n for n, q in zip(df["pdist_norm"], df["preset"]) if n and q == p}) for p in presets}
    header = [f"Pdist (ours) = `pdist_l2` of the synthetic runs; normalisation: "
              + "; ".join(f"{p}: {', '.join(n) or 'not run'}" for p, n in norms.items()) + ".",
              "The paper's Pdist is 'L2 norm of P*_X − P_tar' (A.6); paper values are printed with their ± std.",
              "Sections: one per preset (mcmi.synthetic.PRESETS) and Δμ; the paper's cells are listed beside "
              f"each preset. A run at another scale than the paper's is tagged '[{REDUCED}]' and never matched."]
    cols = [METRIC_LABELS[m] for m in ("acc", "pdist", "pdist_mean")]
    ran = [p for p in presets if (df.loc[df["preset"] == p, "ours_n"] > 0).any()]
    items = [(TEACHERS, "acc"), (TEACHERS_PDIST, "pdist")]
    summary = [line for p in ran for line in summary_lines(df[df["preset"] == p], items, context=p)]
    if all(REDUCED in p for p in ran):     # none beside the paper: its own differences, once (same in every preset)
        summary += summary_lines(df[df["preset"] == next(p for p in presets if REDUCED not in p)], items,
                                 context="the paper")
    return Layout(frame, "Student target", cols, notes=_ordering_lines(df), header_lines=header, summary=summary)


TABLE = TableSpec(
    id="5",
    title="Table 5",
    caption="Synthetic Gaussian task: student accuracy (%) and Pdist per target, mean ± std over seeds.",
    paper_files=("table5.csv",),
    paper_dataset=None,      # runs are keyed by preset and scale instead (see preset_label)
    inputs=_inputs,
    build=_build,
    layout=_layout,
    check=_check,
    path_numbers=("delta_mu",),
)
