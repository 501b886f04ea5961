"""The one small interface every distillation method implements, and the registry behind it.

A method is an ``nn.Module``: its own parameters (regressors, embeddings, memory-bank buffers,
fusion modules, auxiliary heads) are optimised with the student's. The trainer calls
``method.step(student, teacher, batch, epoch)``; the default ``step`` runs both models once,
adds the weighted cross-entropy, and asks ``distill`` for the method's own named loss terms.
Methods that change the forward pass itself (HSAKD's rotated batches) override ``step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Hashable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.data.batch import Batch
from mcmi.objectives import Objective, StepOutput
from mcmi.models.base import Features, FeatureShapes, ZooModel

_T = TypeVar("_T")


@dataclass
class PairContext:
    """What a method may know about the pair and the training set when it is built."""

    student: FeatureShapes
    teacher: FeatureShapes | None     # None only for a method that needs no teacher
    num_classes: int
    num_train: int                     # size of the training set (CRD's memory banks)
    train_labels: torch.Tensor         # (num_train,) int64, indexed by dataset index (CRD negatives)
    epochs: int                        # total training epochs (warm-ups, schedules)
    input_shape: tuple[int, ...]       # per-sample input shape, e.g. (3, 32, 32)
    student_name: str = ""
    teacher_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. paths a method needs (HSAKD heads)


class DistillMethod(nn.Module):
    """Base class. Subclasses set ``name`` and ``defaults`` and implement ``distill``."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0}
    positive: ClassVar[tuple[str, ...]] = ()   # hyperparameters that must be > 0 (temperatures, sizes)
    needs_teacher: ClassVar[bool] = True       # False: trained without a teacher (the vanilla baseline)
    draws_random: ClassVar[bool] = False       # the step draws random numbers (kept out of CUDA graphs)

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any]) -> list[str]:
        """What is wrong with ``hparams`` for this method (empty when nothing): unknown names, a
        value whose type differs from its default's (an int where a float is expected is fine; a
        ``None`` default marks an optional number, unset meaning the method derives it), a
        negative number, or a non-positive one among ``positive``."""
        problems = []
        unknown = sorted(set(hparams) - set(cls.defaults))
        if unknown:
            problems.append(f"unknown hyperparameter(s) {unknown}; expected some of {sorted(cls.defaults)}")
        for key in sorted(set(hparams) & set(cls.defaults)):
            value, default = hparams[key], cls.defaults[key]
            if not _same_kind(value, default):
                problems.append(f"{key}: expected {_kind_name(default)} (default {default!r}), got {value!r}")
            elif _is_number(value) and value < 0:
                problems.append(f"{key}: must be >= 0, got {value!r}")
            elif key in cls.positive and _is_number(value) and value <= 0:
                problems.append(f"{key}: must be > 0, got {value!r}")
        return problems

    def __init__(self, ctx: PairContext, **hparams: Any) -> None:
        super().__init__()
        problems = self.check_hparams(hparams)
        if problems:
            raise ValueError(f"method {self.name}: " + "; ".join(problems))
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}
        self.ctx = ctx

    def distill(self, s: Features, t: Features, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """The method's own weighted loss terms (without the cross-entropy)."""
        raise NotImplementedError

    def compile_problem(self) -> str | None:
        """Why this method's step cannot be compiled (``None``: it can); see :mod:`mcmi.capture`."""
        return None

    def method_info(self) -> dict[str, Any]:
        """Facts about how the method was built for this pair that are not hyperparameters (e.g.
        HSAKD's kind of heads); written to a student's metrics as ``final.method_info`` when non-empty."""
        return {}

    def step(self, student: ZooModel, teacher: ZooModel, batch: Batch, epoch: int) -> StepOutput:
        s = student.extract(batch.x)
        with torch.no_grad():
            t = teacher.extract(batch.x)
        terms = {"ce": self.hparams["ce_weight"] * F.cross_entropy(s.logits, batch.y)}
        terms.update(self.distill(s, t, batch, epoch))
        return StepOutput(terms=terms, logits=s.logits)


class SharedTeacher(nn.Module):
    """A frozen teacher whose features are computed once per input tensor and handed to every
    student that asks for them until :meth:`clear` (the trainer clears it per batch). Students of
    one group see the same batches, so one forward pass serves them all; :meth:`memo` shares other
    teacher-side work (HSAKD's frozen teacher heads) the same way."""

    def __init__(self, model: ZooModel, model_name: str = "") -> None:
        super().__init__()
        self.model, self.model_name = model, model_name
        self._memo: dict[tuple[Hashable, int], tuple[torch.Tensor, Any]] = {}

    @torch.compiler.disable
    def memo(self, key: Hashable, inputs: torch.Tensor, compute: Callable[[], _T]) -> _T:
        """``compute()``, a function of the frozen teacher and ``inputs`` only, computed once per
        ``(key, inputs)`` until :meth:`clear`. Never traced into a compiled student step: the teacher's
        work runs in its own graph (:meth:`compile`), the same for a student alone and in a group."""
        slot = (key, id(inputs))
        hit = self._memo.get(slot)
        if hit is not None and hit[0] is inputs:   # the tensor is held, so its id cannot be reused
            return hit[1]
        value = compute()
        self._memo[slot] = (inputs, value)
        return value

    def extract(self, x: torch.Tensor) -> Features:
        return self.memo("features", x, lambda: self.model.extract(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(x).logits

    def clear(self) -> None:
        self._memo.clear()

    def set_compile(self, mode: str) -> None:
        """Run the teacher model's ``extract`` compiled in ``mode`` (:mod:`mcmi.capture`) for every
        caller, HSAKD's rotations included; ``none`` restores the eager forward pass."""
        from mcmi.capture import compile_forward

        self.model.__dict__.pop("extract", None)
        if mode != "none":
            self.model.extract = compile_forward(self.model, mode)


def shared_teacher_work(teacher: nn.Module, key: Hashable, inputs: torch.Tensor,
                        compute: Callable[[nn.Module], _T]) -> _T:
    """``compute(model)`` on the frozen teacher model, once per batch through ``teacher.memo`` when
    the teacher is shared by a group, else directly. ``compute`` gets the bare model, so its
    intermediate features are not memoised beside its result."""
    if isinstance(teacher, SharedTeacher):
        return teacher.memo(key, inputs, lambda: compute(teacher.model))
    return compute(teacher)


class Distillation(Objective):
    """A student's objective: a distillation method together with its frozen, eval-mode teacher
    (a :class:`ZooModel`, or a :class:`SharedTeacher` that several students use)."""

    def __init__(self, method: DistillMethod, teacher: ZooModel | SharedTeacher | None) -> None:
        super().__init__()
        if teacher is None and method.needs_teacher:
            raise ValueError(f"method {method.name!r} needs a teacher")
        self.method = method
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Distillation":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher stays in eval mode whatever the trainer asks
        return self

    def step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        return self.method.step(model, self.teacher, batch, epoch)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The method's state only: the frozen teacher is an input, not training state, so resume
        checkpoints do not copy its weights every epoch."""
        return self.method.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.method.load_state_dict(state_dict, strict=strict, assign=assign)

    def describe(self) -> dict:
        return {"objective": "distillation", "method": self.method.name, "hparams": self.method.hparams}

    def compile_problem(self) -> str | None:
        return self.method.compile_problem()

    def draws_random(self) -> bool:
        return self.method.draws_random


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same_kind(value: Any, default: Any) -> bool:
    """Whether ``value`` may replace ``default``: bools, strings and lists as such; an integer
    default needs an integer; a float default takes any number; a ``None`` default (an optional
    number) takes a number or ``None``."""
    if default is None:
        return value is None or _is_number(value)
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return _is_number(value)
    return isinstance(value, type(default))


def _kind_name(default: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            type(None): "a number or null"}.get(
        type(default), type(default).__name__)


_REGISTRY: dict[str, type[DistillMethod]] = {}


def register(cls: type[DistillMethod]) -> type[DistillMethod]:
    """Class decorator: make a method available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two distillation methods are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[DistillMethod]]:
    """All registered methods, importing every module of this package once."""
    import importlib
    import pkgutil

    import mcmi.distill as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    return dict(_REGISTRY)


def build_method(name: str, ctx: PairContext, hparams: dict[str, Any] | None = None) -> DistillMethod:
    """Build the method called ``name`` for this pair; unknown names fail with the known list."""
    methods = registry()
    if name not in methods:
        raise ValueError(f"unknown distillation method {name!r}; known: {sorted(methods)}")
    return methods[name](ctx, **(hparams or {}))
