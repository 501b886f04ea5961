"""The workflow layer: the naming grammar (:mod:`.naming`), the table of output paths (:mod:`.paths`),
typed job specs (:mod:`.specs`), config defaults and checks (:mod:`.config`) and the plan the rules
call (:mod:`.plan`: paths, specs, student groups and the inputs of every target)."""

from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.plan import StudentCell, StudentGroup, WorkflowConfig

__all__ = ["ConfigError", "StudentCell", "StudentGroup", "WorkflowConfig"]
