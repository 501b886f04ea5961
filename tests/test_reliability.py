"""Every number comes from the config beside it: resume checkpoints belong to one job spec, no NaN/inf
reaches a metrics file or a table, wrong data and config mistakes are refused naming the file or key,
and atomic writes leave nothing half-done behind. (The rerun tests with real Snakemake are in
test_workflow.py.)"""

from __future__ import annotations

import copy
import json
import os
import pickle
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import write_cifar100, write_image_folder
from mcmi.data.sources import load_cifar, load_dataset
from mcmi.models import create_model, load_repdistiller_checkpoint
from mcmi.objectives import CrossEntropy
from mcmi.provenance import (NonFiniteValueError, canonical_json, read_json_strict, spec_fingerprint,
                             write_json_atomic)
from mcmi.stages import run_stage
from mcmi.train import NonFiniteLossError, Recipe, evaluate, fit, measure_cmi
from test_train import RECIPE, tiny_data

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


# ------------------------------------------------------------------ resume checkpoints and job specs
def _fit(resume: Path | None, key: str | None, stop: int | None = None, epochs: int = 3):
    torch.manual_seed(0)
    model = create_model("resnet8", 4)
    history = fit(model, CrossEntropy(), tiny_data(), tiny_data(seed=1), Recipe(**{**RECIPE, "epochs": epochs}),
                  seed=0, device=CPU, resume_path=resume, resume_key=key, stop_after_epoch=stop, label="t")
    return model, history


@pytest.mark.slow
def test_resume_checkpoint_of_another_job_spec_is_discarded(tmp_path, capsys):
    resume = tmp_path / "last.pt"
    _fit(resume, key="spec-A", stop=2)                       # killed after epoch 2 under spec A
    assert torch.load(resume, weights_only=True)["resume_key"] == "spec-A"
    capsys.readouterr()
    model, history = _fit(resume, key="spec-B")              # the recipe was edited: spec B
    log = capsys.readouterr().out
    assert "written by another job" in log and "resuming" not in log
    assert [h["epoch"] for h in history] == [1, 2, 3]
    fresh, fresh_history = _fit(None, key=None)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
    assert history[-1]["train_loss"] == fresh_history[-1]["train_loss"]


@pytest.mark.slow
def test_resume_checkpoint_of_the_same_spec_is_resumed(tmp_path, capsys):
    resume = tmp_path / "last.pt"
    _fit(resume, key="spec-A", stop=2)
    capsys.readouterr()
    _, history = _fit(resume, key="spec-A")
    assert "resuming from" in capsys.readouterr().out and [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_corrupt_resume_checkpoint_is_discarded_with_a_log_line(tmp_path, capsys, content):
    resume = tmp_path / "last.pt"
    if content is None:
        torch.save({"something": torch.zeros(1)}, resume)    # readable, but not a trainer checkpoint
    else:
        resume.write_bytes(content)
    _, history = _fit(resume, key="k", epochs=1)
    assert "discarding unreadable resume checkpoint" in capsys.readouterr().out
    assert [h["epoch"] for h in history] == [1]


def test_spec_fingerprint_ignores_key_order_only():
    spec = {"recipe": {"epochs": 2, "lr": 0.05, "milestones": [1]}, "seed": 0, "hparams": {"T": 4.0}}
    reordered = {"hparams": {"T": 4.0}, "seed": 0, "recipe": {"milestones": [1], "lr": 0.05, "epochs": 2}}
    assert canonical_json(spec) == canonical_json(reordered)
    assert spec_fingerprint(spec) == spec_fingerprint(reordered)
    edited = copy.deepcopy(spec)
    edited["hparams"]["T"] = 2.0
    assert spec_fingerprint(edited) != spec_fingerprint(spec)


# ------------------------------------------------------------------ non-finite numbers
class NaNWhenEvaluated(nn.Module):
    """Trains like a linear model; its eval-mode output is NaN (an evaluation that goes wrong)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        return logits if self.training else logits * float("nan")


def test_nan_in_evaluation_fails_the_job():
    with pytest.raises(NonFiniteLossError, match="evaluation"):
        fit(NaNWhenEvaluated(), CrossEntropy(), tiny_data(), tiny_data(seed=1), Recipe(**RECIPE), seed=0,
            device=CPU)


def test_nan_in_cmi_or_ll_fails():
    with pytest.raises(NonFiniteLossError, match="CMI/LL"):
        measure_cmi(NaNWhenEvaluated(), tiny_data(), 16, CPU)
    with pytest.raises(NonFiniteLossError):
        evaluate(NaNWhenEvaluated(), tiny_data(), 16, CPU)


def test_imported_teacher_with_nonfinite_weights_is_refused(tmp_path):
    model = create_model("resnet8", 10)
    state = model.state_dict()
    state["fc.weight"][0, 0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"diverged\.pth: non-finite .*fc\.weight"):
        load_repdistiller_checkpoint(create_model("resnet8", 10), path)


def test_metrics_json_is_strict_and_the_table_builder_refuses_nonfinite(tmp_path):
    path = tmp_path / "m.json"
    with pytest.raises(NonFiniteValueError, match=r"m\.json.*final\.test_acc"):
        write_json_atomic(path, {"run": {"stage": "teacher"}, "final": {"test_acc": float("nan")}})
    assert not path.exists()
    path.write_text('{"run": {"stage": "measure"}, "final": {"test_acc": NaN}}')   # e.g. written by hand
    from mcmi.report import load_metrics

    with pytest.raises(NonFiniteValueError, match=r"m\.json"):
        load_metrics([path])
    with pytest.raises(NonFiniteValueError):
        read_json_strict(path)


# ------------------------------------------------------------------ wrong data
def _prepare(tmp_path: Path, dataset: dict) -> dict:
    return run_stage({"stage": "prepare_data", "dataset": dataset, "seed": 0,
                      "out_metrics": str(tmp_path / "ready.json")})


def test_streamed_image_folder_with_other_val_classes_fails_at_the_data_check(tmp_path):
    root = write_image_folder(tmp_path / "folder", classes=3)
    for image in (root / "val" / "class1").iterdir():
        image.unlink()
    (root / "val" / "class1").rmdir()                       # val/ lacks class1: labels would shift by one
    with pytest.raises(ValueError, match=r"val/ classes differ .*missing in val/: \['class1'\]"):
        _prepare(tmp_path, {"kind": "imagefolder", "root": str(root), "image_size": 16, "in_memory": False})
    assert not (tmp_path / "ready.json").exists()


@pytest.mark.parametrize("in_memory", [False, True])
def test_corrupt_image_is_named_at_the_data_check(tmp_path, in_memory):
    root = write_image_folder(tmp_path / "folder", classes=2)
    broken = root / "train" / "class1" / "1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ValueError, match=r"class1/1\.png"):
        _prepare(tmp_path, {"kind": "imagefolder", "root": str(root), "image_size": 16, "in_memory": in_memory})


def test_truncated_jpeg_in_a_streamed_folder_is_named_at_the_data_check(tmp_path):
    """PIL's verify() passes a truncated JPEG, which would fail inside training: the check decodes."""
    from PIL import Image

    root = write_image_folder(tmp_path / "folder", classes=2)
    pixels = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(pixels).save(whole, quality=90)
    cut = root / "train" / "class1" / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"class1/cut\.jpg: corrupt or unreadable image: .*truncated"):
        _prepare(tmp_path, {"kind": "imagefolder", "root": str(root), "image_size": 16, "in_memory": False})
    assert not (tmp_path / "ready.json").exists()


def test_offline_cifar_download_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_cifar("cifar100", tmp_path / "data", download=True)
    message = str(error.value)
    assert "\n" not in message and "download into" in message and "Name or service not known" in message
    assert f"{tmp_path / 'data' / 'cifar-100-python'}/" in message and "'download: false'" in message


def _rewrite_cifar(root: Path, edit) -> Path:
    path = root / "cifar-100-python" / "train"
    with open(path, "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    content = edit(entry)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        with open(path, "wb") as handle:
            pickle.dump(content, handle, protocol=2)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda e: pickle.dumps(e, protocol=2)[:500], "truncated or corrupt"),
    (lambda e: {**e, "data": e["data"][:, :1000]}, r"shape \(N, 3072\)"),
    (lambda e: {**e, "data": e["data"].astype(np.float32)}, "uint8"),
    (lambda e: {**e, "fine_labels": [100] + e["fine_labels"][1:]}, r"labels must lie in \[0, 100\)"),
    (lambda e: {**e, "fine_labels": e["fine_labels"][:-1]}, "one per image"),
])
def test_bad_cifar_files_fail_at_the_data_job_naming_the_file(tmp_path, edit, message):
    root = write_cifar100(tmp_path / "data")
    _rewrite_cifar(root, edit)
    with pytest.raises(ValueError, match=rf"cifar-100-python/train: .*{message}"):
        _prepare(tmp_path, {"kind": "cifar100", "root": str(root)})
    assert load_cifar("cifar100", write_cifar100(tmp_path / "good"))[0].images.dtype == torch.uint8


def test_zero_shot_removing_every_class_fails_at_the_job():
    from mcmi.data.subsets import without_classes_indices

    with pytest.raises(ValueError, match="every training sample"):
        without_classes_indices(torch.tensor([0, 1, 2, 1]), [0, 1, 2])


# ------------------------------------------------------------------ config mistakes, before any job
def _validated(edit) -> None:
    """The workflow's own two checks: the JSON schema (with its defaults) and WorkflowConfig."""
    from snakemake.utils import validate

    from mcmi.pipeline import WorkflowConfig

    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    edit(config)
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    WorkflowConfig(config, repo=REPO)


def _set(path: str, value):
    def edit(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


@pytest.mark.parametrize("edit, key", [
    (_set("experiments.table1.seedz", [0, 1]), "seedz"),                       # misspelt 'seeds'
    (_set("experiments.figure4.lamda", 0.1), "lamda"),
    (_set("methods.KD.T", "four"), "methods.KD: T: expected a number"),
    (_set("methods.KD.T", 0), "methods.KD: T: must be > 0"),
    (_set("methods.CRD.nce_k", 64.5), "methods.CRD: nce_k: expected an integer"),
    (_set("method_pair_overrides", {"KD": {"resnet14->resnet99": {"T": 2}}}),
     "method_pair_overrides.KD.resnet14->resnet99: unknown model 'resnet99'"),
    (_set("method_pair_overrides", {"KD": {"resnet14->resnet8": {"T": -1}}}),
     "method_pair_overrides.KD.resnet14->resnet8: T: must be >= 0"),
    (_set("lr_overrides", {"MobileNetV3": 0.01}), "lr_overrides.MobileNetV3: unknown model"),
    (_set("mcmi.lambda_selection.student_of", {"resnet14": "resnet7"}), "student_of.resnet14: unknown model"),
    (_set("experiments.table4.es_epochs", {"resnet18": 2}), "experiments.table4.es_epochs.resnet18: 2 is not earlier"),
    (_set("experiments.figure4.removed_classes", [3, 10]), "removed_classes: [10] out of range"),
    (_set("experiments.figure4.removed_classes", list(range(10))), "removes every class"),
    (_set("results", ""), "results: ''"),
    (_set("results", "/"), "results: '/'"),
])
def test_config_mistakes_are_refused_naming_the_key(edit, key):
    with pytest.raises(Exception) as error:
        _validated(edit)
    assert key in str(error.value)


def _planned(edit) -> None:
    """The plan of the edited test config, as the Snakefile makes it while it is read: validation,
    the checks beyond the schema, then the student groups (whose planning needs every target)."""
    from mcmi.pipeline import WorkflowConfig

    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    edit(config)
    WorkflowConfig(config, repo=REPO).student_groups()


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("edit, message", [
    # NaN/inf anywhere, before the schema (they used to fail in planning as "not JSON compliant")
    (_set("methods.KD.T", NAN), "config methods.KD.T: not a finite number"),
    (_set("recipes.tiny.lr", NAN), "config recipes.tiny.lr: not a finite number"),
    (_set("experiments.table3.alpha_percent", [NAN]), "config experiments.table3.alpha_percent[0]: not a finite"),
    (_set("mcmi.lambda_grid.digits", [0.1, INF]), "config mcmi.lambda_grid.digits[1]: not a finite number"),
    # out of range is reported as out of range (not as "'alpha_percent', ... were unexpected")
    (_set("experiments.table3.alpha_percent", [150]),
     "config experiments.table3.alpha_percent[0]: 150 is greater than the maximum of 100"),
    (_set("experiments.figure1.temperatures", [0, 4]),
     "config experiments.figure1.temperatures[0]: 0 is less than or equal to the minimum of 0"),
    (_set("experiments.table7.lambdas", [-0.1]), "config experiments.table7.lambdas[0]: -0.1 is less than the minimum"),
    (_set("experiments.table4.es_epochs", {"resnet18": 0}),
     "config experiments.table4.es_epochs.resnet18: 0 is less than the minimum of 1"),
    (_set("experiments.figure4.lam", -1), "config experiments.figure4.lam: -1 is less than the minimum of 0"),
    # an integer is an int: a float batch size used to fail inside the first training job
    (_set("recipes.tiny.batch_size", 32.0), "config recipes.tiny.batch_size: 32.0 is not of type 'integer'"),
    # numbers that name paths must print as themselves (they used to merge, or match no rule)
    (_set("mcmi.lambda_grid.digits", [0.1, 0.1000001]),
     "mcmi.lambda_grid.digits[1]: 0.1000001 would be written '0.1' in output paths, the same as 0.1"),
    (_set("mcmi.lambda_grid.digits", [-0.0, 0.1]), "mcmi.lambda_grid.digits[0]: -0.0 would be written '-0'"),
    (_set("experiments.table7.lambdas", [0, 1e-5]), "experiments.table7.lambdas[1]: 1e-05 would be written '1e-05'"),
    (_set("experiments.table3.alpha_percent", [12.3456789]), "experiments.table3.alpha_percent[0]: 12.3456789"),
    # noticed while planning, not by the table job after all the training / by an input function
    (_set("paper_dir", "/nonexistent/paper"), "paper_dir: '/nonexistent/paper' is not a folder"),
    (_set("mcmi.lambda_selection.mode", "paper"),
     "mcmi.paper_lambda_star.demo_imagenet.resnet18: needed because mcmi.lambda_selection.mode is 'paper'"),
])
def test_config_mistakes_are_refused_while_planning_naming_the_key(edit, message):
    from mcmi.pipeline import ConfigError

    with pytest.raises(ConfigError) as error:
        _planned(edit)
    assert message in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_device_without_a_gpu_is_refused_for_jobs_run_here():
    from mcmi.pipeline import ConfigError, WorkflowConfig

    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    config["device"] = "cuda"
    plan = WorkflowConfig(config, repo=REPO)        # planning for a cluster's GPU nodes is fine
    with pytest.raises(ConfigError, match=r"device: 'cuda', but this machine has no usable CUDA GPU"):
        plan.check_device_here()


def test_results_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "results"
    target.write_text("not a folder")
    with pytest.raises(Exception, match="is a file"):
        _validated(_set("results", str(target)))


def test_the_shipped_configs_pass_validation():
    for name in ("config.yaml", "demo.yaml", "test.yaml"):
        from snakemake.utils import validate

        config = yaml.safe_load((REPO / "config" / name).read_text())
        validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))


# ------------------------------------------------------------------ atomic writes, figures
def _dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _temporary_of(target: Path, pid: int, host: str | None = None) -> Path:
    """A temporary named as the atomic writer names it, for a writer with ``pid`` on ``host``."""
    import platform
    import re

    host = host or re.sub(r"[^A-Za-z0-9-]", "-", platform.node())
    return target.with_name(f".{target.name}.~{host}~{pid}~k1ll3d.tmp")


def test_atomic_writes_remove_stale_temporaries_and_use_normal_permissions(tmp_path):
    target = tmp_path / "metrics.json"
    stale = _temporary_of(target, _dead_pid())                # left by a write that was SIGKILLed
    stale.write_text("{half")
    legacy = tmp_path / ".metrics.json.k1ll3d.tmp"           # an older version's name, two hours old
    legacy.write_text("{half")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    other = tmp_path / ".other.json.abc.tmp"
    other.write_text("{")
    old_umask = os.umask(0o022)
    try:
        write_json_atomic(target, {"a": 1})
    finally:
        os.umask(old_umask)
    assert not stale.exists() and not legacy.exists() and other.exists()   # only this file's dead leftovers go
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert json.loads(target.read_text()) == {"a": 1}


def test_another_writers_temporary_in_flight_is_never_removed(tmp_path):
    target = tmp_path / "metrics.json"
    live = _temporary_of(target, os.getppid())                # a running process of this host
    elsewhere = _temporary_of(target, _dead_pid(), host="another-host")   # cannot be checked from here
    recent_legacy = tmp_path / ".metrics.json.abc123.tmp"     # no owner, written a moment ago
    for path in (live, elsewhere, recent_legacy):
        path.write_text("{in flight")
    write_json_atomic(target, {"a": 1})
    assert live.exists() and elsewhere.exists() and recent_legacy.exists()


def test_concurrent_atomic_writes_to_one_path_all_succeed(tmp_path):
    """Two processes writing one path at once (e.g. two runs on one results folder): no write fails,
    none removes the other's temporary, and the file always holds one whole write."""
    import subprocess
    import sys

    target = tmp_path / "shared.json"
    script = ("import sys\nfrom mcmi.provenance import write_json_atomic\n"
              "for i in range(150): write_json_atomic(sys.argv[1], {'writer': sys.argv[2], 'i': i, 'pad': 'x' * 20000})\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    writers = [subprocess.Popen([sys.executable, "-c", script, str(target), name], env=env,
                                stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    errors = [w.communicate(timeout=300)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    assert json.loads(target.read_text())["i"] == 149
    assert not list(tmp_path.glob(".shared.json.*"))


def test_stage_start_removes_leftover_temporaries(tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    _temporary_of(out / "ready.json", _dead_pid()).write_bytes(b"half a metrics file")
    run_stage({"stage": "prepare_data", "dataset": {"kind": "digits", "image_size": 8, "max_train": 20,
                                                    "max_test": 10},
               "seed": 0, "out_metrics": str(out / "ready.json")})
    assert not list(out.glob(".ready.json.*.tmp"))
    assert "left by an interrupted write" in capsys.readouterr().out


def test_mcmi_figure_lists_every_figure_it_knows(tmp_path, capsys):
    from mcmi.cli import main

    from mcmi.report import FIGURES

    assert main(["figure", "99", "--out", str(tmp_path / "f")]) == 2
    assert f"known figures: {FIGURES.ids}" in capsys.readouterr().err
    assert FIGURES.ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]


@pytest.mark.parametrize("write", ["json", "torch"])
def test_disk_full_is_named_and_leaves_no_temporary(tmp_path, monkeypatch, write):
    """A write onto a full disk (simulated with /dev/full, which fails every write with ENOSPC) is a
    DiskFullError naming the file and saying the disk is full, and leaves no temporary behind."""
    import tempfile

    import mcmi.provenance as provenance

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    real_mkstemp = tempfile.mkstemp

    def full_disk(**kwargs):
        fd, name = real_mkstemp(**kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(provenance.tempfile, "mkstemp", full_disk)
    target = tmp_path / ("metrics.json" if write == "json" else "model.pt")
    with pytest.raises(provenance.DiskFullError, match="the disk is full") as error:
        if write == "json":
            provenance.write_json_atomic(target, {"pad": "x" * 100_000})
        else:
            provenance.save_torch_atomic(target, {"w": torch.zeros(100_000)})
    assert str(target) in str(error.value)
    assert not target.exists() and not list(tmp_path.iterdir())
