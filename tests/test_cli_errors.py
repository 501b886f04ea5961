"""The first hour on the command line: every usage line of ``mcmi --help`` works as printed,
``--print-spec`` is JSON only, hand runs use the config's threads and record the teacher variant
they really used, and each mistake a new user makes is one line on stderr (exit status 2 for input
the command cannot use, 1 for a run that fails on the way) while a bug keeps its traceback."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from mcmi import cli
from mcmi.cli import main
from mcmi.pipeline.handrun import THREAD_VARIABLES
from mcmi.pipeline.specs import StudentSpec, parse_spec

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(REPO / "config" / "test.yaml")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mcmi: error: ") and "\n" not in err, err
    return err


def _teacher(folder: Path, run: dict | None, **metrics) -> str:
    """A teacher checkpoint (an untrained resnet14 of the digits' 10 classes) and, unless ``run`` is
    None, the metrics.json beside it."""
    from mcmi.models import create_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": create_model("resnet14", 10).state_dict()}, folder / "model.pt")
    if run is not None:
        (folder / "metrics.json").write_text(json.dumps({"run": run, "final": {}, **metrics}))
    return str(folder / "model.pt")


def _student(tmp_path: Path, *flags: str, teacher: str | None = None) -> list[str]:
    teacher = teacher or _teacher(tmp_path / "teacher", {"stage": "teacher", "teacher": "resnet14", "variant": "MLL"})
    return ["student", "--config", TEST_CONFIG, "--dataset", "digits", "--teacher", "resnet14", "--student",
            "resnet8", "--method", "KD", "--teacher-checkpoint", teacher, "--out", str(tmp_path / "s"), *flags]


# ------------------------------------------------------------------ --help and --print-spec
PLACEHOLDERS = {"M": "resnet56", "T": "resnet56", "S": "resnet20", "P": "t.pt", "L": "0.15", "DIR": "out",
                "SPEC": "{}", "N": "1", "PREFIX": "out/t", "F": "f.json", "D": "cifar100",
                "M...": "a.json b.json", "P...": "a.pt b.pt", "...": ""}


def _usage_lines() -> list[str]:
    text = cli.__doc__.split("\n\n")[1]
    return [line.strip().split("   ")[0] for line in text.splitlines() if line.strip().startswith("mcmi ")]


def test_every_usage_line_of_help_works_as_printed(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    printed = capsys.readouterr().out
    lines = _usage_lines()
    assert len(lines) == 9 and all(line in printed for line in lines)
    for line in lines:
        argv = shlex.split(" ".join(PLACEHOLDERS.get(token, token) for token in line.split()[1:]))
        args = cli.parse_args(argv)                     # argparse exits (status 2) on a line it cannot take
        if "M..." in line.split():
            assert args.metrics == ["a.json", "b.json"], line


def test_table_takes_its_metrics_before_or_after_the_options():
    for argv in (["table", "1", "--out", "o", "a.json", "b.json"], ["table", "1", "a.json", "--out", "o", "b.json"],
                 ["table", "--out", "o", "1", "a.json", "b.json"]):
        args = cli.parse_args(argv)
        assert args.number == "1" and args.out == "o" and args.metrics == ["a.json", "b.json"], argv
    with pytest.raises(SystemExit):
        cli.parse_args(["figure", "1", "--out", "o", "a.json", "--bogus"])


def test_print_spec_prints_json_that_mcmi_stage_takes(tmp_path, capsys):
    assert main(_student(tmp_path, "--print-spec")) == 0
    out = capsys.readouterr().out
    spec = parse_spec(json.loads(out))
    assert isinstance(spec, StudentSpec) and spec.out_metrics == str(tmp_path / "s" / "metrics.json")
    assert not (tmp_path / "s").exists()                        # printing the spec writes nothing


def test_paper_dir_defaults_to_the_repositorys_wherever_mcmi_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(cli.parse_args(["table", "1", "--out", "t"]).paper_dir) == REPO / "config" / "paper"
    assert main(["paper-check", "--out", str(tmp_path / "check")]) == 0
    assert (tmp_path / "check.md").is_file()


# ------------------------------------------------------------------ hand runs: variant and threads
@pytest.mark.parametrize("run, extra, expected", [
    ({"stage": "teacher", "variant": "MLL"}, {}, {"variant": "MLL"}),
    ({"stage": "mcmi", "variant": "MCMI", "lam": 0.15}, {}, {"variant": "MCMI", "lam": 0.15}),
    ({"stage": "mcmi", "variant": "MCMI", "lam": 0.15}, {"adopted": {"lambda_star": 0.15}}, {"variant": "MCMI"}),
    ({"stage": "teacher", "variant": "ES", "es_epochs": 60}, {}, {"variant": "ES", "es_epochs": 60}),
], ids=["MLL", "MCMI-grid", "MCMI-lambda-star", "ES"])
def test_hand_run_student_records_the_variant_its_teacher_records(tmp_path, capsys, run, extra, expected):
    teacher = _teacher(tmp_path / "teacher", {"teacher": "resnet14", **run}, **extra)
    assert main(_student(tmp_path, "--print-spec", teacher=teacher)) == 0
    spec = parse_spec(json.loads(capsys.readouterr().out))
    assert {k: v for k, v in spec.run.items() if k in ("variant", "lam", "es_epochs")} == expected


def test_hand_run_variant_flag_is_used_and_refused_when_it_contradicts_the_teacher(tmp_path, capsys):
    bare = _teacher(tmp_path / "bare", None)                    # e.g. a RepDistiller checkpoint
    assert main(_student(tmp_path, "--print-spec", teacher=bare)) == 2
    assert "no metrics.json beside it records the teacher's variant; pass --variant" in _one_error_line(capsys)
    assert main(_student(tmp_path, "--print-spec", "--variant", "MLL", teacher=bare)) == 0
    assert parse_spec(json.loads(capsys.readouterr().out)).run["variant"] == "MLL"

    mcmi = _teacher(tmp_path / "mcmi", {"stage": "mcmi", "teacher": "resnet14", "variant": "MCMI", "lam": 0.15})
    assert main(_student(tmp_path, "--print-spec", "--variant", "MCMI", teacher=mcmi)) == 0   # as the lambda* one
    assert parse_spec(json.loads(capsys.readouterr().out)).run == {
        "dataset": "digits", "teacher": "resnet14", "student": "resnet8", "method": "KD", "seed": 0, "variant": "MCMI"}
    for wrong in ("MLL", "MCMI_lam0.2", "ES60"):
        assert main(_student(tmp_path, "--print-spec", "--variant", wrong, teacher=mcmi)) == 2
        assert f"--variant {wrong} disagrees with" in _one_error_line(capsys)

    student = _teacher(tmp_path / "student", {"stage": "student", "teacher": "resnet14", "variant": "MLL"})
    assert main(_student(tmp_path, "--print-spec", teacher=student)) == 2
    assert "of a 'student' run, not of a teacher" in _one_error_line(capsys)


@pytest.fixture
def thread_settings(monkeypatch):
    """Restores torch's thread count and the thread variables a hand run sets."""
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("flags, threads", [((), 1), (("--threads", "2"), 2)])
def test_hand_run_uses_the_configs_threads_as_the_workflows_job(tmp_path, monkeypatch, thread_settings,
                                                                flags, threads):
    """Snakemake starts a job with OMP_NUM_THREADS=threads; a hand run with the default thread count
    would compute other float results. config/test.yaml has threads: 1."""
    seen = {}

    def fake_run_stage(spec):
        seen.update(torch=torch.get_num_threads(), env={name: os.environ.get(name) for name in THREAD_VARIABLES})

    torch.set_num_threads(3)
    monkeypatch.setattr("mcmi.stages.run_stage", fake_run_stage)
    assert main(_student(tmp_path, *flags)) == 0
    assert seen == {"torch": threads, "env": {name: str(threads) for name in THREAD_VARIABLES}}


# ------------------------------------------------------------------ one line per mistake
def test_teacher_checkpoint_that_is_a_text_file_is_one_line(tmp_path, capsys):
    text = tmp_path / "teacher" / "model.pt"
    text.parent.mkdir()
    text.write_text("hello\n")
    assert main(_student(tmp_path, "--variant", "MLL", "--epochs", "1", teacher=str(text))) == 2
    assert f"{text}: cannot be read as a weights-only torch checkpoint" in _one_error_line(capsys)


@pytest.mark.parametrize("flags, message", [
    (("--hp", "T=[4"), "--hp 'T=[4': the value is not valid YAML (expected ',' or ']'"),
    (("--hp", "T4"), "--hp 'T4': expected NAME=VALUE"),
    (("--dataset", "cifar7"), "--dataset 'cifar7': not under 'datasets' of"),
    (("--method", "Distill9000"), "--method 'Distill9000': unknown; known:"),
    (("--student", "resnet9000"), "--student: unknown model 'resnet9000'"),
    (("--few-shot", "150"), "--few-shot 150.0: the percentage of each class must be in (0, 100]"),
    (("--epochs", "0"), "--epochs 0: must be > 0"),
    (("--threads", "0"), "--threads 0: must be >= 1"),
    (("--variant", "MCMI_lamx"), "unknown teacher variant 'MCMI_lamx'"),
    (("--config", "/nonexistent/config.yaml"), "--config /nonexistent/config.yaml: no such file"),
])
def test_hand_run_flag_mistakes_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    assert main(_student(tmp_path, *flags)) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "s").exists()


def test_malformed_config_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "config.yaml"
    bad.write_text("seeds: [0, 1\n")
    assert main(_student(tmp_path, "--config", str(bad))) == 2
    assert f"--config {bad}: not valid YAML" in _one_error_line(capsys)


def test_out_under_a_file_or_where_nothing_can_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(_student(tmp_path, "--out", str(tmp_path / "afile" / "s"))) == 2
    assert f"--out {tmp_path / 'afile' / 's'}: {tmp_path / 'afile'} is a file, not a folder" in _one_error_line(capsys)
    if _cannot_mkdir("/sys/mcmi-test"):            # sysfs: no folders can be made there, not even by root
        assert main(_student(tmp_path, "--out", "/sys/mcmi-test/s")) == 2
        assert "--out /sys/mcmi-test/s: cannot write there" in _one_error_line(capsys)


def _cannot_mkdir(path: str) -> bool:
    try:
        os.mkdir(path)
    except OSError:
        return True
    os.rmdir(path)
    return False


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_hand_run_on_a_missing_gpu_is_one_line(tmp_path, capsys):
    assert main(_student(tmp_path, "--device", "cuda")) == 2
    assert "--device: 'cuda', but this machine has no usable CUDA GPU" in _one_error_line(capsys)


def test_offline_download_through_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    config = yaml.safe_load(Path(TEST_CONFIG).read_text())
    config["datasets"]["cifar100"] = {"kind": "cifar100", "root": str(tmp_path / "data"), "download": True}
    config["recipe_of"]["cifar100"] = config["recipe_of"]["digits"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["teacher", "--config", str(path), "--dataset", "cifar100", "--model", "resnet8",
                 "--out", str(tmp_path / "t")]) == 2
    line = _one_error_line(capsys)
    assert "cifar100: download into" in line and "'download: false'" in line


def test_bad_spec_is_one_line(tmp_path, capsys):
    assert main(["stage", "--spec", "{bad"]) == 2
    assert "--spec: not valid JSON" in _one_error_line(capsys)
    (tmp_path / "spec.yaml").write_text("stage: [student\n")
    assert main(["stage", "--spec", f"@{tmp_path / 'spec.yaml'}"]) == 2
    assert "not valid YAML" in _one_error_line(capsys)
    assert main(["stage", "--spec", f"@{tmp_path / 'absent.json'}"]) == 2
    assert "absent.json: no such file" in _one_error_line(capsys)


@pytest.mark.parametrize("error, status, message", [
    ("diverged", 1, "member KD of resnet8: non-finite"),
    ("disk full", 1, "[Errno 28] No space left on device"),
], ids=["non-finite-member", "disk-full"])
def test_a_run_that_fails_on_the_way_is_one_line_with_status_1(tmp_path, capsys, monkeypatch, error, status,
                                                                message):
    from mcmi.train import NonFiniteLossError

    def failing_stage(spec):
        if error == "diverged":    # what fit_members raises after the group's other members are saved
            raise NonFiniteLossError("member KD of resnet8: non-finite {'loss': nan} at epoch 1")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mcmi.stages.run_stage", failing_stage)
    assert main(["stage", "--spec", json.dumps({"stage": "student_group", "members": []})]) == status
    assert message in _one_error_line(capsys)


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def buggy_stage(spec):
        return {}["missing"]

    monkeypatch.setattr("mcmi.stages.run_stage", buggy_stage)
    spec = {"stage": "prepare_data", "dataset": {"kind": "digits"}, "out_metrics": str(tmp_path / "ready.json")}
    with pytest.raises(KeyError):
        main(["stage", "--spec", json.dumps(spec)])


@pytest.mark.slow
def test_hand_run_equals_the_workflows_job_bit_for_bit(tmp_path):
    """The workflow's teacher job as Snakemake starts it (OMP_NUM_THREADS = the config's threads) and
    the same teacher by hand from a shell without thread settings end with the same weights."""
    import subprocess
    import sys

    from mcmi.pipeline import WorkflowConfig

    config = yaml.safe_load(Path(TEST_CONFIG).read_text())
    config["results"] = str(tmp_path / "workflow")
    job = WorkflowConfig(config, repo=REPO).teacher_spec("digits", "resnet8", "MLL")
    bare = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    run = [sys.executable, "-m", "mcmi"]
    subprocess.run([*run, "stage", "--spec", job.to_json()], check=True, capture_output=True, timeout=300,
                   env={**bare, **{name: str(config["threads"]) for name in THREAD_VARIABLES}})
    subprocess.run([*run, "teacher", "--config", TEST_CONFIG, "--dataset", "digits", "--model", "resnet8",
                    "--out", str(tmp_path / "hand")], check=True, capture_output=True, timeout=300, env=bare)
    ours = torch.load(tmp_path / "hand" / "model.pt", weights_only=True)["model"]
    theirs = torch.load(job.out_model, weights_only=True)["model"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
