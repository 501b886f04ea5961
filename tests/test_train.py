"""The one trainer: resume equivalence, NaN failure, MCMI raising CMI; the stages' input checks."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mcmi.cmi import class_centroids
from mcmi.data.batch import Batch
from mcmi.data.tensors import TensorImageDataset
from mcmi.models import create_model
from mcmi.objectives import CrossEntropy, MCMIObjective, Objective, StepOutput
from mcmi.stages import run_stage
from mcmi.train import NonFiniteLossError, Recipe, fit, measure_cmi

REPO = Path(__file__).resolve().parents[1]


def tiny_data(n: int = 48, classes: int = 4, seed: int = 0) -> TensorImageDataset:
    """Separable 8x8 images: the class sets the mean brightness of one channel."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 60, (n, 3, 8, 8), generator=gen)
    images[torch.arange(n), labels % 3] += (40 * labels).view(-1, 1, 1)
    return TensorImageDataset(images.clamp(0, 255).to(torch.uint8), labels, classes, (0.3,) * 3, (0.2,) * 3)


RECIPE = dict(epochs=3, lr=0.05, batch_size=16, milestones=[2])


def _train(resume: Path | None, stop: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("resnet8", 4)
    history = fit(model, CrossEntropy(), tiny_data(), tiny_data(seed=1), Recipe(**RECIPE), seed=seed,
                  device=torch.device("cpu"), resume_path=resume, stop_after_epoch=stop, label="t")
    return model, history


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    full_model, full_history = _train(None)
    resume = tmp_path / "resume" / "last.pt"
    _train(resume, stop=2)                                # "killed" after epoch 2
    torch.manual_seed(123)                                # a different process would start elsewhere
    resumed_model, resumed_history = _train(resume)
    assert [h["epoch"] for h in resumed_history] == [1, 2, 3]
    for key, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert resumed_history[-1]["test_acc"] == full_history[-1]["test_acc"]
    assert resumed_history[-1]["train_loss"] == pytest.approx(full_history[-1]["train_loss"], rel=1e-6)


class NaNObjective(Objective):
    def step(self, model, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        return StepOutput({"ce": logits.sum() * float("nan")}, logits)


def test_nan_loss_stops_the_job_loudly():
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 0"):
        fit(create_model("resnet8", 4), NaNObjective(), tiny_data(), tiny_data(), Recipe(**RECIPE), seed=0,
            device=torch.device("cpu"))


def overlapping_gaussians(n: int, seed: int) -> TensorImageDataset:
    """Three classes of 12-d Gaussians whose means are one standard deviation apart (soft P*)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    x = (labels.float() - 1).view(-1, 1) + torch.randn(n, 12, generator=gen)
    images = (128 + 30 * x).clamp(0, 255).round().to(torch.uint8).view(n, 3, 2, 2)
    return TensorImageDataset(images, labels, 3, (0.5,) * 3, (0.12,) * 3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_mcmi_finetuning_raises_cmi_on_a_tiny_problem(seed):
    """From the same MLL model and recipe, fine-tuning with -lambda*KL(P_x||Q_y) ends with a higher CMI
    than before and than cross-entropy fine-tuning (the lambda = 0 control)."""
    cpu = torch.device("cpu")
    torch.manual_seed(seed)
    train, test = overlapping_gaussians(300, seed), overlapping_gaussians(150, 9)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    fit(model, CrossEntropy(), train, test, Recipe(epochs=5, lr=0.05, batch_size=32, milestones=[]), seed=0,
        device=cpu, augment=False)
    before = measure_cmi(model, train, 300, cpu)["cmi"]
    control = copy.deepcopy(model)
    model.eval()
    with torch.no_grad():
        centroids = class_centroids(torch.softmax(model(train.normalise(train.images)), 1), train.labels, 3)
    finetune = Recipe(epochs=8, lr=0.1, batch_size=32, schedule="cosine", milestones=[], weight_decay=0)
    fit(model, MCMIObjective(centroids, lam=0.5), train, test, finetune, seed=0, device=cpu, augment=False)
    fit(control, CrossEntropy(), train, test, finetune, seed=0, device=cpu, augment=False)
    after, after_control = measure_cmi(model, train, 300, cpu)["cmi"], measure_cmi(control, train, 300, cpu)["cmi"]
    assert after > before + 0.004 and after > after_control + 0.004, (before, after, after_control)


def test_recipe_schedules():
    step = Recipe(epochs=240, lr=0.05)
    assert step.lr_at(150) == pytest.approx(0.05) and step.lr_at(151) == pytest.approx(0.005)
    assert step.lr_at(211) == pytest.approx(0.05 * 1e-3)
    cosine = Recipe(epochs=20, lr=0.01, schedule="cosine")
    assert cosine.lr_at(1) == pytest.approx(0.01) and cosine.lr_at(11) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="schedule"):
        Recipe(epochs=1, lr=0.1, schedule="linear")


def _spec(tmp_path: Path, **overrides) -> dict:
    spec = {"stage": "teacher", "dataset": {"kind": "digits", "image_size": 8, "max_train": 64, "max_test": 32},
            "seed": 0, "device": "cpu", "model": "resnet8", "out_model": str(tmp_path / "t" / "model.pt"),
            "out_metrics": str(tmp_path / "t" / "metrics.json"), "resume": str(tmp_path / "_resume" / "last.pt"),
            "recipe": {"epochs": 2, "lr": 0.05, "batch_size": 32, "milestones": []},
            "run": {"dataset": "digits", "teacher": "resnet8", "variant": "MLL"}}
    spec.update(overrides)
    if spec["stage"] in ("measure", "import"):     # keys these stages do not take (a spec refuses unknown keys)
        spec.pop("recipe")
        if spec["stage"] == "measure":
            spec.pop("out_model")
    return spec


def test_teacher_stage_writes_checkpoint_and_metrics_with_provenance(tmp_path):
    run_stage(_spec(tmp_path))
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["run"]["stage"] == "teacher" and len(metrics["history"]) == 2
    assert {"config", "seed", "versions", "git_commit", "started", "finished"} <= set(metrics["provenance"])
    assert metrics["provenance"]["versions"]["torch"] == torch.__version__
    checkpoint = torch.load(tmp_path / "t" / "model.pt", weights_only=True)
    assert set(checkpoint) >= {"model", "epoch", "accuracy"} and checkpoint["epoch"] == 2


@pytest.mark.parametrize("overrides, message", [
    ({"model": "resnet9"}, "resnet9"),
    ({"stage": "mcmi", "lam": -0.1, "teacher_checkpoint": "x.pt"}, "lambda"),
    ({"dataset": {"kind": "cifar100", "root": "/nonexistent"}}, "download: true"),
    ({"stage": "mcmi", "lam": 0.1, "teacher_checkpoint": "/nonexistent/ckpt.pt"}, "ckpt.pt"),
])
def test_bad_inputs_are_rejected_before_training(tmp_path, overrides, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_stage(_spec(tmp_path, **overrides))
    assert not (tmp_path / "_resume").exists()


def test_unreadable_checkpoint_is_named(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        run_stage(_spec(tmp_path, stage="measure", checkpoint=str(bad)))


@pytest.mark.slow
def test_killed_stage_resumes_without_redoing_finished_epochs(tmp_path):
    """A real process is killed with SIGKILL mid-run; the rerun continues from its checkpoint and ends
    with the same metrics as an uninterrupted run."""
    spec = _spec(tmp_path, recipe={"epochs": 6, "lr": 0.05, "batch_size": 16, "milestones": [4]})
    spec["dataset"]["max_train"] = 160
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mcmi", "stage", "--spec", json.dumps(spec)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    resume = Path(spec["resume"])
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if resume.exists():
            epoch = torch.load(resume, weights_only=True)["epoch"]
            if 1 <= epoch < 5:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_after = torch.load(resume, weights_only=True)["epoch"]
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"after epoch {killed_after}" in rerun.stdout
    assert f"epoch {killed_after}/6" not in rerun.stdout          # finished epochs are not redone
    resumed = json.loads(Path(spec["out_metrics"]).read_text())

    fresh = dict(spec, out_metrics=str(tmp_path / "fresh.json"), out_model=str(tmp_path / "fresh.pt"),
                 resume=str(tmp_path / "_fresh" / "last.pt"))
    subprocess.run([sys.executable, "-m", "mcmi", "stage", "--spec", json.dumps(fresh)], env=env, check=True,
                   capture_output=True, timeout=300)
    uninterrupted = json.loads(Path(fresh["out_metrics"]).read_text())
    assert resumed["final"]["test_acc"] == uninterrupted["final"]["test_acc"]
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx(
        [h["train_loss"] for h in uninterrupted["history"]], rel=1e-6)


def test_pretrained_repdistiller_teacher_is_imported_strictly(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet8", 10)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": source.state_dict(), "epoch": 240, "accuracy": 71.0}, path)
    run_stage(_spec(tmp_path, stage="import", checkpoint=str(path)))
    imported = torch.load(tmp_path / "t" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(imported[k], v) for k, v in source.state_dict().items())
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["final"]["source"] == str(path)

    wrong = create_model("resnet14", 10)
    torch.save({"model": wrong.state_dict()}, path)
    with pytest.raises(ValueError, match="ckpt_epoch_240.pth"):
        run_stage(_spec(tmp_path, stage="import", checkpoint=str(path)))


def test_local_gpu_jobs_claim_different_gpus(tmp_path, monkeypatch):
    from mcmi import train

    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(train, "_GPU_LOCKS", [])
    assert [train._claim_free_gpu(3) for _ in range(3)] == [0, 1, 2]    # each claim holds its lock
    assert train._claim_free_gpu(3) == 0                                   # all taken: share the first


@pytest.mark.slow
def test_student_resume_restores_the_method_state_but_does_not_store_the_teacher(tmp_path):
    """CRD's memory banks and embeddings come back on resume; the frozen teacher is not re-saved."""
    from mcmi.distill import Distillation, PairContext, build_method
    from mcmi.models import probe_shapes

    train, test = tiny_data(), tiny_data(seed=1)
    torch.manual_seed(5)
    teacher = create_model("resnet14", 4)

    def run(resume, stop=None):
        torch.manual_seed(0)
        student = create_model("resnet8", 4)
        ctx = PairContext(student=probe_shapes(student, (3, 8, 8)), teacher=probe_shapes(teacher, (3, 8, 8)),
                          num_classes=4, num_train=len(train), train_labels=train.labels, epochs=3,
                          input_shape=(3, 8, 8))
        objective = Distillation(build_method("CRD", ctx, {"nce_k": 16}), teacher)
        fit(student, objective, train, test, Recipe(**RECIPE), seed=0, device=torch.device("cpu"),
            resume_path=resume, stop_after_epoch=stop)
        return student, objective

    full_student, full_objective = run(None)
    resume = tmp_path / "last.pt"
    run(resume, stop=2)
    saved = torch.load(resume, weights_only=True)["objective"]
    assert saved and not any(key.startswith("teacher") for key in saved)
    student, objective = run(resume)
    for key, value in full_student.state_dict().items():
        assert torch.equal(value, student.state_dict()[key]), key
    for key, value in full_objective.state_dict().items():
        assert torch.equal(value, objective.state_dict()[key]), key


def test_a_job_asking_for_a_missing_gpu_fails_with_one_line():
    """A spec with ``device: cuda`` run where there is no GPU (e.g. a cluster node without one) is a
    ConfigError naming the device, not torch's error from deep inside the first step."""
    import torch

    from mcmi.pipeline.config import ConfigError
    from mcmi.train import pick_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="'cuda', but this machine has no usable CUDA GPU"):
        pick_device("cuda")
    assert pick_device("cpu").type == "cpu"
