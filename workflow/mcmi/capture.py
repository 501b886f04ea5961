"""Compiled training steps: the config's ``compile`` (``none`` | ``default`` | ``reduce-overhead``).

``none`` (the default) runs every step eagerly: nothing here is used. Otherwise ``torch.compile``
(TorchDynamo + Inductor) compiles, per job:

- **the frozen teacher's forward pass** (``extract``: features and logits), its own graph, run once per
  batch for the whole student group through :class:`mcmi.distill.SharedTeacher`'s memo (which is never
  traced into a student's graph: a student's graph is the same alone and in a group);
- **each member's step**: its objective's forward and loss -- the model's forward pass and every loss
  term (the method's own modules, memory-bank updates, CRD's and MIMKD's draws) -- and, derived from it
  by AOTAutograd, the backward pass. Each member gets its own copy of the step's code, so its graphs
  are cached apart from the others' (TorchDynamo keeps graphs, and its recompile limit, per code object).

Eager, in every mode: the optimiser (SGD with the learning rate of the epoch as a Python number, so a
schedule never needs a recompilation), ``zero_grad``, the loss sums, the swap of each member's random
stream, evaluation. ``reduce-overhead`` adds CUDA graphs (Inductor's CUDA-graph trees) to the compiled
graphs on a GPU; on a CPU it is ``default``.

Numbers. A compiled step computes the same loss with fused kernels: equal to eager up to float
rounding (tested on the CPU for 20 steps of every method). Random draws inside a compiled step are
made by the eager kernels (``fallback_random``), so CRD's negatives and MIMKD's offset are the eager
draws from the member's own stream. Shapes are static: every batch tensor's sizes are marked static,
so the last, smaller batch of an epoch gets its own graph instead of turning the others dynamic; the
epoch number (DKD's and ReviewKD's warm-up) becomes a symbolic integer after it first changes, one
recompilation.

Steps that are not compiled (the member runs eagerly, and the log says why): an objective whose
``compile_problem()`` names one -- CRD (and CRD+KD, MIMKD's NCE) on label sets where some classes have
K negatives and others not, which reads a mask of the batch's labels every step. Under
``reduce-overhead`` a step that draws random numbers (``draws_random``: CRD, CRD+KD, MIMKD) is compiled
without CUDA graphs: its member's stream is swapped in around each step, which a replayed graph's
generator state would not follow; a graph with a symbolic input (the epoch of DKD and ReviewKD after
the first epoch) runs without CUDA graphs too (``cudagraph_skip_dynamic_graphs``).
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
from torch import nn

COMPILE_MODES = ("none", "default", "reduce-overhead")


def check_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {mode!r}")
    return mode


def configure(members: int) -> None:
    """The compiler's process-wide settings for a job that compiles the steps of ``members`` members.

    The frames that run after a step's graph break (where a method asks the shared teacher for its
    features) are code shared by every member, so TorchDynamo's per-code recompile limit (8) must hold
    a few graphs per member: full and last batch, first and later epochs."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True                     # random ops draw what eager draws
    inductor_config.triton.cudagraph_skip_dynamic_graphs = True
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 4 * members + 8)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 16 * members)


def _static(tensors: Any) -> None:
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            torch._dynamo.mark_static(tensor)


def _own_copy(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` with a code object of its own (TorchDynamo caches graphs per code object)."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _torch_mode(mode: str) -> str | None:
    return None if mode == "default" else mode


def compile_step(objective: nn.Module, mode: str, name: str) -> Callable[[nn.Module, Any, int], Any]:
    """``objective.step`` compiled in ``mode`` (a step function of its own, named ``name``); each call
    marks the batch's tensors static."""
    def step(model: nn.Module, batch: Any, epoch: int) -> Any:
        return objective.step(model, batch, epoch)

    compiled = torch.compile(_own_copy(step, name), mode=_torch_mode(mode))

    def run(model: nn.Module, batch: Any, epoch: int) -> Any:
        _static((batch.x, batch.y, batch.index, *batch.derived_tensors()))
        return compiled(model, batch, epoch)

    return run


def compile_forward(model: nn.Module, mode: str) -> Callable[[torch.Tensor], Any]:
    """``model``'s own ``extract`` (a frozen model in eval mode) compiled in ``mode``. Under CUDA graphs
    its outputs are copied out of the graph's memory, so they outlive the next graph that runs (a
    group's students read them one after another)."""
    extract = type(model).extract.__get__(model)

    def forward(x: torch.Tensor) -> Any:
        return extract(x)

    compiled = torch.compile(_own_copy(forward, "teacher_forward"), mode=_torch_mode(mode))
    copy_out = mode == "reduce-overhead"

    def run(x: torch.Tensor) -> Any:
        _static((x,))
        out = compiled(x)
        if copy_out and x.is_cuda:
            out = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)
        return out

    return run


def member_mode(objective: nn.Module, mode: str) -> tuple[str, str | None]:
    """The mode a member's step runs in, and why it is not ``mode`` (None when it is)."""
    problem = objective.compile_problem()
    if problem:
        return "none", f"not compiled: {problem}"
    if mode == "reduce-overhead" and objective.draws_random():
        return "default", ("compiled without CUDA graphs: its step draws random numbers from the member's own "
                           "stream, swapped in around each step")
    return mode, None
