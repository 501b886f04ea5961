"""One-command runs outside Snakemake (``mcmi teacher``, ``mcmi mcmi``, ``mcmi student``), the way
RepDistiller's ``train_student.py`` is used. Each builds its job spec with the same
:class:`~mcmi.pipeline.plan.WorkflowConfig` methods the workflow uses, from a config file (the paper's
``config/config.yaml`` unless ``--config`` names another), then applies the command line's flags and
writes under ``--out``: a hand run with the workflow's settings is the workflow's job. It also runs
with the config's ``threads``, as Snakemake starts the job (its float results depend on them), and a
student records the variant of the teacher it really learnt from.

Every mistake in the flags is a ``ValueError`` (or ``FileNotFoundError``) naming the flag, raised
before any work: the CLI prints it as one line."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import yaml

from mcmi.pipeline.config import check_device_here, check_model, check_path_number, yaml_error_text
from mcmi.pipeline.naming import (ENTROPY, LABEL_SMOOTHING, LABEL_SMOOTHING_KL, MLL, Variant, early_stop_variant,
                                  entropy_variant, few_shot_setting, grid_variant, label_smoothing_variant,
                                  labelled_variant, number_text)
from mcmi.pipeline.plan import WorkflowConfig
from mcmi.pipeline.specs import TrainingJob

REPO = Path(__file__).resolve().parents[3]
PAPER_CONFIG = REPO / "config" / "config.yaml"
# What Snakemake sets to a job's `threads` before it starts (snakemake/shell.py); torch reads OMP's.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@functools.lru_cache(maxsize=4)
def plan_from(config_path: str | Path, results: str) -> WorkflowConfig:
    """The workflow's plan for ``config_path`` with its outputs under ``results``."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path}: not valid YAML ({yaml_error_text(error)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {path}: expected a mapping of config keys, got {type(config).__name__}")
    config["results"] = results
    return WorkflowConfig(config, repo=REPO)


def parse_hparams(items: list[str]) -> dict[str, Any]:
    """``["T=4", "beta=8"]`` -> ``{"T": 4, "beta": 8}`` (values read as YAML: numbers, booleans, lists)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--hp {item!r}: expected NAME=VALUE, e.g. T=4")
        try:
            out[name] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ValueError(f"--hp {item!r}: the value is not valid YAML ({yaml_error_text(error)})") from None
    return out


def _check_out(out: str) -> None:
    """``--out`` must be (or be creatable as) a folder: no file on its path."""
    for folder in (Path(out), *Path(out).parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"--out {out}: {folder} is a file, not a folder")
            return


def prepare_out(out: str) -> None:
    """Create ``--out`` and check that files can be written there, before any work."""
    _check_out(out)
    folder = Path(out)
    probe = folder / f".mcmi-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write there ({error.strerror or error})") from None


def _check_names(plan: WorkflowConfig, args: argparse.Namespace, roles: dict[str, str], mcmi: bool = False) -> None:
    """The dataset (with its recipes) is in the config, and the models are names of the zoo."""
    config, ds = plan.config, args.dataset
    if ds not in config["datasets"] or ds not in config["recipe_of"]:
        where = "datasets" if ds not in config["datasets"] else "recipe_of"
        raise ValueError(f"--dataset {ds!r}: not under '{where}' of {args.config}; its datasets: "
                         f"{sorted(set(config['datasets']) & set(config['recipe_of']))}")
    if mcmi and ds not in config["mcmi"]["epochs"]:
        raise ValueError(f"--dataset {ds!r}: no entry under 'mcmi.epochs' of {args.config}")
    for flag, model in roles.items():
        if model is not None:
            check_model(model, flag)


def _checkpoint(path: str | None, flag: str) -> str:
    if path is None:
        raise ValueError(f"{flag} is required (the teacher's model.pt)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    return path


def recorded_variant(checkpoint: str) -> str | None:
    """The teacher variant recorded by the metrics.json beside ``checkpoint`` (None without one):
    MLL, ES<epochs>, MCMI (the lambda* teacher the workflow adopted), MCMI_lam<lambda> (a teacher
    fine-tuned at lambda, e.g. by ``mcmi mcmi``), a regularised teacher (ENT<beta>, LS<eps>,
    LSKL<eps>w<weight>), each with _lab<count>s<seed> when it was trained on a labelled subset."""
    from mcmi.provenance import read_json_strict

    path = Path(checkpoint).with_name("metrics.json")
    if not path.is_file():
        return None
    metrics = read_json_strict(path)
    run = metrics.get("run", {}) if isinstance(metrics, dict) else {}
    if run.get("stage") not in ("teacher", "mcmi", "regularized"):
        raise ValueError(f"{path}: the metrics beside the teacher checkpoint are of a "
                         f"{run.get('stage', 'unknown')!r} run, not of a teacher")
    kind = run.get("variant")
    try:
        if kind == MLL:
            variant = MLL
        elif kind == "ES" and "es_epochs" in run:
            variant = early_stop_variant(run["es_epochs"])
        elif kind == "MCMI":
            if "adopted" in metrics or "lam" not in run:
                return "MCMI"
            variant = grid_variant(run["lam"])
        elif kind == ENTROPY:
            variant = entropy_variant(run["beta"])
        elif kind in (LABEL_SMOOTHING, LABEL_SMOOTHING_KL):
            variant = label_smoothing_variant(run["eps"], run.get("ls_weight") if kind == LABEL_SMOOTHING_KL else None)
        else:
            raise KeyError(kind)
    except KeyError:
        raise ValueError(f"{path}: run.variant {kind!r} is not a teacher variant (MLL, ES, MCMI, ENT, LS, LSKL) "
                         f"with its parameters") from None
    if run.get("labeled_count") is not None:
        variant = labelled_variant(variant, run["labeled_count"], run.get("labeled_seed", 0))
    return variant


def teacher_variant(checkpoint: str, flag: str | None) -> str:
    """The variant a student records for its teacher: the one the teacher's own metrics record, or
    ``--variant``; refused when both are given and they disagree (another kind, another lambda,
    early-stop epoch, regulariser weight or labelled subset; ``--variant MCMI`` may name a grid teacher
    as the lambda* one), and when neither is (a student filed under the wrong teacher is worse than no
    student)."""
    recorded = recorded_variant(checkpoint)
    if flag is None:
        if recorded is None:
            raise ValueError(f"--teacher-checkpoint {checkpoint}: no metrics.json beside it records the "
                             f"teacher's variant; pass --variant MLL (trained by cross-entropy, e.g. a "
                             f"RepDistiller checkpoint), MCMI, MCMI_lam<lambda> or ES<epochs>")
        return recorded
    chosen = Variant.parse(flag)
    if recorded is not None:
        found = Variant.parse(recorded)
        agree = (dataclasses.replace(chosen, lam=None) == dataclasses.replace(found, lam=None)
                 and (chosen.lam is None or chosen.lam == found.lam))
        if not agree:
            raise ValueError(f"--variant {flag} disagrees with {Path(checkpoint).with_name('metrics.json')}, "
                             f"which records this teacher as {recorded}")
    return flag


def _into(spec: TrainingJob, out: str, args: argparse.Namespace, **changes: Any) -> TrainingJob:
    """``spec`` writing under ``out`` (model.pt, metrics.json, _resume/last.pt), with the common flags."""
    folder = Path(out)
    dataset = dict(spec.dataset)
    if args.data_root:
        dataset["root"] = args.data_root
    recipe = dict(getattr(spec, "recipe", {}) or {})
    for key in ("epochs", "lr", "batch_size"):
        value = getattr(args, key, None)
        if value is not None:
            if not value > 0:
                raise ValueError(f"--{key.replace('_', '-')} {value}: must be > 0")
            recipe[key] = value
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
    _check_out(args.out)
    plan = plan_from(args.config, args.out)
    _check_names(plan, args, {"--model": args.model})
    if args.early_stop is not None and args.early_stop < 1:
        raise ValueError(f"--early-stop {args.early_stop}: the epoch to stop after must be >= 1")
    variant = early_stop_variant(args.early_stop) if args.early_stop is not None else MLL
    spec = plan.teacher_spec(args.dataset, args.model, variant)
    return _into(spec, args.out, args, seed=args.seed)


def mcmi_spec(args: argparse.Namespace) -> TrainingJob:
    _check_out(args.out)
    plan = plan_from(args.config, args.out)
    _check_names(plan, args, {"--model": args.model}, mcmi=True)
    if not args.lam >= 0:
        raise ValueError(f"--lam {args.lam}: lambda must be >= 0")
    check_path_number(args.lam, "--lam")
    spec = plan.mcmi_spec(args.dataset, args.model, number_text(args.lam))
    return _into(spec, args.out, args, seed=args.seed,
                 teacher_checkpoint=_checkpoint(args.teacher_checkpoint, "--teacher-checkpoint"))


def student_spec(args: argparse.Namespace) -> TrainingJob:
    from mcmi.distill import registry

    _check_out(args.out)
    plan = plan_from(args.config, args.out)
    methods = registry()
    if args.method not in methods:
        raise ValueError(f"--method {args.method!r}: unknown; known: {sorted(methods)}")
    if args.method == "vanilla":
        _check_names(plan, args, {"--student": args.student})
        spec = plan.vanilla_spec(args.dataset, args.student, args.seed)
        return _into(spec, args.out, args, hparams={**spec.hparams, **parse_hparams(args.hp)})
    if args.teacher is None:
        raise ValueError(f"--method {args.method} needs --teacher (the teacher's model name)")
    _check_names(plan, args, {"--teacher": args.teacher, "--student": args.student})
    checkpoint = _checkpoint(args.teacher_checkpoint, "--teacher-checkpoint")
    setting = "full"
    if args.few_shot is not None:
        if "table3" not in plan.config["experiments"]:
            raise ValueError("--few-shot needs experiments.table3 in the config (its partition_seed)")
        if not 0 < args.few_shot <= 100:
            raise ValueError(f"--few-shot {args.few_shot}: the percentage of each class must be in (0, 100]")
        check_path_number(args.few_shot, "--few-shot")
        setting = few_shot_setting(args.few_shot)
    variant = teacher_variant(checkpoint, args.variant)
    spec = plan.student_spec(args.dataset, args.teacher, args.student, args.method, variant, setting, args.seed)
    extra = dict(spec.extra or {})
    if args.method == "HSAKD":
        if not args.hsakd_heads:
            raise ValueError("--method HSAKD needs --hsakd-heads (the teacher's trained auxiliary heads)")
        extra["hsakd_teacher_heads"] = args.hsakd_heads
    return _into(spec, args.out, args, teacher_checkpoint=checkpoint, finished=None,
                 hparams={**spec.hparams, **parse_hparams(args.hp)}, extra=extra or None)


def job_threads(args: argparse.Namespace) -> int:
    """The threads a hand run uses: ``--threads``, else the config's ``threads`` (what Snakemake gives
    the workflow's job when ``--cores`` allows it)."""
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be >= 1")
    return args.threads if args.threads is not None else plan_from(args.config, args.out).threads


def apply_threads(threads: int) -> None:
    """Run with ``threads`` as Snakemake's job does: its thread variables set (for any child process)
    and torch's intra-op pool of that size (torch read OMP_NUM_THREADS when it was imported)."""
    import torch

    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    torch.set_num_threads(threads)


def check_before_running(spec: TrainingJob, args: argparse.Namespace) -> None:
    """What a hand run checks just before it works: its device exists here, ``--out`` is writable."""
    check_device_here(spec.device, "--device" if args.device else f"device (of {args.config})")
    prepare_out(args.out)


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
    p.add_argument("--threads", type=int, help="CPU threads (default: the config's 'threads', as the workflow's "
                                               "job gets them; float results depend on the count)")
    if recipe:
        p.add_argument("--epochs", type=int, help="override the recipe's epochs")
        p.add_argument("--lr", type=float, help="override the recipe's initial learning rate")
        p.add_argument("--batch-size", type=int, dest="batch_size", help="override the recipe's batch size")
