"""What a config asks a SLURM cluster for, per target: jobs, GPUs and hours requested.

    python workflow/scripts/cluster_request.py [--configfile config/config.yaml] [TARGET ...]

For each target (default: every table and figure the config defines, then ``all``) it runs
``snakemake -n --profile profiles/slurm --configfile CONFIG TARGET`` in an empty folder (nothing is
built: every job is planned) and sums the resources of the jobs that go to SLURM (not the local
rules): how many, by GPUs per job, the wall hours they request, the GPU-hours (GPUs x hours) and the
longest job. A job needed by several targets is counted in each. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def local_rules() -> set[str]:
    """Rules that run on the submitting node: those the Snakefile's ``localrules:`` names and those
    declaring ``localrule: True`` (a dry run does not mark them)."""
    names: set[str] = set()
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        for listed in re.findall(r"^localrules:\s*(.+)$", text, re.M):
            names |= {name.strip() for name in listed.split(",") if name.strip()}
        rule = None
        for line in text.splitlines():
            if found := re.match(r"rule (\w+):", line):
                rule = found.group(1)
            elif rule and line.strip() == "localrule: True":
                names.add(rule)
    return names


def planned_jobs(text: str) -> list[dict[str, Any]]:
    """The jobs of a dry run's output (``snakemake -n``, Snakemake 9): rule, whether it runs locally,
    wildcards, resources (runtime in minutes, gpu, mem_mb) and shell command."""
    jobs = []
    local = local_rules()
    for block in re.split(r"\n(?=(?:local)?rule \S+:\n)", "\n" + text):
        head = re.match(r"(local)?rule (\S+):\n", block)
        if not head:
            continue
        job: dict[str, Any] = {"rule": head.group(2), "local": bool(head.group(1)) or head.group(2) in local}
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("resources:"):
                for item in line[len("resources:"):].split(","):
                    key, _, value = item.strip().partition("=")
                    job[key] = int(value) if value.isdigit() else value
            elif line.startswith("wildcards:"):
                job["wildcards"] = dict(item.strip().split("=", 1) for item in line[len("wildcards:"):].split(","))
            elif line.startswith("Shell command:"):
                job["shell"] = line[len("Shell command:"):].strip()
        # a job without a shell command (a named target, `all`; this workflow's one `run:` rule is local)
        # is not submitted
        job["local"] = job["local"] or job.get("shell", "None") == "None"
        jobs.append(job)
    return jobs


def dry_run(configfile: Path, target: str | None = None, profile: Path = REPO / "profiles" / "slurm") -> str:
    """The output of ``snakemake -n --profile PROFILE`` for ``target`` in an empty working folder."""
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", *([target] if target else []),   # first: --configfile takes nargs='+'
             "-s", str(REPO / "Snakefile"), "-d", workdir, "-n", "--profile", str(profile), "--configfile",
             str(configfile)],
            capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake -n {target or ''} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def summary(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Jobs sent to SLURM, their count by GPUs, wall hours, GPU-hours and the longest job (hours)."""
    remote = [j for j in jobs if not j["local"]]
    hours = [j.get("runtime", 0) / 60 for j in remote]
    return {"jobs": len(remote), "by_gpus": Counter(int(j.get("gpu", 0)) for j in remote),
            "hours": sum(hours), "gpu_hours": sum(h * int(j.get("gpu", 0)) for h, j in zip(hours, remote)),
            "longest": max(hours, default=0.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", default=str(REPO / "config" / "config.yaml"))
    parser.add_argument("targets", nargs="*")
    args = parser.parse_args(argv)
    targets = args.targets
    if not targets:
        import yaml

        sys.path.insert(0, str(REPO / "workflow"))
        from mcmi.pipeline import WorkflowConfig

        config = WorkflowConfig(yaml.safe_load(Path(args.configfile).read_text()), REPO)
        targets = list(config.targets()) + ["all"]
    print("| target | jobs to SLURM | jobs x GPUs | hours requested | GPU-hours requested | longest job (h) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for target in targets:
        s = summary(planned_jobs(dry_run(Path(args.configfile), target)))
        by = ", ".join(f"{n} x {g}" for g, n in sorted(s["by_gpus"].items()))
        print(f"| {target} | {s['jobs']} | {by} | {s['hours']:,.0f} | {s['gpu_hours']:,.0f} | {s['longest']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
