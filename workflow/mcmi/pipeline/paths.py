"""Every output path of the workflow, as one table of templates under the results folder.

The rules take their ``output:`` patterns from :meth:`Paths.pattern` (wildcards left in) and the
workflow's input functions fill the same templates with :meth:`Paths.path`, so a path is written once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mcmi.pipeline.naming import WILDCARDS

_TEACHER = "{dataset}/teachers/{teacher}/{variant}"
_STUDENT = "{dataset}/students/{teacher}-{student}/{method}/{variant}/{setting}/seed{seed}"
_VANILLA = "{dataset}/students/vanilla/{student}/seed{seed}"

TEMPLATES: dict[str, str] = {
    "data_ready": "data/{dataset}.json",
    "plan_config": "config.json",
    "code_stamp": "code.json",
    "teacher_model": f"{_TEACHER}/model.pt",
    "teacher_metrics": f"{_TEACHER}/metrics.json",
    "hsakd_heads": f"{_TEACHER}/hsakd_heads.pt",
    "hsakd_heads_metrics": f"{_TEACHER}/hsakd_heads.json",
    "lambda_star": "{dataset}/teachers/{teacher}/lambda_star.json",
    "measure": "{dataset}/measure/{teacher}/{variant}/T{temp}.json",
    "class_cmi": "{dataset}/measure/{teacher}/{variant}/classes.json",
    "embedding": "{dataset}/analysis/{teacher}/{variant}/tsne.json",
    "cam": "{dataset}/analysis/{teacher}/{variant}/eigen_cam.json",
    "cam_maps": "{dataset}/analysis/{teacher}/{variant}/eigen_cam.npz",
    "student_metrics": f"{_STUDENT}/metrics.json",
    "student_model": f"{_STUDENT}/model.pt",
    "vanilla_metrics": f"{_VANILLA}/metrics.json",
    "vanilla_model": f"{_VANILLA}/model.pt",
    "synthetic": "synthetic/{preset}/dmu{dmu}.json",
    "pretrained_weights": "pretrained/{weights}.json",     # torchvision weights checked in the hub cache
    "table": "tables/table{n}.{ext}",
    "figure": "figures/figure{n}.{ext}",
    # logs, one per job
    "log_data": "logs/data/{dataset}.log",
    "log_plan_config": "logs/plan_config.log",
    "log_teacher": "logs/{dataset}/teachers/{teacher}/{variant}.log",
    "log_hsakd_heads": "logs/{dataset}/teachers/{teacher}/{variant}-hsakd_heads.log",
    "log_lambda_star": "logs/{dataset}/teachers/{teacher}/lambda_star.log",
    "log_measure": "logs/{dataset}/measure/{teacher}/{variant}/T{temp}.log",
    "log_class_cmi": "logs/{dataset}/measure/{teacher}/{variant}/classes.log",
    "log_embedding": "logs/{dataset}/analysis/{teacher}/{variant}/tsne.log",
    "log_cam": "logs/{dataset}/analysis/{teacher}/{variant}/eigen_cam.log",
    "log_vanilla": "logs/{dataset}/students/vanilla/{student}/seed{seed}.log",
    "log_student_group": "logs/student_groups/{group}.log",
    "log_synthetic": "logs/synthetic/{preset}/dmu{dmu}.log",
    "log_pretrained_weights": "logs/pretrained/{weights}.log",
    "log_table": "logs/tables/table{n}.log",
    "log_figure": "logs/figures/figure{n}.log",
}
# Private folders beside the results tree (never declared outputs): resume checkpoints and the
# finished students kept for reuse when their group reruns.
RESUME_FOLDER, FINISHED_FOLDER = "_resume", "_finished"


class Paths:
    """The templates of :data:`TEMPLATES` under one results folder."""

    def __init__(self, results: str) -> None:
        self.results = str(results).rstrip("/")

    def pattern(self, name: str, **fixed: Any) -> str:
        """The template ``name`` under the results folder with its wildcards left in (a rule's
        ``output:``/``log:``), except those given in ``fixed``."""
        template = f"{self.results}/{TEMPLATES[name]}"
        return template.format_map(_Partial({k: str(v) for k, v in fixed.items()}))

    def path(self, name: str, **values: Any) -> str:
        """The template ``name`` filled in completely."""
        try:
            return f"{self.results}/{TEMPLATES[name]}".format(**values)
        except KeyError as missing:
            raise KeyError(f"path {name!r} needs {missing} (template {TEMPLATES[name]})") from None

    def parse(self, name: str, path: str) -> dict[str, str] | None:
        """The wildcard values of ``path`` if it is an instance of template ``name``, else None."""
        match = _regex(TEMPLATES[name]).search(path)
        return match.groupdict() if match else None

    def private(self, folder: str, output: str) -> str:
        """``output``'s folder moved under ``{results}/{folder}`` (resume and finished copies)."""
        parent = Path(output).parent
        rel = parent.relative_to(self.results) if output.startswith(self.results) else parent
        return f"{self.results}/{folder}/{rel}"

    def resume(self, output: str) -> str:
        """Resumable checkpoint of the job writing ``output``."""
        return f"{self.private(RESUME_FOLDER, output)}/last.pt"

    def finished(self, output: str) -> str:
        """Where a finished student's files are kept (hard links) for reuse when its group reruns."""
        return self.private(FINISHED_FOLDER, output)


class _Partial(dict):
    """Leaves unknown ``{wildcards}`` in place when formatting a template."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _regex(template: str) -> re.Pattern[str]:
    """A regex matching the end of a path that is an instance of ``template``."""
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for i, part in enumerate(parts):
        out.append(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{WILDCARDS.get(part, '[^/]+')})")
    return re.compile("/" + "".join(out) + "$")
