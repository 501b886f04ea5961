"""The Snakemake workflow: the paper's job counts, lint, validation errors, the test config end to end,
and a killed training job resuming through Snakemake."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}


def snakemake(*args: str, workdir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^([a-z_0-9]+)\s+(\d+)$", output, re.M)}


def test_paper_config_plans_the_paper_grid(tmp_path):
    result = snakemake("-n", "table1", "--configfile", str(REPO / "config/config.yaml"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    table1_students = 12 * 11 * 2 * 5                    # Table 1: pairs x methods x {MLL, MCMI} x seeds
    selection_students = 6 * 4 * 1                       # lambda*: 6 teachers x 4 grid lambdas x 1 KD seed
    assert counts["student"] == table1_students + selection_students == 1344
    assert counts["student_vanilla"] == 8 * 5             # the "Student Accuracy" row: 8 students x 5 seeds
    assert counts["hsakd_heads"] == 12                    # 6 teachers x {MLL, MCMI}
    assert counts["teacher"] == 6 and counts["mcmi_selected"] == 6
    assert counts["mcmi_finetune"] == 6 * 4               # the lambda grid of every teacher

    result = snakemake("-n", "--configfile", str(REPO / "config/config.yaml"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["synthetic"] == 4 and counts["table"] == 8 and counts["figure"] == 3   # Tables 1-7 and 1x


def test_paper_config_plans_table1x_beside_table1(tmp_path):
    result = snakemake("-n", "table1x", "--configfile", str(REPO / "config/config.yaml"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    table1x_students = 12 * 2 * 2 * 5                    # Table 1 pairs x {MIMKD, ITRD} x {MLL, MCMI} x seeds
    selection_students = 6 * 4 * 1                       # the lambda* selection the MCMI teachers need
    assert counts["student"] == table1x_students + selection_students == 264
    assert counts["student_vanilla"] == 8 * 5 and counts["measure"] == 6 * 2
    assert "hsakd_heads" not in counts


def test_lint_passes():
    result = subprocess.run([*SNAKEMAKE, "--lint", "--configfile", str(REPO / "config/test.yaml")], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _config(tmp_path: Path, edit=None) -> Path:
    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["datasets"]["demo_imagenet"]["root"] = str(tmp_path / "results/data/demo_imagenet")
    if edit:
        edit(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["experiments"]["table1"].update(pairs=["resnet14->resnet99"]), "experiments.table1.pairs[0]"),
    (lambda c: c["experiments"]["table1"].update(methods=["KD", "Distill9000"]), "experiments.table1.methods[1]"),
    (lambda c: c["methods"]["KD"].update(temperature=4), "methods.KD"),
    (lambda c: c["experiments"]["table7"].update(lambdas=[-0.1]), "lambdas"),
    (lambda c: c["experiments"]["table3"].update(alpha_percent=[150]), "alpha_percent"),
    (lambda c: c["teachers"]["pretrained"].update(digits={"resnet14": "/nonexistent/ckpt.pth"}),
     "teachers.pretrained.digits.resnet14"),
    (lambda c: c["experiments"]["table1"].update(dataset="cifar1000"), "experiments.table1.dataset"),
    (lambda c: c["experiments"]["table5"]["synthetic"].update(kernel="cuda"), "experiments.table5.synthetic"),
])
def test_bad_config_fails_validation_naming_the_key(tmp_path, edit, key):
    result = snakemake("-n", "--configfile", str(_config(tmp_path, edit)), workdir=tmp_path, timeout=120)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_test_config_runs_end_to_end(tmp_path):
    config = _config(tmp_path)
    result = snakemake("--cores", "2", "--configfile", str(config), workdir=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-5000:]
    results = tmp_path / "results"
    for n in range(1, 8):
        for ext in ("md", "tex", "csv"):
            assert (results / "tables" / f"table{n}.{ext}").stat().st_size > 0
    for n in (1, 2, 4):
        for ext in ("pdf", "png"):
            assert (results / "figures" / f"figure{n}.{ext}").stat().st_size > 0
    table1 = (results / "tables" / "table1.md").read_text()
    assert "resnet14" in table1 and "not run" in table1           # our cells and the paper's unrun ones
    selection = yaml.safe_load((results / "digits/teachers/resnet14/lambda_star.json").read_text())
    assert selection["final"]["lambda_star"] in (0.1, 0.2)
    assert not any((results / "_resume").rglob("*.pt"))            # finished jobs leave no resume files


def test_killed_training_job_resumes_through_snakemake(tmp_path):
    def longer(config):
        config["recipes"]["tiny"]["epochs"] = 40
        config["datasets"]["digits"]["max_train"] = 1000

    config = _config(tmp_path, longer)
    target = str(tmp_path / "results/digits/teachers/resnet14/MLL/model.pt")
    command = [*SNAKEMAKE, "-d", str(tmp_path), target, "--cores", "1", "--configfile", str(config)]
    log_file = open(tmp_path / "snakemake.log", "w")
    proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=_env(),
                            start_new_session=True)
    resume = tmp_path / "results/_resume/digits/teachers/resnet14/MLL/last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not resume.exists():
        time.sleep(0.2)
    assert resume.exists(), "the job never wrote a resume checkpoint:\n" + (tmp_path / "snakemake.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)                    # the whole job dies, as on a node failure
    proc.wait(timeout=60)
    unlock = subprocess.run([*command[:-2], "--unlock", *command[-2:]], capture_output=True, text=True,
                            timeout=120, env=_env())           # a killed Snakemake leaves its lock behind
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    result = subprocess.run([*command[:-2], "--rerun-incomplete", *command[-2:]], capture_output=True, text=True, timeout=600,
                            env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "results/logs/digits/teachers/resnet14/MLL.log").read_text()
    assert "resuming from" in log
    finished = int(re.search(r"after epoch (\d+)", log).group(1))
    assert f"epoch {finished}/40 " not in log               # the finished epochs were not redone
    assert "epoch 40/40" in log
