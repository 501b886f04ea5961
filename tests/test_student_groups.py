"""Grouped student jobs: every student trained in a group equals the same student trained alone, bit
for bit (float32, CPU); a group resumes all its members exactly; a member whose loss goes non-finite
fails the job by name after the others are saved, and a rerun with the setting fixed loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mcmi.distill import registry
from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads
from mcmi.models import create_model, probe_shapes
from mcmi.stages import run_stage
from mcmi.train import NonFiniteLossError

METHODS = sorted(name for name in registry() if name != "vanilla")
DATASET = {"kind": "digits", "image_size": 8, "max_train": 64, "max_test": 32}


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(7)
    teacher = create_model("resnet14", 10)
    checkpoint = folder / "model.pt"
    torch.save({"model": teacher.state_dict()}, checkpoint)
    heads = folder / "hsakd_heads.pt"
    save_teacher_heads(HSAKDTeacherHeads(probe_shapes(teacher, (3, 8, 8)), 10).heads, heads)
    return {"checkpoint": str(checkpoint), "heads": str(heads)}


def member_spec(root: Path, method: str, teacher_files: dict[str, str], epochs: int = 2, **extra) -> dict:
    out = root / "students" / method
    hparams = {"nce_k": 8} if method.startswith("CRD") else {}
    spec = {"stage": "student", "dataset": DATASET, "seed": 3, "device": "cpu", "student": "resnet8",
            "teacher": "resnet14", "teacher_checkpoint": teacher_files["checkpoint"], "method": method,
            "recipe": {"epochs": epochs, "lr": 0.05, "batch_size": 16, "milestones": [1]}, "hparams": hparams,
            "extra": {"hsakd_teacher_heads": teacher_files["heads"]},
            "out_metrics": str(out / "metrics.json"), "out_model": str(out / "model.pt"),
            "resume": str(root / "_resume" / method / "last.pt"), "finished": str(root / "_finished" / method),
            "run": {"dataset": "digits", "teacher": "resnet14", "student": "resnet8", "method": method}}
    spec.update(extra)
    return spec


def _weights(spec: dict) -> dict[str, torch.Tensor]:
    return torch.load(spec["out_model"], weights_only=True)["model"]


def _history(spec: dict) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"}
            for h in json.loads(Path(spec["out_metrics"]).read_text())["history"]]


def _assert_group_equals_alone(alone: list[dict], group: list[dict]) -> None:
    """Train each spec of ``alone`` as its own job and ``group`` as one group job; the same members
    must end with bit-identical weights and equal histories."""
    for spec in alone:
        run_stage(spec)
    run_stage({"stage": "student_group", "members": group})
    for solo, member in zip(alone, group):
        name = (solo["student"], solo["method"])
        solo_weights, member_weights = _weights(solo), _weights(member)
        assert solo_weights.keys() == member_weights.keys(), name
        for key, value in solo_weights.items():
            assert torch.equal(value, member_weights[key]), (name, key)
        assert _history(solo) == _history(member), name


@pytest.mark.slow
def test_every_method_trained_in_a_group_equals_it_trained_alone(tmp_path, teacher_files):
    group = [member_spec(tmp_path / "group", m, teacher_files) for m in METHODS]
    _assert_group_equals_alone([member_spec(tmp_path / "alone", m, teacher_files) for m in METHODS], group)
    assert not any((tmp_path / "group" / "_resume").rglob("*.pt"))       # a finished group leaves no resume files
    kept = Path(group[0]["finished"]) / "model.pt"                        # its results are kept as hard links
    assert kept.stat().st_ino == Path(group[0]["out_model"]).stat().st_ino


def hsakd_student(root: Path, student: str, teacher_files: dict[str, str]) -> dict:
    """An HSAKD member whose student is ``student`` (outputs under its own name)."""
    spec = member_spec(root, "HSAKD", teacher_files)
    out, state = root / "students" / student, root / "_state" / student
    spec.update(student=student, out_metrics=str(out / "metrics.json"), out_model=str(out / "model.pt"),
                resume=str(state / "last.pt"), finished=str(state / "finished"),
                run={**spec["run"], "student": student})
    return spec


@pytest.mark.slow
def test_hsakd_students_of_one_teacher_share_its_heads_and_equal_them_alone(tmp_path, teacher_files):
    """Grouped by teacher, HSAKD students of two architectures share the teacher's rotated pass
    and its frozen heads; each equals the same student trained alone."""
    students = ["resnet8", "resnet8x4"]
    _assert_group_equals_alone([hsakd_student(tmp_path / "alone", s, teacher_files) for s in students],
                               [hsakd_student(tmp_path / "group", s, teacher_files) for s in students])


@pytest.mark.slow
def test_a_killed_group_resumes_every_member_exactly(tmp_path, teacher_files):
    methods = ["KD", "CRD", "HSAKD"]
    uninterrupted = [member_spec(tmp_path / "full", m, teacher_files, epochs=3) for m in methods]
    run_stage({"stage": "student_group", "members": uninterrupted})
    # the "killed" run: same specs, but it stops after epoch 2 (its checkpoints are what a kill leaves)
    killed = [member_spec(tmp_path / "killed", m, teacher_files, epochs=3) for m in methods]
    from mcmi import train

    original = train._end_epoch

    def stop_after_two(member, epoch, *args):
        original(member, epoch, *args)
        if epoch == 2 and all(m.epochs_done == 2 for m in members_seen):
            raise KeyboardInterrupt

    members_seen: list = []
    original_init = train.Member.__init__

    def remember(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        members_seen.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "_end_epoch", stop_after_two)
        patch.setattr(train.Member, "__init__", remember)
        with pytest.raises(KeyboardInterrupt):
            run_stage({"stage": "student_group", "members": killed})
    assert all(torch.load(s["resume"], weights_only=True)["epoch"] == 2 for s in killed)
    run_stage({"stage": "student_group", "members": killed})
    for full, resumed in zip(uninterrupted, killed):
        for key, value in _weights(full).items():
            assert torch.equal(value, _weights(resumed)[key]), (full["method"], key)
        assert _history(full) == _history(resumed)


@pytest.mark.slow
def test_a_diverging_member_fails_the_group_by_name_and_a_fixed_rerun_loses_nothing(tmp_path, teacher_files,
                                                                                      capsys):
    good = [member_spec(tmp_path, m, teacher_files) for m in ("KD", "CRD")]
    diverging = member_spec(tmp_path, "DKD", teacher_files, recipe={"epochs": 2, "lr": 1e30, "batch_size": 16,
                                                                     "milestones": [1]})
    with pytest.raises(NonFiniteLossError, match=r"resnet8 <- resnet14 \[DKD\]"):
        run_stage({"stage": "student_group", "members": [*good, diverging]})
    for spec in good:                                 # trained to the end and kept for the rerun
        assert torch.load(spec["resume"], weights_only=True)["epoch"] == 2
    capsys.readouterr()
    fixed = member_spec(tmp_path, "DKD", teacher_files)
    run_stage({"stage": "student_group", "members": [*good, fixed]})
    log = capsys.readouterr().out
    for spec in good:
        assert f"[{spec['method']}]] resuming from" in log and f"[{spec['method']}]] epoch 1/2" not in log
        assert Path(spec["out_metrics"]).is_file()
    assert "[DKD]] epoch 1/2" in log and Path(fixed["out_metrics"]).is_file()


def test_members_must_share_the_teacher_data_and_seed(tmp_path, teacher_files):
    a = member_spec(tmp_path, "KD", teacher_files)
    b = member_spec(tmp_path, "AT", teacher_files, seed=4)
    with pytest.raises(ValueError, match="must share 'seed'"):
        run_stage({"stage": "student_group", "members": [a, b]})


@pytest.mark.slow
def test_bf16_and_channels_last_are_applied_to_students(tmp_path, teacher_files):
    fp32 = member_spec(tmp_path / "fp32", "KD", teacher_files, epochs=1)
    bf16 = member_spec(tmp_path / "bf16", "KD", teacher_files, epochs=1, precision="bf16", channels_last=True)
    run_stage(fp32)
    run_stage(bf16)
    assert _history(fp32)[0]["train_loss"] != _history(bf16)[0]["train_loss"]       # the setting takes effect
    assert abs(_history(fp32)[0]["train_loss"] - _history(bf16)[0]["train_loss"]) < 0.1   # and stays close
    with pytest.raises(ValueError, match="precision must be"):
        run_stage(member_spec(tmp_path / "bad", "KD", teacher_files, precision="fp16"))


@pytest.mark.slow
def test_a_rerun_group_reuses_the_members_whose_spec_and_code_are_unchanged(tmp_path, teacher_files, capsys,
                                                                              monkeypatch):
    kd, at = (member_spec(tmp_path, m, teacher_files, epochs=1) for m in ("KD", "AT"))
    run_stage({"stage": "student_group", "members": [kd, at]})
    first_kd = Path(kd["out_metrics"]).read_text()
    for spec in (kd, at):                       # Snakemake deletes a job's outputs before rerunning it
        Path(spec["out_metrics"]).unlink()
        Path(spec["out_model"]).unlink()
    capsys.readouterr()
    edited = dict(at, hparams={"beta": 500.0})
    run_stage({"stage": "student_group", "members": [kd, edited]})
    log = capsys.readouterr().out
    assert "[KD]] reusing the finished result" in log and "[KD]] epoch 1/1" not in log
    assert "[AT]] epoch 1/1" in log and "[AT]] reusing" not in log
    assert Path(kd["out_metrics"]).read_text() == first_kd

    import mcmi.identity

    monkeypatch.setattr(mcmi.identity, "code_fingerprint", lambda: "other code")
    run_stage({"stage": "student_group", "members": [kd, edited]})
    assert "[KD]] epoch 1/1" in capsys.readouterr().out      # other code: trained again, not reused
