"""A result is the product of its inputs' content: no stale student after a teacher changes.

Each case of issue 21 on the real workflow (Snakemake on a cut-down test config) or on hand-made
files: a retrained, re-selected or replaced teacher retrains its students (case 3, a replaced pretrained
file, is in test_workflow.py's test_edits_rerun_exactly_the_jobs_whose_spec_changed) (never reused from
``_finished/``, never resumed), a forged kept result is not reused, the tables refuse stale or
inconsistent inputs, and two runs cannot write one results folder at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mcmi.identity import file_digest, seal_problem, sealed
from mcmi.report.records import load_metrics
from test_student_groups import member_spec, teacher_files  # noqa: F401 (teacher_files is a fixture)
from test_workflow import REPO, SNAKEMAKE, _config, _env, job_counts, snakemake

STUDENTS = "digits/students/resnet14-resnet8/KD"
GROUP_LOG = "logs/student_groups/students_digits_resnet14_resnet8_{variant}_full_seed0.log"


def _tiny(config: dict) -> None:
    """Table 1 with KD only, one seed, the paper's lambda* mode: the fewest jobs that train MLL and
    MCMI teachers and their students."""
    config["experiments"] = {"table1": {"dataset": "digits", "pairs": ["resnet14->resnet8"], "methods": ["KD"],
                                        "seeds": [0]}}
    config["mcmi"]["lambda_selection"]["mode"] = "paper"
    config["mcmi"]["paper_lambda_star"] = {"digits": {"resnet14": 0.1}}
    config["recipes"]["student_tiny"] = dict(config["recipes"]["tiny"], epochs=1)
    config["recipe_of"]["digits"]["student"] = "student_tiny"


def _build(tmp_path: Path, edit=None, target: str = "table1", expect_ok: bool = True) -> subprocess.CompletedProcess:
    config = _config(tmp_path, lambda c: (_tiny(c), edit(c) if edit else None))
    result = snakemake(target, "--cores", "2", "--configfile", str(config), workdir=tmp_path, timeout=900)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _log(tmp_path: Path, variant: str) -> str:
    return (tmp_path / "results" / GROUP_LOG.format(variant=variant)).read_text()


def _student(tmp_path: Path, variant: str) -> dict:
    return json.loads((tmp_path / "results" / STUDENTS / variant / "full/seed0/metrics.json").read_text())


def _teacher_digest(tmp_path: Path, variant: str) -> str:
    return file_digest(tmp_path / "results/digits/teachers/resnet14" / variant / "model.pt")


def _numbers(metrics: dict) -> tuple:
    return metrics["final"]["test_acc"], [h["train_loss"] for h in metrics["history"]]


@pytest.mark.slow
def test_changed_teachers_retrain_their_students_and_stale_inputs_are_refused(tmp_path):
    """(1) a retrained MLL teacher and (2) another lambda* retrain the students distilled from them
    (no reuse, no resume), and the result equals a fresh build; (metadata lost) a config edit whose
    jobs Snakemake cannot see is refused at table time, naming the stale files."""
    _build(tmp_path)
    first = _student(tmp_path, "MLL")

    # a change that concerns the tables only (where the paper's numbers are read from) retrains nothing
    paper = tmp_path / "paper"
    shutil.copytree(REPO / "config/paper", paper)
    tables_only = _config(tmp_path, lambda c: (_tiny(c), c.update(paper_dir=str(paper))))
    dry = snakemake("table1", "-n", "--configfile", str(tables_only), workdir=tmp_path, timeout=300)
    assert dry.returncode == 0 and job_counts(dry.stdout) == {"table": 1, "table1": 1}, dry.stdout[-3000:]

    # (1) the MLL teacher's recipe changes: teacher and MCMI teacher are retrained under the same paths
    lr = lambda c: c["recipes"].update(teacher_tiny=dict(c["recipes"]["tiny"], lr=0.02)) or \
        c["recipe_of"]["digits"].update(teacher="teacher_tiny")
    _build(tmp_path, lr)
    for variant in ("MLL", "MCMI"):
        log = _log(tmp_path, variant)
        assert "not reusing the result kept" in log and "input 'teacher_checkpoint'" in log, log
        assert "reusing the finished result" not in log and "resuming" not in log
        inputs = _student(tmp_path, variant)["provenance"]["identity"]["inputs"]
        assert inputs["teacher_checkpoint"] == _teacher_digest(tmp_path, variant)
    assert _numbers(_student(tmp_path, "MLL")) != _numbers(first)

    # (2) lambda* changes: the MCMI teacher is re-adopted from another grid teacher, its students retrain
    before = _log(tmp_path, "MLL")
    lam = lambda c: (lr(c), c["mcmi"].update(paper_lambda_star={"digits": {"resnet14": 0.2}}))
    _build(tmp_path, lam)
    assert "not reusing the result kept" in _log(tmp_path, "MCMI")
    assert _log(tmp_path, "MLL") == before                       # the MLL students were not touched
    assert _student(tmp_path, "MCMI")["provenance"]["identity"]["inputs"]["teacher_checkpoint"] == \
        _teacher_digest(tmp_path, "MCMI")

    # a fresh build of the final config gives the same table
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _build(fresh, lam)
    assert (tmp_path / "results/tables/table1.csv").read_text() == (fresh / "results/tables/table1.csv").read_text()

    # (metadata lost) the folder is used without .snakemake after KD's T is edited: Snakemake plans no
    # student, and the table refuses the students trained at T = 4, naming them and how to rebuild
    shutil.rmtree(tmp_path / ".snakemake")
    hot = lambda c: (lam(c), c["methods"]["KD"].update(T=2))
    result = _build(tmp_path, hot, expect_ok=False)
    assert result.returncode != 0
    log = (tmp_path / "results/logs/tables/table1.log").read_text()
    assert "stale" in log and f"{STUDENTS}/MLL/full/seed0/metrics.json" in log, log
    assert "--forcerun students_digits_resnet14_resnet8_MCMI_full_seed0 students_digits_resnet14_resnet8_MLL_full_seed0" in log
    assert not (tmp_path / "results/tables/table1.md").exists()  # no table of mixed results


@pytest.mark.slow
def test_a_killed_group_does_not_resume_on_a_replaced_teacher(tmp_path):
    """(4) A student group killed mid-run leaves resume checkpoints; after its teacher is replaced,
    the rerun discards them (naming the changed input) and trains from epoch 1."""
    def longer(config):
        _tiny(config)
        config["recipes"]["student_tiny"].update(epochs=40)
        config["datasets"]["digits"]["max_train"] = 600

    config = _config(tmp_path, longer)
    target = str(tmp_path / "results" / STUDENTS / "MLL/full/seed0/metrics.json")
    teacher = str(tmp_path / "results/digits/teachers/resnet14/MLL/model.pt")
    ok = snakemake(teacher, "--cores", "1", "--configfile", str(config), workdir=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    command = [*SNAKEMAKE, "-d", str(tmp_path), target, "--cores", "1", "--configfile", str(config)]
    with open(tmp_path / "snakemake.log", "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    resume = tmp_path / "results/_resume" / STUDENTS / "MLL/full/seed0/last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not resume.exists():
        time.sleep(0.2)
    assert resume.exists(), (tmp_path / "snakemake.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert subprocess.run([*command, "--unlock"], capture_output=True, timeout=120, env=_env()).returncode == 0

    from mcmi.models import create_model                         # the teacher is replaced while the job is down
    torch.manual_seed(7)
    torch.save({"model": create_model("resnet14", 10).state_dict()}, teacher)
    result = subprocess.run([*command, "--rerun-incomplete"], capture_output=True, text=True, timeout=900, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log(tmp_path, "MLL")
    assert "discarding resume checkpoint" in log and "input 'teacher_checkpoint'" in log, log
    assert "resuming from" not in log and "epoch 1/40 " in log


# ------------------------------------------------------------------ kept results and table checks
def _metrics_file(path: Path, run: dict, test_acc: float = 50.0, history_acc: float | None = None) -> Path:
    metrics = {"run": run, "final": {"test_acc": test_acc, "epochs": 2},
               "history": [{"epoch": 1, "test_acc": 10.0}, {"epoch": 2, "test_acc": history_acc or test_acc}],
               "provenance": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sealed(metrics)))
    return path


def _student_run(dataset: str = "digits") -> dict:
    return {"stage": "student", "dataset": dataset, "teacher": "resnet14", "student": "resnet8", "method": "KD",
            "variant": "MLL", "seed": 0}


def test_a_hand_edited_metrics_file_breaks_its_seal(tmp_path):
    path = _metrics_file(tmp_path / "results" / STUDENTS / "MLL/full/seed0/metrics.json", _student_run())
    assert seal_problem(json.loads(path.read_text())) is None
    forged = json.loads(path.read_text())
    forged["final"]["test_acc"] = forged["history"][-1]["test_acc"] = 99.0
    path.write_text(json.dumps(forged))
    with pytest.raises(ValueError, match="seal mismatch"):
        load_metrics([path])


@pytest.mark.parametrize("change, message", [
    (dict(test_acc=150.0, history_acc=150.0), "'test_acc' is 150.0, expected an accuracy in [0, 100]"),
    (dict(test_acc=60.0, history_acc=55.0), "final.test_acc is 60.0 but the last history entry has test_acc 55.0"),
    (dict(dataset="cifar100"), "run.dataset is 'cifar100' but the file's path says 'digits'"),
    (dict(test_acc="abc", history_acc=1.0), "'test_acc' is 'abc', expected an accuracy"),
])
def test_tables_refuse_inconsistent_metrics_naming_file_and_fault(tmp_path, change, message):
    dataset = change.pop("dataset", "digits")
    path = _metrics_file(tmp_path / "results" / STUDENTS / "MLL/full/seed0/metrics.json", _student_run(dataset),
                         **change)
    with pytest.raises(ValueError) as error:
        load_metrics([path])
    assert str(path) in str(error.value) and message in str(error.value)


def test_a_forged_kept_result_is_not_reused(tmp_path, capsys, teacher_files):
    """(5) A kept result whose metrics were edited is trained again when its group reruns."""
    from mcmi.stages import run_stage

    kd, at = (member_spec(tmp_path, m, teacher_files, epochs=1) for m in ("KD", "AT"))
    run_stage({"stage": "student_group", "members": [kd, at]})
    kept = Path(kd["finished"]) / "metrics.json"
    forged = json.loads(kept.read_text())
    forged["final"]["test_acc"] = forged["history"][-1]["test_acc"] = 99.0
    kept.unlink()                                                # a new file: the output's hard link keeps the original
    kept.write_text(json.dumps(forged))
    for spec in (kd, at):
        Path(spec["out_metrics"]).unlink()
        Path(spec["out_model"]).unlink()
    capsys.readouterr()
    run_stage({"stage": "student_group", "members": [kd, dict(at, hparams={"beta": 500.0})]})
    log = capsys.readouterr().out
    assert "[KD]] not reusing the result kept" in log and "seal mismatch" in log
    assert json.loads(Path(kd["out_metrics"]).read_text())["final"]["test_acc"] != 99.0


@pytest.mark.slow
def test_two_runs_on_one_results_folder_the_second_is_refused(tmp_path):
    """Snakemake's lock covers one working directory; the results folder's own lock refuses a second
    run started from another one, naming the first, and the first finishes with nothing lost."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()

    def slow(config):
        _tiny(config)
        config["results"] = str(tmp_path / "shared_results")
        config["recipes"]["tiny"].update(epochs=30)
        config["datasets"]["digits"]["max_train"] = 600

    config = _config(first, slow)
    teacher = str(tmp_path / "shared_results/digits/teachers/resnet14/MLL/model.pt")
    with open(tmp_path / "first.log", "w") as log_file:
        proc = subprocess.Popen([*SNAKEMAKE, "-d", str(first), teacher, "--cores", "1", "--configfile", str(config)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=_env())
    lock = tmp_path / "shared_results/.mcmi-run.lock"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not lock.exists():
        time.sleep(0.2)
    assert lock.exists(), (tmp_path / "first.log").read_text()[-3000:]
    result = snakemake(teacher, "--cores", "1", "--configfile", str(config), workdir=second, timeout=300)
    assert result.returncode != 0
    assert "in use by another pipeline run" in result.stdout + result.stderr
    assert f"pid {proc.pid}" in result.stdout + result.stderr
    assert proc.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert Path(teacher).is_file() and not lock.exists()


def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path, capsys):
    from mcmi.pipeline.lock import ResultsLock, ResultsInUseError

    child = subprocess.Popen(["true"])
    child.wait()
    lock = ResultsLock(tmp_path)
    lock.path.write_text(json.dumps({"host": os.uname().nodename, "pid": child.pid, "started": "earlier"}))
    lock.acquire()
    assert "no longer running" in capsys.readouterr().err
    with pytest.raises(ResultsInUseError, match="already holds"):
        ResultsLock(tmp_path).acquire()
    lock.release()
    assert not lock.path.exists()
    other = ResultsLock(tmp_path)
    other.path.write_text(json.dumps({"host": "another-host", "pid": 1, "started": "now"}))
    with pytest.raises(ResultsInUseError, match="another host"):
        other.acquire()


def test_moving_a_results_folder_keeps_every_identity(tmp_path):
    """The spec fingerprint leaves out where files live: the same job planned under another results
    folder has the same fingerprint, and a changed hyperparameter a different one."""
    from mcmi.pipeline import WorkflowConfig

    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    here = WorkflowConfig({**config, "results": str(tmp_path / "a")}, REPO)
    there = WorkflowConfig({**config, "results": str(tmp_path / "b")}, REPO)
    args = ("digits", "resnet14", "resnet8", "KD", "MLL", "full", 0)
    assert here.student_spec(*args).to_json() != there.student_spec(*args).to_json()
    assert here.student_spec(*args).fingerprint() == there.student_spec(*args).fingerprint()
    hotter = WorkflowConfig({**config, "methods": {**config["methods"], "KD": {"T": 2}}}, REPO)
    assert hotter.student_spec(*args).fingerprint() != here.student_spec(*args).fingerprint()


@pytest.mark.slow
def test_a_code_change_rebuilds_the_tables_and_they_name_the_results_of_other_code(tmp_path):
    """Snakemake reruns no training job when only the package's code changed; the code stamp
    (<results>/code.json) makes it rebuild the tables, which then say that their results came from
    other code. On a copy of the workflow, whose package is edited between two runs."""
    repo = tmp_path / "repo"
    for part in ("workflow", "config", "envs"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "Snakefile", repo / "Snakefile")
    config = str(_config(tmp_path))
    run = lambda *args: subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"),
                                        "-d", str(tmp_path), "table5", *args, "--configfile", config],
                                       capture_output=True, text=True, timeout=600, env=_env())
    first = run("--cores", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    table = tmp_path / "results/tables/table5.md"
    assert "**Code**" not in table.read_text()
    stamp = (tmp_path / "results/code.json").read_text()

    with open(repo / "workflow/mcmi/report/origin.py", "a") as source:      # the package changes
        source.write("\n# an edit\n")
    dry = run("-n")
    assert dry.returncode == 0 and job_counts(dry.stdout) == {"table": 1, "table5": 1}, dry.stdout[-3000:]
    assert (tmp_path / "results/code.json").read_text() != stamp            # rewritten at parse
    second = run("--cores", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    text = table.read_text()
    n = text.split("## Where these numbers come from")[1].split()[1]         # "- N metrics files"
    assert f"- **Code**: {n} of {n} result files were produced by other code than this checkout's" in text
    assert run("-n").stdout.count("Nothing to be done") == 1                 # and then it is up to date
