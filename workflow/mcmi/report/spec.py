"""What a table or a figure is: one declaration (``TableSpec``, ``FigureSpec``) in an ordered ``Registry``.

A declaration is the one home of an experiment: which config block it reads (``experiment``, default its
target), what that block must satisfy beyond the schema (``check``, ``path_numbers``), which metrics files
it needs (``inputs``: paths that the workflow's generic rules make -- teachers, fine-tunes, measurements,
students -- from the path alone), the jobs only it defines (``jobs``: typed job specs of its own stages,
such as a t-SNE or Eigen-CAM job, whose parameters come from its block), what it writes, and how. The
CLI, the workflow's targets, inputs and job specs and the docs take everything from the registries, so a
new table or figure is one declaration plus its schema entry and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    import pandas as pd

    from mcmi.pipeline.specs import JobSpec

    from mcmi.report.records import MetricsRecord
    from mcmi.report.render import Layout

Experiment = dict[str, Any]


class ConfigView(Protocol):
    """The part of the workflow's config (``WorkflowConfig``) that declarations may use to list inputs."""

    results: str
    config: dict[str, Any]
    synthetic_presets: list[str]

    def experiment(self, name: str) -> Experiment: ...
    def seeds(self, exp: Experiment) -> list[int]: ...
    def students_and_teachers(self, exp: Experiment, variants: tuple[str, ...] = ...) -> list[str]: ...
    def student(self, ds: str, teacher: str, student: str, method: str, variant: str, setting: str,
                seed: int) -> str: ...
    def vanilla(self, ds: str, student: str, seed: int) -> str: ...
    def measure(self, ds: str, teacher: str, variant: str, temperature: float = ...) -> str: ...
    def teacher_metrics(self, ds: str, teacher: str, variant: str) -> str: ...
    def lambda_star_file(self, ds: str, teacher: str) -> str: ...
    def synthetic(self, preset: str, dmu: float | str) -> str: ...
    def path(self, template: str, **values: Any) -> str: ...
    def teacher_model(self, ds: str, teacher: str, variant: str) -> str: ...
    def job_fields(self, ds: str, seed: int, out_metrics: str, run: dict[str, Any]) -> dict[str, Any]: ...
    def kd_setting(self, teacher: str, student: str, t_teacher: float, t_student: float) -> str: ...
    def recipe(self, ds: str, role: str, model: str) -> dict[str, Any]: ...


# inputs(w, exp): the metrics files of one target, given the config and the target's experiment block
ListInputs = Callable[[ConfigView, Experiment], list[str]]
# jobs(w, exp): the typed specs of the jobs only this experiment defines (their out_metrics are inputs too)
ListJobs = Callable[[ConfigView, Experiment], "list[JobSpec]"]
# check(w, exp, key): what the block must satisfy beyond the schema; a ConfigError naming ``key``.sub-key
CheckExperiment = Callable[[ConfigView, Experiment, str], None]


@dataclass(frozen=True, kw_only=True)
class Planning:
    """How a declaration plans its jobs and checks its block (the part shared by tables and figures)."""

    experiment: str | None = None            # its block under ``experiments`` (default: the target)
    jobs: ListJobs | None = None
    check: CheckExperiment | None = None
    path_numbers: tuple[str, ...] = ()       # keys of the block whose numbers name output paths

    @property
    def experiment_key(self) -> str:
        return self.experiment or self.target  # type: ignore[attr-defined]

    def job_specs(self, w: ConfigView) -> list[JobSpec]:
        """The jobs only this declaration defines; ConfigError when its experiment is not configured."""
        return list(self.jobs(w, w.experiment(self.experiment_key))) if self.jobs else []

    def input_files(self, w: ConfigView) -> list[str]:
        """The metrics files this declaration is made from; ConfigError when its experiment is not configured."""
        exp = w.experiment(self.experiment_key)  # type: ignore[attr-defined]
        own = [job.out_metrics for job in self.job_specs(w)]
        return unique([*self.inputs(w, exp), *own])  # type: ignore[attr-defined]


def unique(paths: Iterable[str]) -> list[str]:
    """``paths`` without repeats, in first-seen order."""
    return list(dict.fromkeys(paths))


@dataclass(frozen=True)
class TableSpec(Planning):
    """One table: its id, text, the paper's files it sits beside, its inputs, rows and layout.

    ``build(records, paper_dir)`` returns the tidy frame (one row per cell); ``layout(frame)`` arranges
    it in sections, rows and columns for the markdown and LaTeX files.
    """

    id: str                                  # "1" ... "8", "1x"; the target and experiment are "table{id}"
    title: str
    caption: str
    paper_files: tuple[str, ...]             # the files of config/paper/ that ``build`` reads
    paper_dataset: str | None                # runs on another dataset are never matched to a paper cell
    inputs: ListInputs
    build: Callable[[list[MetricsRecord], str], pd.DataFrame]
    layout: Callable[[pd.DataFrame], Layout]
    paper_citation: str | None = None        # how the markdown cites the paper files (default: their names)

    @property
    def target(self) -> str:
        """The Snakemake target, which is also the config's key under ``experiments``."""
        return f"table{self.id}"

    @property
    def cites(self) -> str:
        return self.paper_citation or ", ".join(self.paper_files)

    def outputs(self, results: str) -> list[str]:
        from mcmi.pipeline.paths import Paths
        from mcmi.report.render import TABLE_EXTENSIONS

        return [Paths(results).path("table", n=self.id, ext=ext) for ext in TABLE_EXTENSIONS]


@dataclass(frozen=True)
class FigureSpec(Planning):
    """One figure: its number, caption, inputs and ``draw(records, out_prefix, paper_dir)`` (writes .pdf
    and .png; ``paper_dir`` holds the published numbers a figure prints beside its own, ``paper_files``).
    Runs on another dataset than ``paper_dataset`` are drawn with the tables' tag ('resnet14 [digits]')."""

    id: int
    caption: str
    inputs: ListInputs
    draw: Callable[[list[MetricsRecord], str, str], None]
    paper_dataset: str | None = None
    paper_files: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        """The Snakemake target; also the config's key under ``experiments`` unless ``experiment`` names another."""
        return f"figure{self.id}"

    def outputs(self, results: str) -> list[str]:
        from mcmi.pipeline.paths import Paths

        return [Paths(results).path("figure", n=self.id, ext=ext) for ext in ("pdf", "png")]


Spec = TypeVar("Spec", TableSpec, FigureSpec)


class Registry(Generic[Spec]):
    """Declarations in target order, looked up by id; ``normalise`` reads an id given otherwise (1 -> "1")."""

    def __init__(self, kind: str, specs: Iterable[Spec], normalise: Callable[[Any], Hashable]) -> None:
        self.kind = kind
        self._normalise = normalise
        self._specs: dict[Hashable, Spec] = {}
        for spec in specs:
            if spec.id in self._specs:
                raise ValueError(f"{kind} {spec.id} is declared twice")
            self._specs[spec.id] = spec

    @property
    def ids(self) -> list[Any]:
        return list(self._specs)

    def __getitem__(self, n: Any) -> Spec:
        try:
            return self._specs[self._normalise(n)]
        except (KeyError, ValueError):
            raise ValueError(f"no {self.kind} {n}; known {self.kind}s: {self.ids}") from None

    def __iter__(self) -> Iterator[Spec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)
