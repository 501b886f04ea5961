"""Command line: what the workflow's rules call.

    mcmi teacher --model M --out DIR ...          train a teacher by cross-entropy (one command, no Snakemake)
    mcmi mcmi --model M --teacher-checkpoint P --lam L --out DIR ...   MCMI fine-tuning of a teacher
    mcmi student --teacher T --teacher-checkpoint P --student S --method KD --out DIR ...   distil a student
    mcmi stage --spec SPEC            run one stage (teacher, import, mcmi, measure, student, ...)
    mcmi select-lambda --out F --teacher T --dataset D M...   pick lambda* from students' metrics
    mcmi adopt-teacher --models P... --metrics M... --lam L --out-model P --out-metrics F
                                      make the lambda* grid teacher the MCMI teacher
    mcmi table N --out PREFIX M...    aggregate metrics files into table N
    mcmi figure N --out PREFIX M...   aggregate metrics files into figure N
    mcmi paper-check --out PREFIX     Table 5's one-hot Pdist against its ground-truth accuracies

SPEC is a JSON object, given inline or as @path/to/spec.json (or .yaml).

Errors: input the command cannot use (a flag, a config key, a file that is missing or unreadable)
is one line on stderr and exit status 2; a run that fails on the way (a loss that turns NaN, a full
disk, a read-only folder) is one line and exit status 1. Anything else is a bug and shows its
traceback; MCMI_TRACEBACK=1 shows the traceback of the one-line errors too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml


def _read_spec(text: str) -> dict[str, Any]:
    where = "--spec"
    try:
        if text.startswith("@"):
            path = Path(text[1:])
            where = f"--spec {path}"
            if not path.is_file():
                raise FileNotFoundError(f"{where}: no such file")
            text = path.read_text()
            spec = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        else:
            spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    except yaml.YAMLError as error:
        from mcmi.pipeline.config import yaml_error_text

        raise ValueError(f"{where}: not valid YAML ({yaml_error_text(error)})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: a spec must be a JSON object")
    return spec


def _cmd_stage(args: argparse.Namespace) -> None:
    from mcmi.pipeline.specs import parse_spec
    from mcmi.stages import run_stage

    spec = _read_spec(args.spec)
    if args.stage_name:
        spec["stage"] = args.stage_name
    _run_here_or_on_processes(parse_spec(spec))


def _run_here_or_on_processes(spec: Any) -> None:
    """Run the stage in this process, or exec torchrun with the spec's number of processes (mcmi.distributed)."""
    from mcmi.distributed import relaunch_if_needed
    from mcmi.stages import run_stage

    relaunch_if_needed(spec.processes, spec.to_json())
    run_stage(spec)


def _cmd_hand_run(args: argparse.Namespace) -> None:
    from mcmi.pipeline import handrun

    spec = args.build(args)
    if args.print_spec:
        print(spec.to_json(), flush=True)      # JSON only: what `mcmi stage --spec` takes
        return
    threads = handrun.job_threads(args)
    handrun.check_before_running(spec, args)
    handrun.apply_threads(threads)
    print(f"job spec ({threads} thread{'s' if threads > 1 else ''}): {spec.to_json()}", flush=True)
    _run_here_or_on_processes(spec)


def _cmd_select_lambda(args: argparse.Namespace) -> None:
    from mcmi.selection import select_lambda

    select_lambda(args.metrics, args.out, teacher=args.teacher, dataset=args.dataset)


def _cmd_adopt_teacher(args: argparse.Namespace) -> None:
    from mcmi.selection import adopt_teacher

    adopt_teacher(args.models, args.metrics, args.out_model, args.out_metrics, selection=args.selection, lam=args.lam)


def _verify_inputs(args: argparse.Namespace) -> None:
    """Check every metrics file before it is aggregated (see mcmi.report.records), and, with
    ``--plan-config``, that each is what that config plans for its path (no stale result)."""
    from mcmi.report.records import check_against_plan, load_metrics

    records = load_metrics(args.metrics)
    if args.plan_config:
        from mcmi.pipeline import WorkflowConfig

        text = args.plan_config
        config = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(Path(text).read_text())
        check_against_plan(records, WorkflowConfig(config, repo=Path(__file__).resolve().parents[2]))


def _cmd_table(args: argparse.Namespace) -> None:
    from mcmi.report import make_table

    _verify_inputs(args)
    make_table(args.number, args.metrics, args.paper_dir, args.out)


def _cmd_figure(args: argparse.Namespace) -> None:
    from mcmi.report import make_figure

    _verify_inputs(args)
    make_figure(args.number, args.metrics, args.out, args.paper_dir)


def _cmd_paper_check(args: argparse.Namespace) -> None:
    from mcmi.paper_checks import write_table5_check

    df = write_table5_check(args.paper_dir, args.out, args.num_points, args.z_slack)
    print(df.to_string(index=False))


REPORT_COMMANDS = ("table", "figure")
PAPER_DIR = Path(__file__).resolve().parents[2] / "config" / "paper"   # this repository's published numbers


def build_parser(report_ids: bool = True) -> argparse.ArgumentParser:
    """The parser of every command. With ``report_ids`` the table and figure commands list the ids of
    mcmi.report's registries; main leaves that out for other commands, which then start without
    importing the report code (pandas)."""
    parser = argparse.ArgumentParser(prog="mcmi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    _add_hand_runs(sub)

    p = sub.add_parser("stage", help="run one pipeline stage from a job spec")
    p.add_argument("--spec", required=True, help="JSON object, or @file.json / @file.yaml")
    p.add_argument("--stage", dest="stage_name", help="override the spec's 'stage'")
    p.set_defaults(func=_cmd_stage)

    p = sub.add_parser("select-lambda", help="choose lambda* from KD students trained on each grid teacher")
    p.add_argument("--out", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("metrics", nargs="+")
    p.set_defaults(func=_cmd_select_lambda)

    p = sub.add_parser("adopt-teacher", help="make the lambda* grid teacher the MCMI teacher")
    p.add_argument("--models", nargs="+", required=True, help="the grid teachers' model.pt files")
    p.add_argument("--metrics", nargs="+", required=True, help="their metrics.json files, in the same order")
    choice = p.add_mutually_exclusive_group(required=True)
    choice.add_argument("--selection", help="lambda_star.json written by select-lambda")
    choice.add_argument("--lam", type=float, help="a fixed lambda* (the paper's)")
    p.add_argument("--out-model", required=True)
    p.add_argument("--out-metrics", required=True)
    p.set_defaults(func=_cmd_adopt_teacher)

    ids = {"table": "", "figure": ""}
    if report_ids:
        from mcmi.report import FIGURES, TABLES

        ids = {registry.kind: ": " + ", ".join(map(str, registry.ids)) for registry in (TABLES, FIGURES)}
    for name, func, id_type in (("table", _cmd_table, str), ("figure", _cmd_figure, int)):
        p = sub.add_parser(name, help=f"aggregate metrics files into a {name}")
        p.add_argument("number", type=id_type, help=f"{name} id{ids[name]}")
        p.add_argument("--out", required=True, help="output prefix (extensions are added)")
        p.add_argument("--paper-dir", default=str(PAPER_DIR), help="the paper's published numbers")
        p.add_argument("--plan-config", metavar="CONFIG",
                       help="a workflow config (YAML file, or inline JSON as the rules pass it): refuse metrics "
                            "files that this config would not make (stale results)")
        p.add_argument("metrics", nargs="*", help="metrics files (before or after the options)")
        p.set_defaults(func=func)

    p = sub.add_parser("paper-check", help="Table 5: Bayes accuracy implied by the paper's one-hot Pdist")
    p.add_argument("--paper-dir", default=str(PAPER_DIR), help="the paper's published numbers")
    p.add_argument("--num-points", type=int, default=5000, help="points the Pdist is summed over")
    p.add_argument("--z-slack", type=float, default=3.0, help="standard errors of sampling slack")
    p.add_argument("--out", required=True, help="output prefix (.csv and .md are written)")
    p.set_defaults(func=_cmd_paper_check)
    return parser


def _add_hand_runs(sub: Any) -> None:
    """``mcmi teacher``, ``mcmi mcmi`` and ``mcmi student``: the workflow's jobs by hand."""
    from mcmi.pipeline import handrun

    p = sub.add_parser("teacher", help="train a teacher by cross-entropy (MLL), as the workflow's teacher job")
    p.add_argument("--model", required=True, help="model name of the zoo, e.g. resnet56")
    p.add_argument("--early-stop", type=int, metavar="EPOCH", help="stop after this epoch (Table 4's ES teacher)")
    handrun.add_common(p)
    p.set_defaults(func=_cmd_hand_run, build=handrun.teacher_spec)

    p = sub.add_parser("mcmi", help="fine-tune a trained teacher by MCMI (LL + lambda * CMI)")
    p.add_argument("--model", required=True)
    p.add_argument("--teacher-checkpoint", required=True, help="the MLL teacher's model.pt (RepDistiller layout)")
    p.add_argument("--lam", type=float, required=True, help="lambda, e.g. 0.15")
    handrun.add_common(p)
    p.set_defaults(func=_cmd_hand_run, build=handrun.mcmi_spec)

    p = sub.add_parser("student", help="distil a student from a frozen teacher with one KD method",
                       epilog=handrun.methods_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="model name of the zoo, e.g. resnet20")
    p.add_argument("--method", required=True, help="a method listed below (vanilla: no teacher)")
    p.add_argument("--teacher", help="teacher model name (every method but vanilla)")
    p.add_argument("--teacher-checkpoint", help="the teacher's model.pt (RepDistiller layout)")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="a method hyperparameter, repeatable: --hp T=4 --hp alpha=0.9")
    p.add_argument("--few-shot", type=float, metavar="ALPHA", help="train on ALPHA %% of each class (Table 3)")
    p.add_argument("--hsakd-heads", help="HSAKD: the teacher's auxiliary heads (mcmi stage hsakd_heads output)")
    p.add_argument("--variant", help="the teacher's variant (MLL, MCMI, MCMI_lam<lambda>, ES<epochs>) for the "
                                     "student's records; default: the one the metrics.json beside the "
                                     "teacher checkpoint records (refused when the two disagree)")
    handrun.add_common(p)
    p.set_defaults(func=_cmd_hand_run, build=handrun.student_spec)
    for name in ("teacher", "mcmi", "student"):
        sub.choices[name].add_argument("--print-spec", action="store_true",
                                       help="print the job spec and stop (the JSON `mcmi stage --spec` takes)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed; the metrics files of ``table``/``figure`` may come before or after the options
    (argparse alone takes the number and no files when ``--out`` comes between them)."""
    argv = list(argv)
    report = bool(argv) and argv[0] in REPORT_COMMANDS
    parser = build_parser(report_ids=report)
    if not report:
        return parser.parse_args(argv)
    args, rest = parser.parse_known_args(argv)
    stray = [item for item in rest if item.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.metrics = list(args.metrics) + rest
    return args


def _error_line(exc: BaseException) -> str:
    return "mcmi: error: " + " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its known errors are one line on stderr (see the module docstring)."""
    from mcmi.provenance import NonFiniteValueError
    from mcmi.train import NonFiniteLossError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        args.func(args)
    except (NonFiniteLossError, NonFiniteValueError) as exc:      # the run failed: a NaN/inf result
        if os.environ.get("MCMI_TRACEBACK"):
            raise
        print(_error_line(exc), file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, yaml.YAMLError) as exc:   # input that cannot be used
        if os.environ.get("MCMI_TRACEBACK"):
            raise
        print(_error_line(exc), file=sys.stderr)
        return 2
    except OSError as exc:                  # the run failed on the way: a full disk, a read-only folder, ...
        if os.environ.get("MCMI_TRACEBACK"):
            raise
        print(_error_line(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
