"""The naming grammar of the workflow: teacher variants, student settings, pairs and numbers in paths.

Every rule's wildcard constraints and every function that writes or reads one of these names use this
module, so the grammar is stated once:

- variant (which teacher): ``MLL``; ``MCMI`` (the lambda* teacher); ``MCMI_lam<lambda>`` (one teacher of
  the lambda grid); ``ES<epochs>`` (early-stopped MLL teacher).
- setting (how the student is trained): ``full``; ``fs<alpha>`` (few-shot, alpha % of the training set);
  ``T<temperature>`` (KD at that temperature); ``zs`` (zero-shot, classes removed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MLL, MCMI = "MLL", "MCMI"
VARIANTS = (MLL, MCMI)            # the two teachers every table compares
_GRID_PREFIX, _EARLY_STOP_PREFIX = "MCMI_lam", "ES"
FULL, ZERO_SHOT = "full", "zs"
_FEW_SHOT_PREFIX, _TEMPERATURE_PREFIX = "fs", "T"

NUMBER = "[0-9.]+"
# Snakemake wildcard constraints of every wildcard the rules use (workflow/rules/common.smk).
WILDCARDS: dict[str, str] = {
    "dataset": "[a-z0-9_]+",
    "teacher": "[A-Za-z0-9_]+",
    "student": "[A-Za-z0-9_]+",
    "model": "[A-Za-z0-9_]+",
    "method": "[A-Za-z+]+",
    "variant": f"{MLL}|{MCMI}|{_GRID_PREFIX}{NUMBER}|{_EARLY_STOP_PREFIX}[0-9]+",
    "setting": f"{FULL}|{_FEW_SHOT_PREFIX}{NUMBER}|{_TEMPERATURE_PREFIX}{NUMBER}|{ZERO_SHOT}",
    "seed": "[0-9]+",
    "lam": NUMBER,
    "temp": NUMBER,
    "dmu": NUMBER,
    "preset": "[a-z_]+",
    "n": "[0-9]+x?",          # table ids: 1..7 and 1x (beyond the paper)
}
# Teachers trained from scratch by the ``teacher`` rule (the others are fine-tuned or adopted).
TRAINED_TEACHER_VARIANT = f"{MLL}|{_EARLY_STOP_PREFIX}[0-9]+"


def number_text(value: float | str) -> str:
    """Canonical text of a number in names and paths: 0.15 -> '0.15', 4.0 -> '4', 0 -> '0'."""
    return f"{float(value):g}"


def pair_text(teacher: str, student: str) -> str:
    return f"{teacher}->{student}"


def split_pair(pair: str) -> tuple[str, str]:
    """'resnet56->resnet20' -> ('resnet56', 'resnet20')."""
    teacher, student = pair.split("->")
    return teacher, student


# ---------------------------------------------------------------- teacher variants
def grid_variant(lam: float | str) -> str:
    """The teacher of the lambda grid at ``lam``."""
    return f"{_GRID_PREFIX}{number_text(lam)}"


def early_stop_variant(epochs: int | str) -> str:
    return f"{_EARLY_STOP_PREFIX}{int(epochs)}"


@dataclass(frozen=True)
class Variant:
    """A parsed teacher variant: ``kind`` is MLL, MCMI (lambda* or grid; ``lam`` set for a grid teacher)
    or ES (``es_epochs`` set)."""

    kind: str
    lam: float | None = None
    es_epochs: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Variant":
        if text in (MLL, MCMI):
            return cls(text)
        if re.fullmatch(f"{_GRID_PREFIX}{NUMBER}", text):
            return cls(MCMI, lam=float(text[len(_GRID_PREFIX):]))
        if re.fullmatch(f"{_EARLY_STOP_PREFIX}[0-9]+", text):
            return cls("ES", es_epochs=int(text[len(_EARLY_STOP_PREFIX):]))
        raise ValueError(f"unknown teacher variant {text!r}; expected MLL, MCMI, MCMI_lam<lambda> or ES<epochs>")

    @property
    def is_early_stop(self) -> bool:
        return self.es_epochs is not None

    def run_fields(self) -> dict[str, Any]:
        """How the variant appears in a metrics file's ``run`` block (the tables' keys)."""
        fields: dict[str, Any] = {"variant": self.kind}
        if self.lam is not None:
            fields["lam"] = self.lam
        if self.es_epochs is not None:
            fields["es_epochs"] = self.es_epochs
        return fields


# ---------------------------------------------------------------- student settings
def few_shot_setting(alpha_percent: float | str) -> str:
    return f"{_FEW_SHOT_PREFIX}{number_text(alpha_percent)}"


def temperature_setting(temperature: float | str) -> str:
    return f"{_TEMPERATURE_PREFIX}{number_text(temperature)}"


@dataclass(frozen=True)
class Setting:
    """A parsed student setting: ``kind`` is full, fs (``alpha_percent``), T (``temperature``) or zs."""

    kind: str
    alpha_percent: float | None = None
    temperature: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Setting":
        if text in (FULL, ZERO_SHOT):
            return cls(text)
        if re.fullmatch(f"{_FEW_SHOT_PREFIX}{NUMBER}", text):
            return cls(_FEW_SHOT_PREFIX, alpha_percent=float(text[len(_FEW_SHOT_PREFIX):]))
        if re.fullmatch(f"{_TEMPERATURE_PREFIX}{NUMBER}", text):
            return cls(_TEMPERATURE_PREFIX, temperature=float(text[len(_TEMPERATURE_PREFIX):]))
        raise ValueError(f"unknown student setting {text!r}; expected full, fs<alpha>, T<temperature> or zs")

    @property
    def is_few_shot(self) -> bool:
        return self.alpha_percent is not None

    @property
    def is_temperature(self) -> bool:
        return self.temperature is not None

    @property
    def is_zero_shot(self) -> bool:
        return self.kind == ZERO_SHOT
