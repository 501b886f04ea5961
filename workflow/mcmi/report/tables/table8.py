"""Table 8 (appendix A.10): the per-class CMI, CMI(f; Y = y) = mean over class y's images of KL(P_x || Q_y),
of the MLL and MCMI ImageNet teachers for goldfish, mountain tent, toy terrier and bee eater, beside the
paper's numbers, with MCMI − MLL per class.

The paper names neither the teacher nor the split: ours are ``experiments.table8.teacher`` (resnet50) and
``split`` (the class's training images), T = 1. A run on another dataset than ImageNet (the demo's
generated folder, whose folders stand for the four classes) keeps the dataset in its class names and is
never placed beside a published number."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mcmi.data.imagenet_classes import PAPER_CLASSES, class_folders_spec
from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.naming import VARIANTS, Variant
from mcmi.pipeline.specs import ClassCMISpec
from mcmi.report.cells import GAIN, MCMI_VS_MLL, aggregate, as_float, combine, read_paper, with_gain
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.render import Layout, summary_lines
from mcmi.report.spec import ConfigView, Experiment, TableSpec

KEYS = ["class", "variant", "metric"]
METRIC = "class_cmi"
PAPER_DATASET = "imagenet"
PAPER_SECTION = "ImageNet"


def _jobs(w: ConfigView, exp: Experiment) -> list[ClassCMISpec]:
    """One job per teacher (MLL, MCMI λ*): the per-class CMI over the configured classes' images."""
    ds, teacher, jobs = exp["dataset"], exp["teacher"], []
    for variant in VARIANTS:
        out = w.path("class_cmi", dataset=ds, teacher=teacher, variant=variant)
        fields = w.job_fields(ds, 0, out, {"dataset": ds, "teacher": teacher, **Variant.parse(variant).run_fields()},
                              one_process=True)
        jobs.append(ClassCMISpec(**{**fields, "resume": None}, model=teacher,
                                 checkpoint=w.teacher_model(ds, teacher, variant),
                                 classes=class_folders_spec(exp["classes"], exp["folders"]), split=exp["split"]))
    return jobs


def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    kind = w.config["datasets"][exp["dataset"]]["kind"]
    if kind not in ("imagefolder", "demo_imagefolder"):
        raise ConfigError(f"{key}.dataset: {exp['dataset']!r} is a {kind} dataset; the ImageNet classes need an "
                          f"image folder (kind imagefolder, or demo_imagefolder with {key}.folders)")
    unused = sorted(set(exp["folders"]) - set(exp["classes"]))
    if unused:
        raise ConfigError(f"{key}.folders.{unused[0]}: not one of {key}.classes {exp['classes']}")


def class_label(run: dict[str, Any], name: str) -> str:
    """A class's row label: its name, tagged with the dataset when the run is not on ImageNet."""
    dataset = run.get("dataset")
    return name if dataset in (None, PAPER_DATASET) else f"{name} [{dataset}]"


def _build(records: list[MetricsRecord], paper_dir: str) -> pd.DataFrame:
    raw = read_paper(paper_dir, "table8.csv").rename(columns={"teacher_variant": "variant"})
    paper = raw.assign(metric=METRIC, paper=as_float(raw["cmi"]))[[*KEYS, "paper"]]
    observations, about = [], {}
    for rec in of_stage(records, "class_cmi"):
        for i, entry in enumerate(rec.need("final", "classes")):
            for field in ("name", "cmi"):
                if field not in entry:
                    raise ValueError(f"{rec.path}: missing required key 'final.classes[{i}].{field}'")
            label = class_label(rec.run, entry["name"])
            observations.append({"class": label, "variant": rec.need("run", "variant"), "metric": METRIC,
                                 "value": float(entry["cmi"])})
            counts = about.setdefault((rec.run.get("dataset"), rec.run.get("teacher"), rec.final.get("split")), set())
            counts.add(entry.get("images"))
    df = with_gain(combine(paper, aggregate(observations, KEYS), KEYS), observations, KEYS)
    sources = [f"{teacher} on {dataset}, {split} images ({', '.join(str(n) for n in sorted(counts, key=str))} a class)"
               for (dataset, teacher, split), counts in about.items()]
    df["source"] = "; ".join(sources)
    return df


def _layout(df: pd.DataFrame) -> Layout:
    order = [c.name for c in PAPER_CLASSES.values()]
    base = df["class"].str.replace(r" \[.*\]$", "", regex=True)
    frame = df.assign(_order=base.map(lambda c: order.index(c) if c in order else len(order)))
    frame = frame.sort_values("_order", kind="stable").drop(columns="_order")
    tagged = frame["class"].str.extract(r"\[(.*)\]$")[0]
    frame = frame.assign(
        _section=[PAPER_SECTION if pd.isna(t) else f"{t} (not ImageNet: never matched to the paper)" for t in tagged],
        _row=frame["class"], _col=frame["variant"])
    sources = next(iter(df["source"]), "") if "source" in df else ""
    header = ["CMI(f; Y = y) = mean over the class's images of KL(P_x ‖ Q_y), Q_y their mean output (nats, T = 1); "
              "not weighted by P(y). The paper names neither teacher nor split.",
              f"Ours: {sources or 'no run'}; MLL and MCMI (λ*) teachers."]
    return Layout(frame, "Class", ["MLL", "MCMI", GAIN], header_lines=header,
                  summary=summary_lines(df, [(MCMI_VS_MLL, METRIC)]))


TABLE = TableSpec(
    id="8",
    title="Table 8",
    caption="Per-class CMI (nats) of the MLL and MCMI ImageNet teachers for four classes.",
    paper_files=("table8.csv",),
    paper_dataset=None,      # keyed by class; a run on another dataset tags its class names instead
    inputs=lambda w, exp: [],
    jobs=_jobs,
    build=_build,
    layout=_layout,
    check=_check,
)
