"""The naming grammar of the workflow: teacher variants, student settings, pairs and numbers in paths.

Every rule's wildcard constraints and every function that writes or reads one of these names use this
module, so the grammar is stated once:

- variant (which teacher): ``MLL``; ``MCMI`` (the lambda* teacher); ``MCMI_lam<lambda>`` (one teacher of
  the lambda grid); ``ES<epochs>`` (early-stopped MLL teacher); the MLL teacher fine-tuned with the MCMI
  recipe but another regulariser (Figure 7): ``ENT<beta>`` (entropy, CE - beta H), ``LS<eps>`` (label
  smoothing), ``LSKL<eps>w<weight>`` (the authors' unused reverse-KL label smoothing). Every variant but
  ``MCMI`` may end in ``_lab<count>s<seed>``: the same teacher trained (and fine-tuned) on ``count``
  class-balanced labelled images drawn with ``seed`` only (Figure 9): ``MLL_lab500s0``,
  ``MCMI_lam0.25_lab500s0``.
- setting (how the student is trained): ``full``; ``fs<alpha>`` (few-shot, alpha % of the training set);
  ``T<temperature>`` (KD with teacher and student at that temperature); ``Tt<t_teacher>_Ts<t_student>``
  (KD at two temperatures, Figure 8; never with equal ones); ``zs`` (zero-shot, classes removed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MLL, MCMI = "MLL", "MCMI"
VARIANTS = (MLL, MCMI)            # the two teachers every table compares
EARLY_STOP, ENTROPY, LABEL_SMOOTHING, LABEL_SMOOTHING_KL = "ES", "ENT", "LS", "LSKL"
_GRID_PREFIX, _EARLY_STOP_PREFIX = "MCMI_lam", "ES"
FULL, ZERO_SHOT = "full", "zs"
_FEW_SHOT_PREFIX, _TEMPERATURE_PREFIX = "fs", "T"

NUMBER = "[0-9.]+"
_LABELLED = f"_lab[0-9]+s[0-9]+"
# Teachers trained from scratch by the ``teacher`` rule, and those fine-tuned from an MLL teacher with the
# MCMI recipe by the ``mcmi_finetune`` rule (the lambda* ``MCMI`` teacher is adopted from the grid).
TRAINED_TEACHER_VARIANT = f"(?:{MLL}|{_EARLY_STOP_PREFIX}[0-9]+)(?:{_LABELLED})?"
FINETUNED_TEACHER_VARIANT = (f"(?:{_GRID_PREFIX}{NUMBER}|{ENTROPY}{NUMBER}|{LABEL_SMOOTHING}{NUMBER}"
                             f"|{LABEL_SMOOTHING_KL}{NUMBER}w{NUMBER})(?:{_LABELLED})?")
_TWO_TEMPERATURES = f"Tt({NUMBER})_Ts({NUMBER})"
# Snakemake wildcard constraints of every wildcard the rules use (workflow/rules/common.smk).
WILDCARDS: dict[str, str] = {
    "dataset": "[a-z0-9_]+",
    "teacher": "[A-Za-z0-9_]+",
    "student": "[A-Za-z0-9_]+",
    "model": "[A-Za-z0-9_]+",
    "method": "[A-Za-z+]+",
    "variant": f"{MCMI}|{TRAINED_TEACHER_VARIANT}|{FINETUNED_TEACHER_VARIANT}",
    "setting": f"{FULL}|{_FEW_SHOT_PREFIX}{NUMBER}|{_TEMPERATURE_PREFIX}{NUMBER}|Tt{NUMBER}_Ts{NUMBER}|{ZERO_SHOT}",
    "seed": "[0-9]+",
    "lam": NUMBER,
    "temp": NUMBER,
    "dmu": NUMBER,
    "preset": "[a-z_]+",
    "n": "[0-9]+x?",          # table ids: 1..8 and 1x (beyond the paper)
}


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


def entropy_variant(beta: float | str) -> str:
    """The MLL teacher fine-tuned with CE - beta * H(P) (Figure 7)."""
    return f"{ENTROPY}{number_text(beta)}"


def label_smoothing_variant(eps: float | str, weight: float | str | None = None) -> str:
    """The MLL teacher fine-tuned with label smoothing ``eps`` (Figure 7): cross-entropy on smoothed
    targets, or with ``weight`` the authors' reverse-KL form CE + weight * KL(P || q_eps)."""
    if weight is None:
        return f"{LABEL_SMOOTHING}{number_text(eps)}"
    return f"{LABEL_SMOOTHING_KL}{number_text(eps)}w{number_text(weight)}"


def labelled_variant(variant: str, count: int, seed: int) -> str:
    """``variant`` trained (and fine-tuned) on ``count`` class-balanced labelled images drawn with ``seed``."""
    if variant == MCMI or Variant.parse(variant).labeled_count is not None:
        raise ValueError(f"teacher variant {variant!r} cannot take a labelled subset")
    return f"{variant}_lab{int(count)}s{int(seed)}"


@dataclass(frozen=True)
class Variant:
    """A parsed teacher variant: ``kind`` is MLL, MCMI (lambda* or grid; ``lam`` set for a grid teacher),
    ES (``es_epochs``), ENT (``beta``), LS (``eps``) or LSKL (``eps``, ``weight``); ``labeled_count`` and
    ``labeled_seed`` are set for a teacher of a labelled subset."""

    kind: str
    lam: float | None = None
    es_epochs: int | None = None
    beta: float | None = None
    eps: float | None = None
    weight: float | None = None
    labeled_count: int | None = None
    labeled_seed: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Variant":
        if text == MCMI:
            return cls(MCMI)
        whole, labelled = text, {}
        found = re.fullmatch(f"(.+)_lab([0-9]+)s([0-9]+)", text)
        if found:
            text, labelled = found.group(1), {"labeled_count": int(found.group(2)),
                                              "labeled_seed": int(found.group(3))}
        for pattern, make in (
            (MLL, lambda m: cls(MLL, **labelled)),
            (f"{_GRID_PREFIX}({NUMBER})", lambda m: cls(MCMI, lam=float(m.group(1)), **labelled)),
            (f"{_EARLY_STOP_PREFIX}([0-9]+)", lambda m: cls(EARLY_STOP, es_epochs=int(m.group(1)), **labelled)),
            (f"{ENTROPY}({NUMBER})", lambda m: cls(ENTROPY, beta=float(m.group(1)), **labelled)),
            (f"{LABEL_SMOOTHING}({NUMBER})", lambda m: cls(LABEL_SMOOTHING, eps=float(m.group(1)), **labelled)),
            (f"{LABEL_SMOOTHING_KL}({NUMBER})w({NUMBER})",
             lambda m: cls(LABEL_SMOOTHING_KL, eps=float(m.group(1)), weight=float(m.group(2)), **labelled)),
        ):
            match = re.fullmatch(pattern, text)
            if match:
                try:
                    return make(match)
                except ValueError:
                    break   # a number that does not parse ('0.1.2')
        raise ValueError(f"unknown teacher variant {whole!r}; expected MLL, MCMI, MCMI_lam<lambda>, ES<epochs>, "
                         f"ENT<beta>, LS<eps> or LSKL<eps>w<weight>, each but MCMI optionally with "
                         f"_lab<count>s<seed>")

    @property
    def is_early_stop(self) -> bool:
        return self.es_epochs is not None

    @property
    def is_finetuned(self) -> bool:
        """Fine-tuned from an MLL teacher with the MCMI recipe (a grid teacher or a regularised one)."""
        return self.lam is not None or self.kind in (ENTROPY, LABEL_SMOOTHING, LABEL_SMOOTHING_KL)

    @property
    def parent(self) -> str:
        """The variant a fine-tuned teacher starts from: the MLL teacher of the same (labelled) data."""
        if not self.is_finetuned:
            raise ValueError(f"teacher variant {self.kind} is not fine-tuned from another")
        return MLL if self.labeled_count is None else labelled_variant(MLL, self.labeled_count, self.labeled_seed)

    def regularizer(self) -> dict[str, Any]:
        """The objective of a regularised teacher, as ``objectives.regularizer`` builds it (its ``describe()``)."""
        if self.kind == ENTROPY:
            return {"objective": "entropy", "beta": self.beta}
        if self.kind == LABEL_SMOOTHING:
            return {"objective": "label_smoothing", "eps": self.eps}
        if self.kind == LABEL_SMOOTHING_KL:
            return {"objective": "label_smoothing_reverse_kl", "eps": self.eps, "weight": self.weight}
        raise ValueError(f"teacher variant {self.kind} has no regulariser")

    def run_fields(self) -> dict[str, Any]:
        """How the variant appears in a metrics file's ``run`` block (the tables' keys)."""
        fields: dict[str, Any] = {"variant": self.kind}
        for name in ("lam", "es_epochs", "beta", "eps", "labeled_count", "labeled_seed"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        if self.weight is not None:
            fields["ls_weight"] = self.weight
        return fields


# ---------------------------------------------------------------- student settings
def few_shot_setting(alpha_percent: float | str) -> str:
    return f"{_FEW_SHOT_PREFIX}{number_text(alpha_percent)}"


def temperature_setting(temperature: float | str, student_temperature: float | str | None = None) -> str:
    """KD at ``temperature`` for teacher and student ('T4'); with a different ``student_temperature``,
    teacher at ``temperature`` and student at that one ('Tt2_Ts4')."""
    if student_temperature is None or float(student_temperature) == float(temperature):
        return f"{_TEMPERATURE_PREFIX}{number_text(temperature)}"
    return f"Tt{number_text(temperature)}_Ts{number_text(student_temperature)}"


@dataclass(frozen=True)
class Setting:
    """A parsed student setting: ``kind`` is full, fs (``alpha_percent``), T or zs. A T setting has its
    teacher and student temperatures; ``temperature`` is set only when they are equal."""

    kind: str
    alpha_percent: float | None = None
    temperature: float | None = None
    teacher_temperature: float | None = None
    student_temperature: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Setting":
        if text in (FULL, ZERO_SHOT):
            return cls(text)
        if re.fullmatch(f"{_FEW_SHOT_PREFIX}{NUMBER}", text):
            return cls(_FEW_SHOT_PREFIX, alpha_percent=float(text[len(_FEW_SHOT_PREFIX):]))
        if re.fullmatch(f"{_TEMPERATURE_PREFIX}{NUMBER}", text):
            t = float(text[len(_TEMPERATURE_PREFIX):])
            return cls(_TEMPERATURE_PREFIX, temperature=t, teacher_temperature=t, student_temperature=t)
        found = re.fullmatch(_TWO_TEMPERATURES, text)
        if found:
            teacher, student = float(found.group(1)), float(found.group(2))
            if teacher == student:
                raise ValueError(f"student setting {text!r}: equal temperatures are written "
                                 f"{temperature_setting(teacher)!r}")
            return cls(_TEMPERATURE_PREFIX, teacher_temperature=teacher, student_temperature=student)
        raise ValueError(f"unknown student setting {text!r}; expected full, fs<alpha>, T<temperature>, "
                         f"Tt<teacher temperature>_Ts<student temperature> or zs")

    @property
    def is_few_shot(self) -> bool:
        return self.alpha_percent is not None

    @property
    def is_temperature(self) -> bool:
        return self.kind == _TEMPERATURE_PREFIX

    @property
    def is_zero_shot(self) -> bool:
        return self.kind == ZERO_SHOT

    def run_fields(self) -> dict[str, Any]:
        """How the setting appears in a metrics file's ``run`` block."""
        if self.is_few_shot:
            return {"alpha_percent": self.alpha_percent}
        if self.temperature is not None:
            return {"temperature": self.temperature}
        if self.is_temperature:
            return {"temperature_teacher": self.teacher_temperature, "temperature_student": self.student_temperature}
        return {}

