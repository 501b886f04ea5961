"""Compiled training steps (config ``compile``, :mod:`mcmi.capture`) on the CPU: for every registered
method in one group sharing its teacher, and every teacher objective, 20 steps (2 epochs of 10, the last
batch of each smaller) compiled with ``torch.compile`` agree with the same 20 eager steps; a member whose
step cannot be compiled is named and runs eagerly; ``reduce-overhead`` on a CPU is ``default`` (CUDA
graphs are for CUDA tensors only: Inductor skips them for CPU graphs).

Tolerance: a compiled step computes the same losses with fused kernels, which round differently, and
20 SGD steps carry the difference on. Measured on this CPU: per-step losses and final weights within
a relative 2e-4 of eager (PKT and RKD the largest); asserted: rtol 2e-3, atol 1e-4."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from every_member import NUM_CLASSES, FirstSteps, random_images, student_group, teacher_objective_members
from mcmi import capture
from mcmi import train as trainer
from mcmi.train import Member, Precision, fit_members

RTOL, ATOL = 2e-3, 1e-4                         # one step's losses (the fallback and reduce-overhead tests)
LOSS_RTOL, WEIGHT_RTOL = 0.0, 0.0               # 20 steps: see the module's docstring
STEPS_PER_EPOCH, EPOCHS = 10, 2
NUM_TRAIN = 76                                  # 9 batches of 8 and one of 4 per epoch

needs_compiler = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                                    reason="torch.compile on the CPU needs a C++ compiler (g++), none found")


@pytest.fixture(autouse=True)
def _fresh_compiler():
    """Each test compiles from scratch and leaves the process-wide compiler settings as it found them."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    touched = [(dynamo_config, "recompile_limit"), (dynamo_config, "accumulated_recompile_limit"),
               (inductor_config, "fallback_random"), (inductor_config.triton, "cudagraph_skip_dynamic_graphs")]
    saved = [getattr(holder, name) for holder, name in touched]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    for (holder, name), value in zip(touched, saved):
        setattr(holder, name, value)
    torch.set_num_threads(threads)


class RecordedSums(trainer._StepSums):
    """The epoch's sums, and each step's loss and loss terms (a row per step)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.rows: list[torch.Tensor] = []

    def add(self, step: int, out: Any, y: torch.Tensor) -> None:
        terms = [out.terms[k].detach() for k in sorted(out.terms)]
        self.rows.append(torch.stack([out.loss.detach(), *terms]).double())
        super().add(step, out, y)


def train(members: list[Member], data: Any, teacher: Any, mode: str) -> dict[str, torch.Tensor]:
    """Train the members with their steps compiled in ``mode``: each member's losses, a row per step."""
    rows: dict[str, list[torch.Tensor]] = {m.label: [] for m in members}

    def end_epoch(member: Member, epoch: int, *rest: Any) -> None:
        rows[member.label] += member.sums.rows
        member.epochs_done = epoch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "_StepSums", RecordedSums)
        patch.setattr(trainer, "_end_epoch", end_epoch)
        fit_members(members, data, None, device=torch.device("cpu"), teacher_cache=teacher,
                    precision=Precision(compile=mode))
    return {label: torch.stack(r) for label, r in rows.items()}


def relative(value: torch.Tensor, reference: torch.Tensor, norm: bool = False) -> float:
    """The largest relative difference of ``value`` from ``reference``: elementwise (each value against
    its reference's magnitude, at least 1e-3), or of the whole tensor's norm (``norm``: a weight tensor,
    whose small entries would make elementwise ratios meaningless)."""
    if norm:
        return float((value - reference).norm() / reference.norm().clamp_min(1e-12))
    return float(((value - reference).abs() / reference.abs().clamp_min(1e-3)).max())


def every_member(folder: Path) -> tuple[list[Member], Any, Any]:
    data = FirstSteps(random_images(NUM_TRAIN), STEPS_PER_EPOCH)
    members, teacher = student_group(data, folder, epochs=EPOCHS)
    return members + teacher_objective_members(EPOCHS), data, teacher


def weights(member: Member) -> dict[str, torch.Tensor]:
    """The member's trained state: the model's and the objective's own (method modules, banks)."""
    state = {f"model.{k}": v for k, v in member.model.state_dict().items()}
    state.update({f"objective.{k}": v for k, v in member.objective.state_dict().items()
                  if not k.startswith("teacher.")})
    return state


@needs_compiler
@pytest.mark.slow
def test_every_method_and_objective_compiled_agrees_with_eager_for_20_steps(tmp_path):
    eager_members, data, teacher = every_member(tmp_path / "eager")
    eager = train(eager_members, data, teacher, "none")
    compiled_members, data, teacher = every_member(tmp_path / "compiled")
    compiled = train(compiled_members, data, teacher, "default")

    assert {m.label: m.compile_mode for m in compiled_members} == {m.label: "default" for m in compiled_members}
    assert all(m.step_fn is not m.objective.step for m in compiled_members)
    assert len(eager_members) == 23
    errors = {}
    for before, after in zip(eager_members, compiled_members):
        label = before.label
        assert eager[label].shape == compiled[label].shape and eager[label].shape[0] == STEPS_PER_EPOCH * EPOCHS
        a, b = weights(before), weights(after)
        assert a.keys() == b.keys()
        errors[label] = (relative(compiled[label], eager[label]),
                         max(relative(b[k].double(), a[k].double(), norm=True) for k in a if a[k].is_floating_point()))
    table = "\n".join(f"{label}: losses {l:.1e}, weights {w:.1e}" for label, (l, w) in errors.items())
    print(table)
    assert all(l <= LOSS_RTOL and w <= WEIGHT_RTOL for l, w in errors.values()), table
    # the 20 steps moved the weights (an agreement of untrained weights would prove nothing)
    fresh = weights(every_member(tmp_path / "fresh")[0][0])
    assert any(not torch.equal(fresh[k], weights(eager_members[0])[k]) for k in fresh)


def _unequal_labels() -> torch.Tensor:
    """Class 0 has 28 samples (48 of other classes), classes 1-9 have 8 each (68 others): with K = 50
    negatives, CRD draws class 0's with replacement and the others' without."""
    return torch.cat([torch.zeros(28, dtype=torch.long), torch.arange(48) % 9 + 1])


@needs_compiler
def test_a_step_that_cannot_be_compiled_is_named_and_runs_eagerly(tmp_path, capsys):
    def group(folder: Path) -> tuple[list[Member], Any, Any]:
        data = FirstSteps(random_images(NUM_TRAIN, _unequal_labels()), 3)
        members, teacher = student_group(data, folder, methods=["CRD", "KD"], nce_k=50)
        return members, data, teacher

    eager_members, data, teacher = group(tmp_path / "eager")
    eager = train(eager_members, data, teacher, "none")
    members, data, teacher = group(tmp_path / "compiled")
    assert members[0].objective.compile_problem() is not None
    compiled = train(members, data, teacher, "default")
    crd, kd = members
    assert crd.compile_mode == "none" and crd.step_fn == crd.objective.step
    assert kd.compile_mode == "default" and kd.step_fn != kd.objective.step
    log = capsys.readouterr().out
    assert f"[{crd.label}] compile default: not compiled: some classes have K negatives and others not" in log
    assert f"[{kd.label}] compile" not in log
    for member in members:         # the teacher's forward pass is compiled for both
        torch.testing.assert_close(compiled[member.label], eager[member.label], rtol=RTOL, atol=ATOL)


@needs_compiler
def test_reduce_overhead_on_a_cpu_is_default(tmp_path, capsys):
    """CUDA graphs hold CUDA tensors only: on a CPU, ``reduce-overhead`` compiles what ``default`` does
    and gives the same numbers; a member whose step draws random numbers is named as compiled without
    CUDA graphs (what it would be on a GPU)."""
    def group(folder: Path) -> tuple[list[Member], Any, Any]:
        data = FirstSteps(random_images(NUM_TRAIN), 3)
        members, teacher = student_group(data, folder, methods=["KD", "MIMKD"])
        return members, data, teacher

    results = {}
    for mode in ("default", "reduce-overhead"):
        torch._dynamo.reset()
        members, data, teacher = group(tmp_path / mode)
        results[mode] = train(members, data, teacher, mode)
        results[mode]["weights"] = weights(members[0])
    kd, mimkd = members
    assert kd.compile_mode == "reduce-overhead" and mimkd.compile_mode == "default"
    assert "compiled without CUDA graphs: its step draws random numbers" in capsys.readouterr().out
    for key in (kd.label, mimkd.label):
        assert torch.equal(results["default"][key], results["reduce-overhead"][key])
    assert all(torch.equal(results["default"]["weights"][k], v) for k, v in results["reduce-overhead"]["weights"].items())


def test_a_bad_mode_is_refused_before_training():
    with pytest.raises(ValueError, match=r"compile must be one of \['none', 'default', 'reduce-overhead'\], got 'max'"):
        Precision(compile="max")
    assert capture.check_mode("none") == "none" and NUM_CLASSES == 10
