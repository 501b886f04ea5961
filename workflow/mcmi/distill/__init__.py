"""Knowledge-distillation methods: one file per method, all behind ``DistillMethod``."""

from mcmi.distill.base import DistillMethod, PairContext, StepOutput, build_method, register, registry

__all__ = ["DistillMethod", "PairContext", "StepOutput", "build_method", "register", "registry"]
