"""The Snakemake workflow: the paper's job counts, lint, validation errors, the test config end to end,
and a killed training job resuming through Snakemake."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow   # Snakemake/SLURM end to end

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}


def snakemake(*args: str, workdir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run (without its total)."""
    stats = output[output.index("Job stats"):] if "Job stats" in output else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^([A-Za-z_0-9]+)\s+(\d+)$", stats, re.M)
            if m.group(1) != "total"}


def student_jobs(counts: dict[str, int]) -> dict[str, int]:
    """The grouped student jobs among a dry run's job counts."""
    return {name: n for name, n in counts.items() if name.startswith("students_")}


def test_paper_config_plans_the_paper_grid(tmp_path):
    from snakemake.utils import validate

    from mcmi.pipeline import WorkflowConfig

    result = snakemake("-n", "table1", "--configfile", str(REPO / "config/config.yaml"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    groups = student_jobs(counts)
    # one job per (pair, teacher variant, seed) runs all 11 methods: 12 x 2 x 5, plus the lambda*
    # students (6 teachers x 4 grid lambdas x 1 KD seed), each a group of its own
    assert len(groups) == 12 * 2 * 5 + 6 * 4 == 144 <= 150
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    sizes = {group.name: len(group.cells) for group in WorkflowConfig(config, REPO).student_groups()}
    table1_students = 12 * 11 * 2 * 5                    # Table 1: pairs x methods x {MLL, MCMI} x seeds
    table1x_students = 12 * 2 * 2 * 5                    # planned with them: same pair, variant and seed
    assert sum(sizes[name] for name in groups) == table1_students + 6 * 4 + table1x_students == 1584
    assert counts["student_vanilla"] == 8 * 5             # the "Student Accuracy" row: 8 students x 5 seeds
    assert counts["hsakd_heads"] == 12                    # 6 teachers x {MLL, MCMI}
    assert counts["teacher"] == 6 and counts["mcmi_selected"] == 6
    assert counts["mcmi_finetune"] == 6 * 4               # the lambda grid of every teacher

    result = snakemake("-n", "--configfile", str(REPO / "config/config.yaml"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["synthetic"] == 4 * 2 and counts["table"] == 9 and counts["figure"] == 13   # Tables 1-8, 1x; Figures 1-13


def test_paper_config_plans_table1x_beside_table1(tmp_path):
    from snakemake.utils import validate

    from mcmi.pipeline import WorkflowConfig

    result = snakemake("-n", "table1x", "--configfile", str(REPO / "config/config.yaml"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    groups = student_jobs(counts)
    assert len(groups) == 12 * 2 * 5 + 6 * 4               # (pair, variant, seed) groups + the lambda* students
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    sizes = {group.name: len(group.cells) for group in WorkflowConfig(config, REPO).student_groups()}
    table1x_students = 12 * 2 * 2 * 5                    # Table 1 pairs x {MIMKD, ITRD} x {MLL, MCMI} x seeds
    selection_students = 6 * 4 * 1                       # the lambda* selection the MCMI teachers need
    table1_students = 12 * 11 * 2 * 5                    # Table 1's share the same jobs (the config has both)
    assert sum(sizes[name] for name in groups) == table1x_students + selection_students + table1_students == 1584
    assert counts["student_vanilla"] == 8 * 5 and counts["measure"] == 6 * 2
    assert counts["hsakd_heads"] == 12                    # Table 1's HSAKD students share those jobs


def test_paper_config_plans_every_appendix_target(tmp_path):
    """Each appendix target is planned at the paper's scale: their own stages (t-SNE, per-class CMI,
    Eigen-CAM: two jobs each), the regularised and labelled-subset teachers, and Figure 8's students."""
    targets = ["figure3", "figure5", "figure6", "figure7", "figure8", "figure9", "figure10", "figure11", "figure12",
               "figure13", "table8"]
    result = snakemake(*targets, "-n", "--configfile", str(REPO / "config/config.yaml"), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["embedding"] == 2 and counts["class_cmi"] == 2 and counts["eigen_cam"] == 2
    assert counts["figure"] == 10 and counts["table"] == 1
    # Figure 8's T_t != T_s cells, in two parts to fit walltime.max_job_hours
    assert counts["students_cifar100_resnet56_resnet20_MCMI_T_seed0_part1"] == 1
    assert sum(n for name, n in counts.items() if "_lab" in name) == 4 * 3 * 2      # Figure 9: labels x seeds x teachers
    for target in targets:
        assert counts[target] == 1


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
    (lambda c: c["experiments"]["table5"]["synthetic"].update(kernel="cuda"), "experiments.table5.synthetic.kernel"),
    (lambda c: c["experiments"]["table5"]["synthetic"].update(lambda_grid=[0.1, -0.2]),
     "experiments.table5.synthetic.lambda_grid[1]"),
    (lambda c: c["experiments"]["table5"]["synthetic"].update(bogus_key=1), "'bogus_key' was unexpected"),
    (lambda c: c["experiments"]["table5"]["synthetic"].update(epochs="ten"), "experiments.table5.synthetic.epochs"),
    (lambda c: c["experiments"]["table5"].update(presets=["as_written", "as_remembered"]),
     "experiments.table5.presets[1]"),
    (lambda c: c["experiments"]["table5"]["synthetic"].update(split=[0.5, 0.2, 0.2]),
     "experiments.table5.synthetic (preset as_written): split"),
    (lambda c: c["experiments"]["figure8"].update(kd_scale="t4"), "experiments.figure8.kd_scale"),
    (lambda c: c["experiments"]["figure9"].update(labels=[5]), "experiments.figure9.labels[0]"),
    (lambda c: c["experiments"]["eigen_cam"].update(teacher="resnet56"), "experiments.eigen_cam.teacher"),
])
def test_bad_config_fails_validation_naming_the_key(tmp_path, edit, key):
    result = snakemake("-n", "--configfile", str(_config(tmp_path, edit)), workdir=tmp_path, timeout=120)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_config_overrides_of_lists_and_nested_keys_mean_what_they_say(tmp_path):
    """`--config seeds=[0,1]` (Snakemake leaves '0' and '1' strings) and a nested mapping merged key
    by key into the config file's: table3 (top-level seeds) plans seed 1 too, and table3's keys that
    the override does not name stay."""
    result = snakemake("-n", "table3", "--configfile", str(_config(tmp_path)), "--config", "seeds=[0,1]",
                       "experiments={table3: {alpha_percent: [25]}}", "mcmi={epochs: {digits: 2}}",
                       workdir=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    groups = student_jobs(job_counts(result.stdout))
    assert {"students_digits_resnet14_resnet8_MLL_fs25_seed0", "students_digits_resnet14_resnet8_MLL_fs25_seed1",
            "students_digits_resnet14_resnet8_MCMI_fs25_seed1"} <= set(groups)
    assert not any("fs50" in name for name in groups)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_device_without_a_gpu_fails_before_any_job_runs_here(tmp_path):
    result = snakemake("--cores", "1", "--configfile", str(_config(tmp_path, lambda c: c.update(device="cuda"))),
                       workdir=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "device: 'cuda', but this machine has no usable CUDA GPU" in result.stdout + result.stderr
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


def _reversed_keys(node):
    """The same config with every mapping's keys in reverse order."""
    if isinstance(node, dict):
        return {key: _reversed_keys(node[key]) for key in reversed(list(node))}
    return node


def test_edits_rerun_exactly_the_jobs_whose_spec_changed(tmp_path):
    """Snakemake's params trigger sees every job's whole spec: after an edit, a dry run plans the jobs
    whose spec changed (and what depends on them), nothing else; reordered keys plan nothing; a
    replaced pretrained-teacher file reruns its import and the students downstream."""
    import torch

    from mcmi.models import create_model

    checkpoint = tmp_path / "resnet14_pretrained.pth"
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet14", 10).state_dict()}, checkpoint)

    def base(config):
        config["experiments"] = {"table1": {**config["experiments"]["table1"], "methods": ["KD"], "seeds": [0]}}
        config["teachers"]["pretrained"] = {"digits": {"resnet14": str(checkpoint)}}
        config["recipes"]["student_tiny"] = dict(config["recipes"]["tiny"], epochs=1)
        config["recipe_of"]["digits"]["student"] = "student_tiny"

    def with_edit(edit):
        def apply(config):
            base(config)
            edit(config)
        return apply

    config = _config(tmp_path, base)
    results = tmp_path / "results/digits/students"
    targets = [str(results / "resnet14-resnet8/KD/MLL/full/seed0/metrics.json"),
               str(results / "vanilla/resnet8/seed0/metrics.json")]
    result = snakemake(*targets, "--cores", "2", "--configfile", str(config), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    def plan(edit=None, reorder=False) -> dict[str, int]:
        folder = tmp_path / f"edit{len(list(tmp_path.glob('edit*')))}"
        folder.mkdir()
        edited = _config(folder, with_edit(edit) if edit else base)
        if reorder:
            edited.write_text(yaml.safe_dump(_reversed_keys(yaml.safe_load(edited.read_text())), sort_keys=False))
        text = edited.read_text().replace(str(folder / "results"), str(tmp_path / "results"))
        edited.write_text(text)
        dry = snakemake(*targets, "-n", "--configfile", str(edited), workdir=tmp_path, timeout=120)
        assert dry.returncode == 0, dry.stderr[-3000:]
        return job_counts(dry.stdout)

    kd_group = "students_digits_resnet14_resnet8_MLL_full_seed0"
    assert plan(reorder=True) == {}                          # the same config, keys reversed: nothing to do
    assert plan(lambda c: c["methods"]["KD"].update(T=2)) == {kd_group: 1}
    assert plan(lambda c: c["recipes"]["student_tiny"].update(lr=0.01)) == {kd_group: 1, "student_vanilla": 1}
    assert plan(lambda c: c["methods"]["vanilla"].update(ce_weight=0.5)) == {"student_vanilla": 1}

    time.sleep(1.1)                                        # a newer modification time than the outputs'
    torch.manual_seed(1)
    torch.save({"model": create_model("resnet14", 10).state_dict()}, checkpoint)
    assert plan() == {"teacher": 1, kd_group: 1}
    # ... and the student, whose spec names the teacher by path only, is retrained, not reused (issue 21, case 3)
    result = snakemake(*targets, "--cores", "2", "--configfile", str(config), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / f"results/logs/student_groups/{kd_group}.log").read_text()
    assert "not reusing the result kept" in log and "input 'teacher_checkpoint'" in log, log
    from mcmi.identity import file_digest

    student = yaml.safe_load((results / "resnet14-resnet8/KD/MLL/full/seed0/metrics.json").read_text())
    teacher = tmp_path / "results/digits/teachers/resnet14/MLL/model.pt"
    assert student["provenance"]["identity"]["inputs"]["teacher_checkpoint"] == file_digest(teacher)


@pytest.mark.parametrize("edit_before_rerun, launcher", [(False, "plain"), (True, "plain"), (False, "fork_server")],
                         ids=["same-spec-resumes", "edited-spec-restarts", "same-spec-resumes-fork-server"])
def test_killed_training_job_resumes_through_snakemake(tmp_path, edit_before_rerun, launcher, monkeypatch, request):
    server_tmp = Path(tempfile.mkdtemp(prefix="mfs", dir="/tmp"))      # this test's own fork server (short path)
    request.addfinalizer(lambda: shutil.rmtree(server_tmp, ignore_errors=True))
    monkeypatch.setenv("TMPDIR", str(server_tmp))
    monkeypatch.setenv("MCMI_FORK_SERVER_IDLE", "10")

    def longer(config):
        config["recipes"]["tiny"]["epochs"] = 12
        config["datasets"]["digits"]["max_train"] = 600
        config["launcher"] = launcher

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
    if edit_before_rerun:                                  # the recipe is changed while the job is down
        config = _config(tmp_path, lambda c: (longer(c), c["recipes"]["tiny"].update(epochs=3, lr=0.02)))
        command[-1] = str(config)
    result = subprocess.run([*command[:-2], "--rerun-incomplete", *command[-2:]], capture_output=True, text=True, timeout=600,
                            env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "results/logs/digits/teachers/resnet14/MLL.log").read_text()
    if edit_before_rerun:                                  # the old run's checkpoint is not finished under the new spec
        assert "written by another job" in log and "resuming from" not in log
        assert "epoch 1/3 " in log and "epoch 3/3 " in log
        metrics = yaml.safe_load((tmp_path / "results/digits/teachers/resnet14/MLL/metrics.json").read_text())
        assert [h["lr"] for h in metrics["history"]][0] == 0.02 and len(metrics["history"]) == 3
        return
    assert "resuming from" in log
    finished = int(re.search(r"after epoch (\d+)", log).group(1))
    assert f"epoch {finished}/12 " not in log               # the finished epochs were not redone
    assert "epoch 12/12" in log
    servers = list(server_tmp.glob("mcmi-fork-server-*/*.log"))
    if launcher == "fork_server":                           # the jobs ran as children of the server, and the
        jobs = re.findall(r"^job \d+ .*?: (\{.*?\})", servers[0].read_text(), re.M)
        assert "{'signal': 9}" in jobs and "{'exit': 0}" in jobs, jobs    # killed client's job died with it
    else:
        assert servers == []
