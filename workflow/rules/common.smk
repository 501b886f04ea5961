# Helpers shared by every rule: config validation, names, paths, job specs and per-target inputs.
import os
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

from mcmi.workflow_config import WorkflowConfig  # noqa: E402  (after validation on purpose)

W = WorkflowConfig(config, repo=Path(workflow.basedir))

# envs/mcmi.yaml installs this repository's package (for its dependencies) from ${MCMI_REPO}; pip
# expands the variable when Snakemake builds the env, which happens after this file is read.
os.environ.update(MCMI_REPO=workflow.basedir)  # set, not read: no `envvars:` needed


def mcmi(arguments):
    """Shell line running the package's CLI from this repository's workflow/ folder, whatever the
    environment (conda, a cluster node); ``arguments`` may use Snakemake's {input}, {output}, ..."""
    src = os.path.join(workflow.basedir, "workflow")
    return f"PYTHONPATH={src}${{{{PYTHONPATH:+:$PYTHONPATH}}}} python -m mcmi {arguments}"


def res(path):
    """A path under the configured results folder."""
    return os.path.join(W.results, path)


wildcard_constraints:
    dataset="[a-z0-9_]+",
    teacher="[A-Za-z0-9_]+",
    student="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_]+",
    method="[A-Za-z+]+",
    variant="MLL|MCMI|MCMI_lam[0-9.]+|ES[0-9]+",
    setting="full|fs[0-9.]+|T[0-9.]+|zs",
    seed="[0-9]+",
    lam="[0-9.]+",
    temp="[0-9.]+",
    epochs="[0-9]+",
    dmu="[0-9.]+",
    preset="[a-z_]+",
    n="[0-9]+x?",          # table ids: 1..7 and 1x (beyond the paper)


def spec_json(spec):
    """A job spec as canonical JSON (sorted keys): the same config gives the same text whatever its
    key order, and Snakemake's params trigger reruns exactly the jobs whose spec changed."""
    from mcmi.provenance import canonical_json

    return canonical_json(spec)


def stage_command(spec_param="spec"):
    """The shell line of a training/measuring job: the stage gets its whole job spec as JSON."""
    return mcmi("stage --spec {params.%s:q} > {log} 2>&1" % spec_param)


def train_resources(kind):
    """threads/mem/runtime/gpu for a training job of this kind (teacher, mcmi, student, measure)."""
    return dict(
        mem_mb=lambda wc: W.mem_mb(wc.dataset),
        runtime=lambda wc: W.runtime_minutes(kind, wc),
        gpu=lambda wc: W.gpus_per_job,
    )
