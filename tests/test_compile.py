"""Compiled training steps (config ``compile``, :mod:`mcmi.capture`) on the CPU: for every registered
method in one group sharing its teacher, and every teacher objective, 20 steps (2 epochs of 10, the last
batch of each smaller) compiled with ``torch.compile`` agree with the same 20 eager steps; a member whose
step cannot be compiled is named and runs eagerly; ``reduce-overhead`` on a CPU is ``default`` (CUDA
graphs are for CUDA tensors only: Inductor skips them for CPU graphs).

Tolerance: a compiled step computes the same losses with fused kernels, which round differently, and
SGD carries the difference on, growing it step by step (on random pixels, faster for the methods with
large gradients). Measured on this CPU (AVX-512, torch 2.14), largest over the members: the losses of
the first 5 steps within a relative 7.4e-5 of eager (DKD), of all 20 steps within 3.0e-3 (FitNet; most
members 1e-7 to 2e-5), the weight update of the 20 steps (trained less initial weights, the model's and
the objective's own state apart) within 6.3e-3 of its size (FitNet). Asserted, with room for another
CPU's kernels: 5e-4, 1e-2 and 2e-2. A wrong compiled step (e.g. a backward reading a buffer written in
place, which CRD's banks did) is off by far more from the first step."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from every_member import FirstSteps, random_images, student_group, teacher_objective_members
from mcmi import capture
from mcmi import train as trainer
from mcmi.train import Member, Precision, fit_members

RTOL, ATOL = 2e-3, 1e-4                         # one step's losses (the fallback and reduce-overhead tests)
FIRST_STEPS_RTOL, LOSS_RTOL, UPDATE_RTOL = 5e-4, 1e-2, 2e-2     # 20 steps: see the module's docstring
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


def _flat(state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor | None:
    tensors = [v.double().flatten() for k, v in state.items() if k.startswith(prefix) and v.is_floating_point()]
    return torch.cat(tensors) if tensors else None


def update_difference(eager: Member, compiled: Member, fresh: Member) -> float:
    """How far the compiled member's weight update is from the eager one's, relative to its size: the
    model's and the objective's own state (method modules, banks, running statistics) apart, the larger."""
    a, b, start = weights(eager), weights(compiled), weights(fresh)
    assert a.keys() == b.keys() == start.keys()
    worst = 0.0
    for prefix in ("model.", "objective."):
        before, after, initial = _flat(a, prefix), _flat(b, prefix), _flat(start, prefix)
        if before is not None and bool((before != initial).any()):
            worst = max(worst, float((after - before).norm() / (before - initial).norm()))
    return worst


@needs_compiler
@pytest.mark.slow
def test_every_method_and_objective_compiled_agrees_with_eager_for_20_steps(tmp_path):
    eager_members, data, teacher = every_member(tmp_path / "eager")
    eager = train(eager_members, data, teacher, "none")
    compiled_members, data, teacher = every_member(tmp_path / "compiled")
    compiled = train(compiled_members, data, teacher, "default")
    fresh_members = every_member(tmp_path / "fresh")[0]

    assert {m.label: m.compile_mode for m in compiled_members} == {m.label: "default" for m in compiled_members}
    assert all(m.step_fn is not m.objective.step for m in compiled_members)
    assert len(eager_members) == 23
    errors = {}
    for before, after, fresh in zip(eager_members, compiled_members, fresh_members):
        label = before.label
        assert eager[label].shape == compiled[label].shape and eager[label].shape[0] == STEPS_PER_EPOCH * EPOCHS
        assert any(not torch.equal(v, weights(fresh)[k]) for k, v in weights(before).items())    # it trained
        first, every = relative(compiled[label][:5], eager[label][:5]), relative(compiled[label], eager[label])
        errors[label] = (first, every, update_difference(before, after, fresh))
    table = "\n".join(f"{label}: losses, first 5 steps {f:.1e}, 20 steps {a:.1e}; weight update {w:.1e}"
                      for label, (f, a, w) in errors.items())
    print(table)
    assert all(f <= FIRST_STEPS_RTOL and a <= LOSS_RTOL and w <= UPDATE_RTOL for f, a, w in errors.values()), table


def _unequal_labels() -> torch.Tensor:
    """Class 0 has 28 samples (48 of other classes), classes 1-9 have 8 each (68 others): with K = 50
    negatives, CRD draws class 0's with replacement and the others' without."""
    return torch.cat([torch.zeros(28, dtype=torch.long), torch.arange(48) % 9 + 1])


@needs_compiler
def test_a_step_that_cannot_be_compiled_is_named_and_runs_eagerly(tmp_path, capsys):
    """CRD on a label set where some classes have K negatives and others not: its step stays eager (the
    log says why) and trains as the eager job does, with the teacher's forward pass compiled. (KD,
    compiled beside it, is left out to keep this test fast: every method compiles in the test above.)"""
    def group(folder: Path) -> tuple[list[Member], Any, Any]:
        data = FirstSteps(random_images(NUM_TRAIN, _unequal_labels()), 3)
        members, teacher = student_group(data, folder, methods=["CRD"], nce_k=50)
        return members, data, teacher

    eager_members, data, teacher = group(tmp_path / "eager")
    eager = train(eager_members, data, teacher, "none")
    members, data, teacher = group(tmp_path / "compiled")
    assert members[0].objective.compile_problem() is not None
    compiled = train(members, data, teacher, "default")
    crd = members[0]
    assert crd.compile_mode == "none" and crd.step_fn == crd.objective.step
    assert "extract" in vars(teacher.model)                    # the teacher's forward pass is compiled
    log = capsys.readouterr().out
    assert f"[{crd.label}] compile default: not compiled: some classes have K negatives and others not" in log
    torch.testing.assert_close(compiled[crd.label], eager[crd.label], rtol=RTOL, atol=ATOL)


@needs_compiler
@pytest.mark.slow
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
    assert [capture.check_mode(m) for m in capture.COMPILE_MODES] == ["none", "default", "reduce-overhead"]
