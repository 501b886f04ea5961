"""What the paper's grid trains, counted from the plan (``mcmi.pipeline.WorkflowConfig``), and its GPU
time from measured step rates.

``grid_work(W)`` walks the jobs a config plans the way the rules connect them -- every target's inputs,
the student groups (``W.student_groups()``) and their teachers and HSAKD heads, each MCMI teacher's
lambda grid and selection students, the measurements -- and gives, per job, the images it steps
through (epochs x its training set: a few-shot subset's alpha %, a zero-shot set without its removed
classes) and the images it only evaluates (test set per epoch, CMI passes, centroid passes).
``gpu_hours(work, rates)`` turns that into GPU hours with the rates ``make gpu-check`` measures.

    python benchmarks/grid_cost.py                     # the paper config's counts (no GPU needed)
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# (train, test) sizes of the paper's datasets, by dataset kind (ILSVRC-2012 for the image folder)
DATASET_SIZES = {"cifar100": (50_000, 10_000), "cifar10": (50_000, 10_000), "imagefolder": (1_281_167, 50_000)}
HSAKD_ROTATIONS = 4


@dataclass
class Job:
    """One planned job: what it trains (``models``: the model trained; a student group: one per member,
    with its teacher) and the images it trains on and only evaluates."""
    kind: str                           # teacher | import | mcmi | hsakd_heads | measure | students | vanilla | synthetic | analysis
    dataset: str
    teacher: str | None
    models: list[str] = field(default_factory=list)
    train_images: int = 0               # summed over the models (students: over the members)
    eval_images: int = 0
    epochs: int = 0                     # model-epochs (students: summed over the members)


def _sizes(W: Any, ds: str) -> tuple[int, int, int]:
    spec = W.config["datasets"][ds]
    train, test = DATASET_SIZES[spec["kind"]]
    classes = {"cifar100": 100, "cifar10": 10, "imagefolder": 1000}[spec["kind"]]
    return train, test, classes


def _student_train_size(W: Any, ds: str, spec: Any) -> int:
    """A student's training set: all of it, a few-shot subset (alpha % per class) or the zero-shot classes."""
    train, _, classes = _sizes(W, ds)
    if spec.few_shot:
        return classes * max(1, round(train / classes * spec.few_shot.alpha_percent / 100))
    if spec.zero_shot:
        return train * (classes - len(spec.zero_shot.removed_classes)) // classes
    return train


def grid_work(W: Any) -> list[Job]:
    """Every job of the plan with the images it trains on and evaluates (see the module's docstring)."""
    from mcmi.pipeline.naming import MCMI, Variant
    from mcmi.pipeline.specs import ImportSpec

    parse = W.paths.parse
    jobs: dict[tuple, Job] = {}
    todo: list[str] = [p for target in W.targets() for p in W.target_inputs(target)]
    for group in W.student_groups():
        spec = W.group_spec(group)
        first = spec.members[0]
        ds = first.run["dataset"]
        job = Job("students", ds, first.teacher)
        _, test, _ = _sizes(W, ds)
        for member in spec.members:
            epochs = int(member.recipe["epochs"])
            job.models.append(member.student)
            job.epochs += epochs
            job.train_images += epochs * _student_train_size(W, ds, member)
            job.eval_images += epochs * test
        jobs[("students", group.name)] = job
        todo += list(W.group_inputs(group).values())
    for out, spec in W.declared_jobs().items():                    # t-SNE, per-class CMI, Eigen-CAM: one pass
        train, test, _ = _sizes(W, spec.run["dataset"])
        jobs[("analysis", out)] = Job("analysis", spec.run["dataset"], spec.model, [spec.model], 0, train + test)
        todo.append(spec.checkpoint)
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if m := parse("vanilla_metrics", path):
            spec = W.vanilla_spec(m["dataset"], m["student"], m["seed"])
            train, test, _ = _sizes(W, m["dataset"])
            epochs = int(spec.recipe["epochs"])
            jobs[("vanilla", path)] = Job("vanilla", m["dataset"], None, [m["student"]], epochs * train,
                                          epochs * test, epochs)
        elif (m := parse("teacher_model", path) or parse("teacher_metrics", path)):
            ds, teacher, variant = m["dataset"], m["teacher"], Variant.parse(m["variant"])
            train, test, _ = _sizes(W, ds)
            if variant.kind == MCMI and variant.lam is None:          # lambda*: adopted from the grid
                inputs = W.selected_teacher_inputs(ds, teacher)
                todo += inputs["models"] + ([inputs["selection"]] if "selection" in inputs else [])
                continue
            spec = W.planned_spec(W.teacher_metrics(ds, teacher, m["variant"]))
            seen_train = spec.labelled.count if getattr(spec, "labelled", None) else train   # Figure 9's subsets
            key = ("teacher", ds, teacher, m["variant"])
            if isinstance(spec, ImportSpec):                            # a pretrained teacher: imported
                jobs[key] = Job("import", ds, teacher, [teacher], 0, test)
            elif spec.STAGE in ("mcmi", "regularized"):                 # fine-tuned from its MLL teacher
                epochs = int(spec.recipe["epochs"])
                jobs[key] = Job("mcmi", ds, teacher, [teacher], epochs * seen_train,
                                epochs * test + seen_train, epochs)     # + the centroid pass
                todo.append(spec.teacher_checkpoint)
            else:
                epochs = min(int(spec.recipe["epochs"]), int(spec.stop_after_epoch or spec.recipe["epochs"]))
                cmi = int(spec.cmi_every or 0)
                passes = (len([e for e in range(1, epochs + 1) if e % cmi == 0 or e == epochs]) if cmi else 0)
                jobs[key] = Job("teacher", ds, teacher, [teacher], epochs * seen_train,
                                epochs * test + passes * seen_train, epochs)
        elif m := parse("measure", path):
            train, test, _ = _sizes(W, m["dataset"])
            jobs[("measure", path)] = Job("measure", m["dataset"], m["teacher"], [m["teacher"]], 0, train + test)
            todo.append(W.teacher_model(m["dataset"], m["teacher"], m["variant"]))
        elif (m := parse("hsakd_heads", path) or parse("hsakd_heads_metrics", path)):
            spec = W.hsakd_heads_spec(m["dataset"], m["teacher"], m["variant"])
            train, test, _ = _sizes(W, m["dataset"])
            epochs = int(spec.recipe["epochs"])
            jobs[("heads", m["dataset"], m["teacher"], m["variant"])] = Job(
                "hsakd_heads", m["dataset"], m["teacher"], [m["teacher"]], epochs * train * HSAKD_ROTATIONS,
                epochs * test, epochs)
            todo.append(W.teacher_model(m["dataset"], m["teacher"], m["variant"]))
        elif m := parse("lambda_star", path):
            todo += W.selection_inputs(m["dataset"], m["teacher"])
        elif m := parse("synthetic", path):
            jobs[("synthetic", path)] = Job("synthetic", "synthetic", None)
    return list(jobs.values())


def summary(jobs: list[Job]) -> dict[str, dict[str, int]]:
    """Per job kind and dataset: jobs, model-epochs, students, trained and evaluated images."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for job in jobs:
        row = out[f"{job.kind} ({job.dataset})"]
        row["jobs"] += 1
        row["model_epochs"] += job.epochs
        row["students"] += len(job.models) if job.kind == "students" else 0
        row["train_images"] += job.train_images
        row["eval_images"] += job.eval_images
    return {k: dict(v) for k, v in sorted(out.items())}


def gpu_hours(jobs: list[Job], rates: dict[str, Any]) -> dict[str, Any]:
    """GPU hours of the jobs from measured rates (images per second, fp32 eager unless the rates say
    otherwise): ``train[model]`` a training step's rate of the model alone, ``forward[model]`` its
    forward pass (no gradient), and ``student_overhead_s`` the seconds per student-image a method adds
    beyond its student's step and its share of the teacher's forward pass (from the 11-method group).
    A model without a measured rate (the ImageNet ones, when not measured) is reported, not guessed."""
    train, forward = rates.get("train", {}), rates.get("forward", {})
    overhead = max(0.0, float(rates.get("student_overhead_s", 0.0)))
    seconds: dict[str, float] = defaultdict(float)
    missing: set[str] = set()

    def per_image(table: dict[str, float], model: str) -> float:
        if model not in table:
            missing.add(model)
            return math.nan
        return 1.0 / table[model]

    for job in jobs:
        if job.kind in ("synthetic", "import"):
            continue
        key = f"{job.kind} ({job.dataset})"
        if job.kind == "students":
            n = len(job.models)
            each = job.train_images / n
            for model in job.models:
                seconds[key] += each * (per_image(train, model) + per_image(forward, job.teacher) / n + overhead)
                seconds[key] += job.eval_images / n * per_image(forward, model)
        elif job.kind == "hsakd_heads":          # the frozen backbone's forward on the rotated batch + the heads
            seconds[key] += job.train_images * per_image(forward, job.teacher) + job.eval_images * per_image(forward, job.teacher)
        else:
            model = job.models[0]
            seconds[key] += job.train_images * per_image(train, model) + job.eval_images * per_image(forward, model)
    hours = {k: v / 3600 for k, v in seconds.items()}
    known = [v for v in hours.values() if not math.isnan(v)]
    return {"by_kind": hours, "total_measured": sum(known), "kinds_not_measured": sorted(k for k, v in hours.items()
                                                                                       if math.isnan(v)),
            "models_without_rates": sorted(missing)}


def plan(config: Path = REPO / "config" / "config.yaml") -> Any:
    from mcmi.pipeline import WorkflowConfig

    return WorkflowConfig(yaml.safe_load(config.read_text()), REPO)


def models_of(jobs: list[Job]) -> dict[str, set[str]]:
    """The models each dataset's jobs train or run (what the GPU check times)."""
    out: dict[str, set[str]] = defaultdict(set)
    for job in jobs:
        out[job.dataset].update(job.models)
        if job.teacher:
            out[job.dataset].add(job.teacher)
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    args = parser.parse_args()
    jobs = grid_work(plan(args.config))
    print(f"{'jobs':>6} {'model-epochs':>13} {'students':>9} {'trained images':>16} {'evaluated images':>17}  kind")
    for kind, row in summary(jobs).items():
        print(f"{row['jobs']:>6} {row['model_epochs']:>13,} {row['students']:>9,} {row['train_images']:>16,} "
              f"{row['eval_images']:>17,}  {kind}")


if __name__ == "__main__":
    main()
