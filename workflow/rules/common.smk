# Helpers shared by every rule: config validation, names, paths, job specs and per-target inputs.
import os
from pathlib import Path

from snakemake.utils import update_config

from mcmi.pipeline import WorkflowConfig  # noqa: E402
from mcmi.pipeline.config import typed_overrides  # noqa: E402
from mcmi.pipeline.lock import ResultsLock  # noqa: E402
from mcmi.provenance import canonical_json  # noqa: E402
from mcmi.pipeline.naming import FINETUNED_TEACHER_VARIANT, TRAINED_TEACHER_VARIANT, WILDCARDS, Variant  # noqa: E402

# Config layers: config/config.yaml, or the --configfile files instead (merged in order); then the
# --config overrides, merged key by key into nested mappings (lists are replaced). Snakemake leaves
# the scalars inside an override's lists and mappings strings (seeds=[0,1] -> ['0', '1']); they are
# read again as YAML here, so the override means what it says.
update_config(config, typed_overrides(workflow.config_settings.config))

# The schema check, its defaults and the checks beyond it: mcmi.pipeline.config (one place for rules and code).
W = WorkflowConfig(config, repo=Path(workflow.basedir))
P = W.paths.pattern     # P("student_metrics") -> the path template with its {wildcards}
# The config this results folder is planned with, rewritten only when it changes: tables and figures
# depend on it, so after any config change they rerun and refuse inputs the new config would not make.
PLAN_CONFIG = W.record_plan_config()
# The package code likewise (its fingerprint): after a code change the tables and figures are rebuilt
# and say which of their results other code produced (training jobs rerun only when their spec or an
# input file changes).
CODE_STAMP = W.record_code_stamp()

# One pipeline run per results folder (Snakemake's own lock covers one working directory only).
RESULTS_LOCK = ResultsLock(W.results)


# Snakemake keeps one handler of each kind: everything that must happen before the first job is here.
onstart:
    # Jobs that run on this machine need the config's device here (on a cluster the submit node may have none).
    if workflow.local_exec:
        W.check_device_here()
    RESULTS_LOCK.acquire()


onsuccess:
    RESULTS_LOCK.release()


onerror:
    RESULTS_LOCK.release()

# launcher: fork_server -- the jobs this machine runs start from one process that has imported torch and
# the package (mcmi/forkserver.py). Set in this process's environment, which local jobs inherit, so the
# jobs' shell commands (and with them Snakemake's code trigger) are the same under either launcher.
# (Set, not read: no `envvars:` needed. Jobs sent elsewhere, e.g. by SLURM, run plainly.)
os.environ.update(MCMI_LAUNCHER=W.config["launcher"] if workflow.local_exec else "plain")

# envs/mcmi.yaml installs this repository's package (for its dependencies) from ${MCMI_REPO}; pip
# expands the variable when Snakemake builds the env, which happens after this file is read.
os.environ.update(MCMI_REPO=workflow.basedir)  # set, not read: no `envvars:` needed


def mcmi(arguments):
    """Shell line running the package's CLI from this repository's workflow/ folder, whatever the
    environment (conda, a cluster node); ``arguments`` may use Snakemake's {input}, {output}, ..."""
    src = os.path.join(workflow.basedir, "workflow")
    return f"PYTHONPATH={src}${{{{PYTHONPATH:+:$PYTHONPATH}}}} python -m mcmi {arguments}"


wildcard_constraints:
    **WILDCARDS,


def spec_json(spec):
    """A typed job spec as canonical JSON (sorted keys): the same config gives the same text whatever
    its key order, and Snakemake's params trigger reruns exactly the jobs whose spec changed."""
    return spec.to_json()


def stage_command(spec_param="spec"):
    """The shell line of a training/measuring job: the stage gets its whole job spec as JSON."""
    return mcmi("stage --spec {params.%s:q} > {log} 2>&1" % spec_param)


def train_resources(kind):
    """mem/runtime/gpu of a job of this kind (teacher, hsakd_heads, measure, mcmi, student): one GPU per
    process, the wall time from the stated per-epoch costs (mcmi.pipeline.resources)."""

    def get(key):
        def value(wc):
            model = wc.student if kind == "student" else wc.teacher
            return W.job_resources(kind, wc.dataset, model, getattr(wc, "variant", "MLL"))[key]

        return value

    return dict(mem_mb=get("mem_mb"), runtime=get("runtime"), gpu=get("gpu"))


def job_threads(wc):
    """CPU threads of a job: per process times its processes (distributed.threads, threads)."""
    return W.job_threads(wc.dataset)
