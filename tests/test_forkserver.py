"""The fork server launcher (``launcher: fork_server``, :mod:`mcmi.forkserver`): a job run through it
behaves as the plain ``python -m mcmi`` process -- output, exit status, results bit for bit, threads --
signals reach the job, a killed client takes its job with it, and without a usable server the job runs
in its own process."""

from __future__ import annotations

import json
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
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server_tmp():
    """A private temporary folder for one test's server (a short path: Unix socket names are short);
    the server is stopped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mfs", dir="/tmp"))
    yield folder
    for log in folder.glob("mcmi-fork-server-*/*.log"):
        for pid in re.findall(r"pid (\d+) listening", log.read_text()):
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    shutil.rmtree(folder, ignore_errors=True)


def _env(tmp: Path, launcher: bool, threads: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MCMI_LAUNCHER", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(PYTHONPATH=str(REPO / "workflow"), TMPDIR=str(tmp), MCMI_FORK_SERVER_IDLE="20",
               OMP_NUM_THREADS=str(threads))
    if launcher:
        env["MCMI_LAUNCHER"] = "fork_server"
    return env


def mcmi(tmp: Path, *args: str, launcher: bool, threads: int = 1, cwd: Path | None = None,
         timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcmi", *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(tmp, launcher, threads), cwd=cwd or tmp)


def server_log(tmp: Path) -> str:
    logs = list(tmp.glob("mcmi-fork-server-*/*.log"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


@pytest.mark.slow
def test_a_command_through_the_server_behaves_as_the_plain_process(server_tmp):
    bad_spec = ["stage", "--spec", '{"stage": "nonexistent"}']
    for args in (["--help"], bad_spec):
        plain = mcmi(server_tmp, *args, launcher=False)
        served = mcmi(server_tmp, *args, launcher=True)
        assert (served.returncode, served.stdout, served.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert plain.returncode == 2 and mcmi(server_tmp, *bad_spec, launcher=False).returncode == 2
    log = server_log(server_tmp)
    assert len(re.findall(r"pid \d+ listening", log)) == 1                  # one server for all of them
    assert len(re.findall(r"^job \d+ ", log, re.M)) == 2, log                # each ran in a child of it
    assert "{'exit': 2}" in log


def _teacher_spec(out: Path, epochs: int = 2) -> str:
    return json.dumps({"dataset": {"image_size": 8, "kind": "digits", "max_test": 60, "max_train": 120},
                       "device": "cpu", "model": "resnet8", "out_metrics": str(out / "metrics.json"),
                       "out_model": str(out / "model.pt"), "resume": str(out / "_resume/last.pt"), "seed": 0,
                       "recipe": {"batch_size": 32, "epochs": epochs, "lr": 0.05, "lr_decay": 0.1,
                                  "milestones": [1], "schedule": "step"},
                       "run": {"dataset": "digits", "teacher": "resnet8", "variant": "MLL"}, "stage": "teacher"})


def _result(out: Path) -> tuple[dict, list]:
    weights = torch.load(out / "model.pt", weights_only=True)["model"]
    history = json.loads((out / "metrics.json").read_text())["history"]
    return weights, [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_a_training_job_through_the_server_equals_the_plain_process_bit_for_bit(server_tmp, threads):
    runs = {}
    for launcher in (False, True):
        out = server_tmp / f"{'served' if launcher else 'plain'}"
        done = mcmi(server_tmp, "stage", "--spec", _teacher_spec(out), launcher=launcher, threads=threads)
        assert done.returncode == 0, done.stderr
        runs[launcher] = _result(out)
    (plain_weights, plain_history), (weights, history) = runs[False], runs[True]
    assert history == plain_history
    assert plain_weights.keys() == weights.keys()
    assert all(torch.equal(plain_weights[k], weights[k]) for k in weights)
    assert "stage teacher: {'exit': 0}" in server_log(server_tmp)      # the log names each job's stage


def test_the_child_takes_its_threads_from_the_job_environment():
    """A fresh torch reads OMP_NUM_THREADS when it loads; the server loaded torch without it, so each child
    applies its own (MKL_NUM_THREADS when OMP's is unset; neither: the server's, torch's default)."""
    code = ("import torch; from mcmi.forkserver import _apply_threads; before = torch.get_num_threads(); "
            "_apply_threads({}); unset = torch.get_num_threads() == before; "
            "_apply_threads({'OMP_NUM_THREADS': '3'}); a = torch.get_num_threads(); "
            "_apply_threads({'MKL_NUM_THREADS': '2', 'OMP_NUM_THREADS': ''}); b = torch.get_num_threads(); "
            "print(unset, a, b)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "PYTHONPATH": str(REPO / "workflow")}).stdout.split()
    assert out == ["True", "3", "2"]


def _start_long_job(tmp: Path) -> tuple[subprocess.Popen, Path]:
    out = tmp / "long"
    log = open(tmp / "long.log", "w")
    client = subprocess.Popen([sys.executable, "-m", "mcmi", "stage", "--spec", _teacher_spec(out, epochs=500)],
                              stdout=log, stderr=subprocess.STDOUT, env=_env(tmp, True), cwd=tmp)
    deadline = time.time() + 120
    while time.time() < deadline and "epoch 1/500" not in (tmp / "long.log").read_text():
        assert client.poll() is None, (tmp / "long.log").read_text()
        time.sleep(0.1)
    return client, out


def _child_status(tmp: Path, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.search(r"^job \d+ stage \S+.*?: (\{.*?\})", server_log(tmp), re.M)
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise AssertionError("the job did not end:\n" + server_log(tmp))


@pytest.mark.slow
def test_a_signal_to_the_client_reaches_the_job(server_tmp):
    client, _ = _start_long_job(server_tmp)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=60) == -signal.SIGTERM          # the client dies of the job's signal, as the job did
    assert _child_status(server_tmp) == "{'signal': 15}"


@pytest.mark.slow
def test_a_killed_client_takes_its_job_with_it(server_tmp):
    client, out = _start_long_job(server_tmp)
    client.kill()
    client.wait(timeout=60)
    assert _child_status(server_tmp) == "{'signal': 9}"       # the server killed the orphaned job
    assert not (out / "metrics.json").exists()


def test_without_a_usable_server_the_job_runs_in_its_own_process(server_tmp):
    shared = server_tmp / f"mcmi-fork-server-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)                                        # a folder others may write: not used
    served = mcmi(server_tmp, "--help", launcher=True)
    plain = mcmi(server_tmp, "--help", launcher=False)
    assert served.returncode == 0 and served.stdout == plain.stdout
    assert served.stderr.splitlines() == [f"mcmi: fork server unavailable ({shared} is not a private folder of "
                                          f"this user); running the job in its own process"]
    assert not list(shared.iterdir())
