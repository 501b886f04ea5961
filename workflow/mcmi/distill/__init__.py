"""Knowledge-distillation methods: one file per method, all behind ``DistillMethod``."""

from mcmi.distill.base import (DistillMethod, Distillation, PairContext, SharedTeacher, build_method, register,
                               registry)

__all__ = ["DistillMethod", "Distillation", "PairContext", "SharedTeacher", "build_method", "register", "registry"]
