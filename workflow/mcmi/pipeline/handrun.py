"""One-command runs outside Snakemake (``mcmi teacher``, ``mcmi mcmi``, ``mcmi student``), the way
RepDistiller's ``train_student.py`` is used. Each builds its job spec with the same
:class:`~mcmi.pipeline.plan.WorkflowConfig` methods the workflow uses, from a config file (the paper's
``config/config.yaml`` unless ``--config`` names another), then applies the command line's flags and
writes under ``--out``: a hand run with the workflow's settings is the workflow's job."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from mcmi.pipeline.naming import MLL, early_stop_variant, few_shot_setting, number_text
from mcmi.pipeline.plan import WorkflowConfig
from mcmi.pipeline.specs import TrainingJob

REPO = Path(__file__).resolve().parents[3]
PAPER_CONFIG = REPO / "config" / "config.yaml"


def plan_from(config_path: str | Path, results: str) -> WorkflowConfig:
    """The workflow's plan for ``config_path`` with its outputs under ``results``."""
    config = yaml.safe_load(Path(config_path).read_text())
    config["results"] = results
    return WorkflowConfig(config, repo=REPO)


def parse_hparams(items: list[str]) -> dict[str, Any]:
    """``["T=4", "beta=8"]`` -> ``{"T": 4, "beta": 8}`` (values read as YAML: numbers, booleans, lists)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--hp {item!r}: expected NAME=VALUE, e.g. T=4")
        out[name] = yaml.safe_load(value)
    return out


def _into(spec: TrainingJob, out: str, args: argparse.Namespace, **changes: Any) -> TrainingJob:
    """``spec`` writing under ``out`` (model.pt, metrics.json, _resume/last.pt), with the common flags."""
    folder = Path(out)
    dataset = dict(spec.dataset)
    if args.data_root:
        dataset["root"] = args.data_root
    recipe = dict(getattr(spec, "recipe", {}) or {})
    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key, None) is not None:
            recipe[key] = getattr(args, key)
    fields = {"dataset": dataset, "out_metrics": str(folder / "metrics.json"),
              "resume": str(folder / "_resume" / "last.pt"), **changes}
    if args.device:
        fields["device"] = args.device
    if hasattr(spec, "out_model"):
        fields["out_model"] = str(folder / "model.pt")
    if recipe:
        fields["recipe"] = recipe
    return dataclasses.replace(spec, **fields)


def teacher_spec(args: argparse.Namespace) -> TrainingJob:
    plan = plan_from(args.config, args.out)
    variant = early_stop_variant(args.early_stop) if args.early_stop else MLL
    spec = plan.teacher_spec(args.dataset, args.model, variant)
    return _into(spec, args.out, args, seed=args.seed)


def mcmi_spec(args: argparse.Namespace) -> TrainingJob:
    plan = plan_from(args.config, args.out)
    spec = plan.mcmi_spec(args.dataset, args.model, number_text(args.lam))
    return _into(spec, args.out, args, seed=args.seed, teacher_checkpoint=args.teacher_checkpoint)


def student_spec(args: argparse.Namespace) -> TrainingJob:
    plan = plan_from(args.config, args.out)
    if args.method == "vanilla":
        spec = plan.vanilla_spec(args.dataset, args.student, args.seed)
        return _into(spec, args.out, args, hparams={**spec.hparams, **parse_hparams(args.hp)})
    setting = few_shot_setting(args.few_shot) if args.few_shot else "full"
    if args.few_shot and "table3" not in plan.config["experiments"]:
        raise ValueError("--few-shot needs experiments.table3 in the config (its partition_seed)")
    spec = plan.student_spec(args.dataset, args.teacher, args.student, args.method, MLL, setting, args.seed)
    extra = dict(spec.extra or {})
    if args.method == "HSAKD":
        if not args.hsakd_heads:
            raise ValueError("--method HSAKD needs --hsakd-heads (the teacher's trained auxiliary heads)")
        extra["hsakd_teacher_heads"] = args.hsakd_heads
    return _into(spec, args.out, args, teacher_checkpoint=args.teacher_checkpoint, finished=None,
                 hparams={**spec.hparams, **parse_hparams(args.hp)}, extra=extra or None)


def methods_help(config_path: str | Path = PAPER_CONFIG) -> str:
    """Every method with the hyperparameters a run gets: its defaults, updated by the config's entry."""
    from mcmi.distill import registry

    try:
        configured = yaml.safe_load(Path(config_path).read_text()).get("methods", {})
    except OSError:
        configured = {}
    lines = ["methods and their hyperparameters (class defaults, then the paper config's values):"]
    for name, cls in sorted(registry().items()):
        values = {**cls.defaults, **(configured.get(name) or {})}
        lines.append(f"  {name:9s} " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return "\n".join(lines)


def add_common(p: argparse.ArgumentParser, *, recipe: bool = True) -> None:
    p.add_argument("--dataset", default="cifar100", help="a dataset name of the config (default cifar100)")
    p.add_argument("--data-root", help="folder of the dataset (overrides the config's root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder: model.pt, metrics.json, _resume/")
    p.add_argument("--config", default=str(PAPER_CONFIG), help="config whose recipes and hyperparameters apply")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: the config's)")
    if recipe:
        p.add_argument("--epochs", type=int, help="override the recipe's epochs")
        p.add_argument("--lr", type=float, help="override the recipe's initial learning rate")
        p.add_argument("--batch-size", type=int, dest="batch_size", help="override the recipe's batch size")
