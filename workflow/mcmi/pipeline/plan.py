"""The workflow's plan: the validated config turned into output paths, typed job specs, student
groups and the inputs of every target. The Snakemake rules stay thin and call this one object."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcmi.pipeline.config import (ConfigError, check_config, check_device_here, check_paper_dir, check_path_number,
                                  path_numbers, with_defaults)
from mcmi.pipeline.naming import (FULL, MCMI, MLL, VARIANTS, Setting, Variant, grid_variant, number_text, split_pair,
                                  temperature_setting)
from mcmi.pipeline.paths import Paths
from mcmi.pipeline.resources import Resources, split_to_fit
from mcmi.pipeline.specs import (DataSpec, FewShot, HeadsSpec, ImportSpec, JobSpec, Labelled, MCMISpec, MeasureSpec,
                                 RegularizedSpec, StudentGroupSpec, StudentSpec, SyntheticSpec, TeacherSpec, ZeroShot)
from mcmi.provenance import canonical_json, code_fingerprint, read_json_strict, write_text_atomic
from mcmi.synthetic.task import resolve_config, split_sizes

@dataclass(frozen=True, order=True)
class StudentCell:
    """One student of the tables: a pair, a method, the teacher variant, the setting and a seed."""

    ds: str
    teacher: str
    student: str
    method: str
    variant: str
    setting: str
    seed: int

    @property
    def group_setting(self) -> str:
        """Which students share a job: one per setting, except that a temperature sweep (all on the full
        training set) is one group, kept apart from the 'full' students so that a target needing only
        one of them trains only those."""
        return "T" if Setting.parse(self.setting).is_temperature else self.setting


@dataclass
class StudentGroup:
    """Students trained by one job: same dataset, teacher checkpoint, setting, seed and batch size."""

    name: str
    cells: list[StudentCell] = field(default_factory=list)


# Jobs that run on one process (one GPU) whatever the dataset's ``distributed.processes``: the appendix's
# analyses of a trained teacher (t-SNE, per-class CMI, Eigen-CAM) are one pass over a few thousand images.
SINGLE_PROCESS_KINDS = ("analysis",)


class WorkflowConfig:
    """Validated config (schema defaults applied once) plus everything the rules need."""

    def __init__(self, config: dict[str, Any], repo: Path) -> None:
        self.config = with_defaults(config)
        self.repo = Path(repo)
        self.paths = Paths(self.config["results"])
        self.results = self.paths.results
        self.gpus_per_job = 0 if self.config["device"] == "cpu" else 1
        self.threads = int(self.config["threads"])
        self.resources = Resources(self.config)    # processes, threads, memory and wall time per job
        paper = Path(self.config["paper_dir"])
        self.paper_dir = str(paper if paper.is_absolute() or paper.exists() else self.repo / paper)
        self._groups: list[StudentGroup] | None = None    # planned once, on first use
        self._declared: dict[str, JobSpec] | None = None   # the experiments' own jobs, on first use
        check_config(self.config)
        self._check_experiments()
        if any(name.startswith("table") for name in self.config["experiments"]):
            check_paper_dir(self.paper_dir, self.config["paper_dir"])

    def _declarations(self) -> list[Any]:
        """The table and figure declarations (mcmi.report) whose experiment this config configures."""
        from mcmi.report import all_targets

        return [spec for spec in all_targets() if spec.experiment_key in self.config["experiments"]]

    def _check_experiments(self) -> None:
        """Each configured experiment's checks beyond the schema, from its declaration: the numbers
        that name output paths, then its own ``check`` (once per experiment block)."""
        seen = set()
        for spec in self._declarations():
            if spec.experiment_key in seen:
                continue
            seen.add(spec.experiment_key)
            key, exp = f"experiments.{spec.experiment_key}", self.config["experiments"][spec.experiment_key]
            for name in spec.path_numbers:
                for where, value in path_numbers(exp.get(name), f"{key}.{name}"):
                    check_path_number(value, where)
            if spec.check:
                spec.check(self, exp, key)

    def check_device_here(self) -> None:
        """The config's ``device`` exists on this machine (for jobs that run here, not on a cluster)."""
        check_device_here(self.config["device"])

    # ------------------------------------------------------------------ paths
    def data_ready(self, ds: str) -> str:
        return self.paths.path("data_ready", dataset=ds)

    def teacher_model(self, ds: str, teacher: str, variant: str) -> str:
        return self.paths.path("teacher_model", dataset=ds, teacher=teacher, variant=variant)

    def teacher_metrics(self, ds: str, teacher: str, variant: str) -> str:
        return self.paths.path("teacher_metrics", dataset=ds, teacher=teacher, variant=variant)

    def lambda_star_file(self, ds: str, teacher: str) -> str:
        return self.paths.path("lambda_star", dataset=ds, teacher=teacher)

    def measure(self, ds: str, teacher: str, variant: str, temperature: float | str = 1) -> str:
        return self.paths.path("measure", dataset=ds, teacher=teacher, variant=variant, temp=number_text(temperature))

    def student(self, ds: str, teacher: str, student: str, method: str, variant: str, setting: str,
                seed: int | str) -> str:
        return self.paths.path("student_metrics", dataset=ds, teacher=teacher, student=student, method=method,
                               variant=variant, setting=setting, seed=int(seed))

    def vanilla(self, ds: str, student: str, seed: int | str) -> str:
        return self.paths.path("vanilla_metrics", dataset=ds, student=student, seed=int(seed))

    def hsakd_heads(self, ds: str, teacher: str, variant: str) -> str:
        return self.paths.path("hsakd_heads", dataset=ds, teacher=teacher, variant=variant)

    def synthetic(self, preset: str, dmu: float | str) -> str:
        return self.paths.path("synthetic", preset=preset, dmu=number_text(dmu))

    def path(self, template: str, **values: Any) -> str:
        """Any template of ``pipeline.paths.TEMPLATES`` filled in (numbers written as in names)."""
        return self.paths.path(template, **{k: number_text(v) if isinstance(v, float) else v
                                            for k, v in values.items()})

    # ------------------------------------------------------------------ recipes
    def dataset_spec(self, ds: str) -> dict[str, Any]:
        return copy.deepcopy(self.config["datasets"][ds])

    def recipe(self, ds: str, role: str, model: str) -> dict[str, Any]:
        recipe = copy.deepcopy(self.config["recipes"][self.config["recipe_of"][ds][role]])
        if model in self.config["lr_overrides"]:
            recipe["lr"] = self.config["lr_overrides"][model]
        return recipe

    def batch_size(self, ds: str, role: str, model: str) -> int:
        """A recipe's batch size (the trainer's ``Recipe`` default when the config leaves it out)."""
        from mcmi.train import Recipe

        return Recipe(**self.recipe(ds, role, model)).batch_size

    def mcmi_recipe(self, ds: str, teacher: str) -> dict[str, Any]:
        """Cosine schedule over the MCMI epochs from lr_factor x the teacher's initial lr."""
        base = self.recipe(ds, "teacher", teacher)
        mcmi = self.config["mcmi"]
        return {**base, "epochs": mcmi["epochs"][ds], "schedule": "cosine", "milestones": [],
                "lr": base["lr"] * mcmi["lr_factor"],
                "batch_size": mcmi["batch_size"].get(ds, self.batch_size(ds, "teacher", teacher))}

    def method_hparams(self, method: str, teacher: str, student: str) -> dict[str, Any]:
        hparams = dict(self.config["methods"].get(method, {}))
        hparams.update(self.config["method_pair_overrides"].get(method, {}).get(f"{teacher}->{student}", {}))
        return hparams

    def pretrained(self, ds: str, teacher: str) -> str | None:
        """The config's pretrained source of a teacher: a file, or ``torchvision:<WEIGHTS>``."""
        return self.config["teachers"]["pretrained"].get(ds, {}).get(teacher)

    def pretrained_file(self, ds: str, teacher: str) -> str | None:
        """The file a pretrained teacher is loaded from: the configured file, or torchvision's in the
        hub cache (mcmi.models.pretrained), which a local rule fetches."""
        from mcmi.models.pretrained import is_torchvision, resolve_torchvision

        source = self.pretrained(ds, teacher)
        return str(resolve_torchvision(teacher, source).file) if is_torchvision(source) else source

    def torchvision_weights(self) -> list[Any]:
        """Every distinct torchvision weights file the config's pretrained teachers use."""
        from mcmi.models.pretrained import is_torchvision, resolve_torchvision

        found = {}
        for models in self.config["teachers"]["pretrained"].values():
            for model, source in sorted(models.items()):
                if is_torchvision(source):
                    weights = resolve_torchvision(model, source)
                    found.setdefault(str(weights.file), weights)
        return list(found.values())

    # ------------------------------------------------------------------ job specs
    def job_fields(self, ds: str, seed: int, out_metrics: str, run: dict[str, Any],
                   one_process: bool = False) -> dict[str, Any]:
        """Fields of every training job (dataset, seed, device, metrics file, resume point, run block, and
        the dataset's processes unless ``one_process``: the appendix's looks at a trained teacher)."""
        return {"dataset": self.dataset_spec(ds), "seed": int(seed), "device": self.config["device"],
                "out_metrics": out_metrics, "resume": self.paths.resume(out_metrics), "run": run,
                "distributed": None if one_process else self.resources.distributed_spec(ds)}

    def _numerics(self) -> dict[str, Any]:
        """Training numerics of students (config ``precision``, ``channels_last``, ``compile``)."""
        return {"precision": self.config["precision"], "channels_last": bool(self.config["channels_last"]),
                **self._compiled()}

    def _compiled(self) -> dict[str, Any]:
        """The ``compile`` field of a training job's spec: absent for ``none`` (the eager job's spec)."""
        mode = self.config["compile"]
        return {} if mode == "none" else {"compile": mode}

    @staticmethod
    def variant_run_fields(variant: str) -> dict[str, Any]:
        """How a teacher variant appears in the metrics' run block."""
        return Variant.parse(variant).run_fields()

    def data_spec(self, ds: str) -> DataSpec:
        return DataSpec(dataset=self.dataset_spec(ds), out_metrics=self.data_ready(ds), run={"dataset": ds})

    def teacher_spec(self, ds: str, teacher: str, variant: str) -> TeacherSpec | ImportSpec:
        job = self.job_fields(ds, self.config["teachers"]["seed"], self.teacher_metrics(ds, teacher, variant),
                        {"dataset": ds, "teacher": teacher, **self.variant_run_fields(variant)})
        out_model = self.teacher_model(ds, teacher, variant)
        if variant == MLL and self.pretrained(ds, teacher):
            from mcmi.models.pretrained import is_torchvision

            source = self.pretrained(ds, teacher)
            return ImportSpec(**job, model=teacher, out_model=out_model, checkpoint=self.pretrained_file(ds, teacher),
                              source=source if is_torchvision(source) else None)
        fig2 = self.config["experiments"].get("figure2")
        traces_cmi = variant == MLL and fig2 and fig2["dataset"] == ds and teacher in fig2["teachers"]
        parsed = Variant.parse(variant)
        return TeacherSpec(**job, **self._compiled(), model=teacher, out_model=out_model,
                           recipe=self.recipe(ds, "teacher", teacher),
                           cmi_every=fig2["cmi_every"] if traces_cmi else None,
                           stop_after_epoch=parsed.es_epochs, labelled=self._labelled(parsed))

    @staticmethod
    def _labelled(variant: Variant) -> Labelled | None:
        """The labelled subset a teacher variant is trained on (None: the whole training set)."""
        if variant.labeled_count is None:
            return None
        return Labelled(count=variant.labeled_count, seed=int(variant.labeled_seed or 0))

    def finetune_spec(self, ds: str, teacher: str, variant: str) -> MCMISpec | RegularizedSpec:
        """The job of a teacher fine-tuned from its MLL teacher with the MCMI recipe: a grid teacher
        (``MCMI_lam<λ>``) or a regularised one (``ENT<β>``, ``LS<ε>``, ``LSKL<ε>w<w>``), each possibly of a
        labelled subset (``_lab<count>s<seed>``)."""
        parsed = Variant.parse(variant)
        if not parsed.is_finetuned:
            raise ValueError(f"teacher variant {variant!r} is not fine-tuned from an MLL teacher")
        if parsed.lam is not None:
            return self.mcmi_spec(ds, teacher, number_text(parsed.lam), variant)
        job = self.job_fields(ds, self.config["teachers"]["seed"], self.teacher_metrics(ds, teacher, variant),
                              {"dataset": ds, "teacher": teacher, **parsed.run_fields()})
        return RegularizedSpec(**job, **self._compiled(), model=teacher, out_model=self.teacher_model(ds, teacher, variant),
                               teacher_checkpoint=self.teacher_model(ds, teacher, parsed.parent),
                               objective=parsed.regularizer(), recipe=self.mcmi_recipe(ds, teacher),
                               labelled=self._labelled(parsed))

    def mcmi_spec(self, ds: str, teacher: str, lam: str, variant: str | None = None) -> MCMISpec:
        """MCMI fine-tuning at ``lam`` of the MLL teacher (of ``variant``'s labelled subset, if it has one)."""
        variant = variant or grid_variant(lam)
        parsed = Variant.parse(variant)
        job = self.job_fields(ds, self.config["teachers"]["seed"], self.teacher_metrics(ds, teacher, variant),
                              {"dataset": ds, "teacher": teacher, **parsed.run_fields()})
        return MCMISpec(**job, **self._compiled(), model=teacher, out_model=self.teacher_model(ds, teacher, variant),
                        teacher_checkpoint=self.teacher_model(ds, teacher, parsed.parent), lam=float(lam),
                        recipe=self.mcmi_recipe(ds, teacher), centroid_pass=self.config["mcmi"]["centroid_pass"],
                        labelled=self._labelled(parsed))

    def measure_spec(self, ds: str, teacher: str, variant: str, temp: str) -> MeasureSpec:
        job = self.job_fields(ds, 0, self.measure(ds, teacher, variant, float(temp)),
                        {"dataset": ds, "teacher": teacher, **self.variant_run_fields(variant)})
        return MeasureSpec(**job, model=teacher, checkpoint=self.teacher_model(ds, teacher, variant),
                           temperature=float(temp))

    def student_spec(self, ds: str, teacher: str, student: str, method: str, variant: str, setting: str,
                     seed: int | str) -> StudentSpec:
        out = self.student(ds, teacher, student, method, variant, setting, seed)
        hparams = self.method_hparams(method, teacher, student)
        run = {"dataset": ds, "teacher": teacher, "student": student, "method": method, "seed": int(seed),
               **self.variant_run_fields(variant)}
        from mcmi.distill.kd import KD

        parsed = Setting.parse(setting)
        run.update(parsed.run_fields())
        few_shot = zero_shot = None
        # Settings that take a parameter from an experiment's block: the few-shot subsets' seed (table3),
        # the zero-shot classes (figure4), the KD loss scale at two temperatures (figure8).
        experiments = self.config["experiments"]
        if parsed.is_few_shot:
            few_shot = FewShot(alpha_percent=parsed.alpha_percent, seed=experiments["table3"]["partition_seed"])
        elif parsed.temperature is not None:
            hparams["T"] = parsed.temperature
        elif parsed.is_temperature:
            hparams.update(T_teacher=parsed.teacher_temperature, T_student=parsed.student_temperature,
                           scale=experiments.get("figure8", {}).get("kd_scale", KD.defaults["scale"]))
        elif parsed.is_zero_shot:
            zero_shot = ZeroShot(removed_classes=experiments["figure4"]["removed_classes"])
        labelled = Variant.parse(variant).labeled_count
        if method == "SemiKD" and labelled is not None:      # the labelled images of its teacher's subset
            hparams.update(labeled_count=labelled, labeled_seed=Variant.parse(variant).labeled_seed)
        extra = {"hsakd_teacher_heads": self.hsakd_heads(ds, teacher, variant)} if method == "HSAKD" else None
        return StudentSpec(**self.job_fields(ds, int(seed), out, run), **self._numerics(), student=student,
                           teacher=teacher, teacher_checkpoint=self.teacher_model(ds, teacher, variant),
                           method=method, recipe=self.recipe(ds, "student", student),
                           out_model=str(Path(out).with_name("model.pt")), finished=self.paths.finished(out),
                           few_shot=few_shot, zero_shot=zero_shot, extra=extra, hparams=hparams)

    def kd_setting(self, teacher: str, student: str, t_teacher: float, t_student: float) -> str:
        """The setting of a KD student at teacher temperature ``t_teacher`` and student temperature
        ``t_student``: 'full' -- Table 1's student, the same job -- when these are the temperatures the
        config's KD hyperparameters already give the pair, else 'T<t>' or 'Tt<t_teacher>_Ts<t_student>'."""
        from mcmi.distill.kd import KD

        hparams = {**KD.defaults, **self.method_hparams("KD", teacher, student)}
        common = float(hparams["T"])
        configured = (float(hparams["T_teacher"] if hparams["T_teacher"] is not None else common),
                      float(hparams["T_student"] if hparams["T_student"] is not None else common))
        if (float(t_teacher), float(t_student)) == configured:
            return FULL
        return temperature_setting(t_teacher, t_student)

    def vanilla_spec(self, ds: str, student: str, seed: int | str) -> StudentSpec:
        out = self.vanilla(ds, student, seed)
        run = {"dataset": ds, "student": student, "method": "vanilla", "seed": int(seed)}
        return StudentSpec(**self.job_fields(ds, int(seed), out, run), **self._numerics(), student=student,
                           method="vanilla", recipe=self.recipe(ds, "student", student),
                           out_model=str(Path(out).with_name("model.pt")),
                           hparams=dict(self.config["methods"].get("vanilla", {})))

    def hsakd_heads_spec(self, ds: str, teacher: str, variant: str) -> HeadsSpec:
        out = self.paths.path("hsakd_heads_metrics", dataset=ds, teacher=teacher, variant=variant)
        job = self.job_fields(ds, self.config["teachers"]["seed"], out,
                        {"dataset": ds, "teacher": teacher, **self.variant_run_fields(variant)})
        return HeadsSpec(**job, **self._compiled(), model=teacher, checkpoint=self.teacher_model(ds, teacher, variant),
                         out_model=self.hsakd_heads(ds, teacher, variant), recipe=self.recipe(ds, "teacher", teacher),
                         hparams=dict(self.config["methods"].get("HSAKD", {})))

    @property
    def synthetic_threads(self) -> int:
        """Threads of one synthetic job (its config's ``threads``; 1 lets jobs of several delta_mu share a CPU)."""
        return int(self.config["experiments"].get("table5", {}).get("synthetic", {}).get("threads", 1))

    @property
    def synthetic_presets(self) -> list[str]:
        """The presets Table 5 runs (``experiments.table5.presets``, default in the schema)."""
        return list(self.config["experiments"].get("table5", {}).get("presets", []))

    def synthetic_priority(self, preset: str) -> int:
        """Scheduling priority of a synthetic job: its training points times epochs, in units of 10^5, so the
        long jobs start first and the short ones fill the cores at the end (90 for ``as_written``, 5 for
        ``authors_code`` at the paper's scale)."""
        cfg = resolve_config(self.config["experiments"]["table5"]["synthetic"], preset)
        train_points = split_sizes(cfg["num_points"], cfg["split"])[0]
        return max(1, train_points * cfg["epochs"] // 100_000)

    def synthetic_spec(self, preset: str, dmu: str) -> SyntheticSpec:
        """The job spec of one synthetic run; a function of the wildcards only (Snakemake sees its changes)."""
        return SyntheticSpec(synthetic=dict(self.config["experiments"]["table5"]["synthetic"]), preset=preset,
                             delta_mu=float(dmu), out_metrics=self.synthetic(preset, dmu))

    def teacher_inputs(self, ds: str, teacher: str, variant: str) -> dict[str, str]:
        """A teacher job needs its data; an imported (pretrained) one also its checkpoint file, so
        replacing that file reruns the import and everything downstream."""
        from mcmi.models.pretrained import is_torchvision, resolve_torchvision

        inputs = {"ready": self.data_ready(ds)}
        source = self.pretrained(ds, teacher) if variant == MLL else None
        if is_torchvision(source):     # fetched and checked by the local rule pretrained_weights
            inputs["weights"] = self.paths.path("pretrained_weights", weights=resolve_torchvision(teacher, source).key)
        elif source:
            inputs["checkpoint"] = source
        return inputs

    def weights_of(self, key: str) -> Any:
        """The torchvision weights named ``key`` (``<enum>.<name>``) among the config's pretrained teachers."""
        for weights in self.torchvision_weights():
            if weights.key == key:
                return weights
        raise ConfigError(f"teachers.pretrained: no torchvision weights {key!r} configured")

    # ------------------------------------------------------------------ grouped student jobs
    def student_cells(self) -> list[StudentCell]:
        """Every distilled student some target needs: the tables' and figures' inputs, and the
        lambda-selection students of each teacher whose MCMI (lambda*) version is used."""
        paths = [p for outputs in self._target_inputs() for p in outputs]
        cells = {cell for p in paths if (cell := self._cell(p)) is not None}
        mcmi_teachers = set()
        for p in paths:
            for name in ("teacher_metrics", "teacher_model", "measure"):
                found = self.paths.parse(name, p)
                if found and found["variant"] == MCMI:
                    mcmi_teachers.add((found["dataset"], found["teacher"]))
        mcmi_teachers |= {(c.ds, c.teacher) for c in cells if c.variant == MCMI}
        for job in self.declared_jobs().values():          # an experiment's own job reading the lambda* teacher
            for read in job.input_files().values():
                found = self.paths.parse("teacher_model", read)
                if found and found["variant"] == MCMI:
                    mcmi_teachers.add((found["dataset"], found["teacher"]))
        if self.selection_mode() == "paper":      # refused here, while planning, not by an input function
            for ds, teacher in sorted(mcmi_teachers):
                self.paper_lambda_star(ds, teacher)
        if self.selection_mode() == "select":
            for ds, teacher in sorted(mcmi_teachers):
                cells |= {self._cell(p) for p in self.selection_inputs(ds, teacher)}
        return sorted(cells)

    def _target_inputs(self) -> list[list[str]]:
        return [self.target_inputs(target) for target in self.targets()]

    def _cell(self, path: str) -> StudentCell | None:
        m = self.paths.parse("student_metrics", path)
        if m is None:
            return None
        return StudentCell(m["dataset"], m["teacher"], m["student"], m["method"], m["variant"], m["setting"],
                           int(m["seed"]))

    def student_groups(self) -> list[StudentGroup]:
        """The student jobs: cells that share (dataset, teacher checkpoint, setting, seed, batch size) --
        and the student model too when ``student_groups.by`` is 'pair' -- in chunks of at most
        ``student_groups.max_students``, and of at most ``walltime.max_job_hours`` (a chunk that would ask
        for more is split into balanced parts); 'none' makes every student a job of its own."""
        if self._groups is not None:
            return self._groups
        options = self.config["student_groups"]
        by, limit = options["by"], int(options["max_students"]) or None
        grouped: dict[tuple, list[StudentCell]] = {}
        for cell in self.student_cells():
            batch = self.batch_size(cell.ds, "student", cell.student)
            key = (cell.ds, cell.teacher, cell.variant, cell.group_setting, cell.seed, batch,
                   cell.student if by == "pair" else "all", cell if by == "none" else None)
            grouped.setdefault(key, []).append(cell)
        groups = []
        for key, cells in grouped.items():
            ds, teacher, variant, setting, seed, _, student, single = key
            base = (f"students_{ds}_{teacher}_{student}_{variant}_{setting}_seed{seed}" if single is None else
                    f"student_{ds}_{teacher}_{single.student}_{single.method}_{variant}_{single.setting}_seed{seed}")
            base = re.sub(r"[^A-Za-z0-9_]", "_", base.replace("+", "plus"))
            chunks = [cells[i:i + limit] for i in range(0, len(cells), limit)] if limit else [cells]
            chunks = [part for chunk in chunks for part in self._fit_wall_time(chunk)]
            for k, chunk in enumerate(chunks):
                groups.append(StudentGroup(f"{base}_part{k + 1}" if len(chunks) > 1 else base, chunk))
        self._groups = groups
        return groups

    def _group_minutes(self, cells: list[StudentCell]) -> tuple[float, int]:
        """GPU-minutes of a group of cells on one GPU, and the minutes it would ask for."""
        first = cells[0]
        epochs = max(self.recipe(c.ds, "student", c.student)["epochs"] for c in cells)
        teacher = first.teacher if first.method != "vanilla" else None
        gpu = self.resources.group_gpu_minutes(first.ds, teacher, [(c.student, c.method) for c in cells], epochs)
        return gpu, self.resources.minutes(first.ds, gpu)

    def _fit_wall_time(self, cells: list[StudentCell]) -> list[list[StudentCell]]:
        """``cells`` split so that no part asks for more than ``walltime.max_job_hours``; a student that
        cannot fit alone fails planning saying what to change."""
        parts = split_to_fit(cells, lambda part: self._group_minutes(part)[1], self.resources.limit_minutes())
        for part in parts:
            self.resources.checked(f"the student job of {part[0]}", part[0].ds, self._group_minutes(part)[0])
        return parts

    def group_outputs(self, group: StudentGroup) -> list[str]:
        out = []
        for c in group.cells:
            metrics = self.student(c.ds, c.teacher, c.student, c.method, c.variant, c.setting, c.seed)
            out += [metrics, str(Path(metrics).with_name("model.pt"))]
        return out

    def group_inputs(self, group: StudentGroup) -> dict[str, str]:
        first = group.cells[0]
        inputs = {"ready": self.data_ready(first.ds),
                  "teacher": self.teacher_model(first.ds, first.teacher, first.variant)}
        if any(c.method == "HSAKD" for c in group.cells):
            inputs["heads"] = self.hsakd_heads(first.ds, first.teacher, first.variant)
        return inputs

    def group_spec(self, group: StudentGroup) -> StudentGroupSpec:
        return StudentGroupSpec(members=tuple(
            self.student_spec(c.ds, c.teacher, c.student, c.method, c.variant, c.setting, c.seed)
            for c in group.cells))

    def group_resources(self, group: StudentGroup) -> dict[str, int]:
        """Scheduler resources of a group: its GPUs (one per process), memory growing with its number of
        students, and the wall time of its students' epochs (mcmi.pipeline.resources)."""
        first = group.cells[0]
        return {"mem_mb": self.resources.mem_mb(first.ds, len(group.cells)),
                "runtime": self._group_minutes(group.cells)[1], "gpu": self.resources.gpus(first.ds)}

    def group_threads(self, group: StudentGroup) -> int:
        return self.resources.threads(group.cells[0].ds)

    # ------------------------------------------------------------------ lambda*
    def selection_mode(self) -> str:
        return self.config["mcmi"]["lambda_selection"]["mode"]

    def selection_inputs(self, ds: str, teacher: str) -> list[str]:
        sel = self.config["mcmi"]["lambda_selection"]
        student = sel["student_of"].get(teacher)
        if student is None:
            raise ConfigError(f"mcmi.lambda_selection.student_of.{teacher}: no student named for lambda selection")
        return [self.student(ds, teacher, student, sel["method"], grid_variant(lam), "full", s)
                for lam in self.config["mcmi"]["lambda_grid"][ds] for s in sel["seeds"]]

    def paper_lambda_star(self, ds: str, teacher: str) -> float:
        try:
            return float(self.config["mcmi"]["paper_lambda_star"][ds][teacher])
        except KeyError:
            raise ConfigError(f"mcmi.paper_lambda_star.{ds}.{teacher}: needed because "
                              f"mcmi.lambda_selection.mode is 'paper'") from None

    def selected_teacher_inputs(self, ds: str, teacher: str) -> dict[str, Any]:
        """What the lambda* teacher is copied from: the grid teachers (their models and metrics, in
        grid order) and, in select mode, the selection file; in paper mode only the grid teacher at
        the paper's lambda*."""
        grid = ([self.paper_lambda_star(ds, teacher)] if self.selection_mode() == "paper"
                else self.config["mcmi"]["lambda_grid"][ds])
        inputs: dict[str, Any] = {
            "models": [self.teacher_model(ds, teacher, grid_variant(lam)) for lam in grid],
            "metrics": [self.teacher_metrics(ds, teacher, grid_variant(lam)) for lam in grid]}
        if self.selection_mode() == "select":
            inputs["selection"] = self.lambda_star_file(ds, teacher)
        return inputs

    def selected_teacher_choice(self, ds: str, teacher: str) -> str:
        """The choice argument of ``mcmi adopt-teacher``: the selection file, or the paper's lambda*."""
        if self.selection_mode() == "paper":
            return f"--lam {number_text(self.paper_lambda_star(ds, teacher))}"
        return f"--selection {self.lambda_star_file(ds, teacher)}"

    # ------------------------------------------------------------------ per-target inputs
    def experiment(self, name: str) -> dict[str, Any]:
        """The config of experiment ``name``; a ConfigError when it is not configured."""
        if name not in self.config["experiments"]:
            raise ConfigError(f"experiments.{name}: not configured, so its target cannot be built")
        return self.config["experiments"][name]

    def seeds(self, exp: dict[str, Any]) -> list[int]:
        """An experiment's seeds, else the config's top-level ``seeds``."""
        return exp.get("seeds", self.config["seeds"])

    def students_and_teachers(self, exp: dict[str, Any], variants: tuple[str, ...] = VARIANTS) -> list[str]:
        """Each pair's teacher measurements and its students of every method, variant and seed."""
        ds, seeds = exp["dataset"], self.seeds(exp)
        paths = []
        for pair in exp["pairs"]:
            teacher, student = split_pair(pair)
            paths += [self.measure(ds, teacher, v) for v in variants]
            paths += [self.student(ds, teacher, student, m, v, "full", s)
                      for m in exp["methods"] for v in variants for s in seeds]
        return paths

    def table_inputs(self, n: int | str) -> list[str]:
        """The metrics files of table ``n`` (an id of ``mcmi.report.TABLES``; 1 and "1" are the same)."""
        from mcmi.report import TABLES

        return TABLES[n].input_files(self)

    def figure_inputs(self, n: int | str) -> list[str]:
        """The metrics files of figure ``n`` (an id of ``mcmi.report.FIGURES``)."""
        from mcmi.report import FIGURES

        return FIGURES[n].input_files(self)

    def targets(self) -> dict[str, list[str]]:
        """Each named target (a table or figure of ``mcmi.report``) that the config defines, with its outputs."""
        return {spec.target: spec.outputs(self.results) for spec in self._declarations()}

    def target_inputs(self, target: str) -> list[str]:
        """The input files of a named target ('table3', 'table1x', 'figure2', ...)."""
        from mcmi.report import all_targets

        specs = {spec.target: spec for spec in all_targets()}
        if target not in specs:
            raise ConfigError(f"no target {target!r}; known: {list(specs)}")
        return specs[target].input_files(self)

    # ------------------------------------------------------------------ the experiments' own jobs
    def declared_jobs(self) -> dict[str, JobSpec]:
        """The jobs that configured experiments define themselves (a declaration's ``jobs``: t-SNE,
        per-class CMI, Eigen-CAM), by the metrics file each writes; two experiments that plan one file
        must plan the same spec for it."""
        if self._declared is None:
            declared: dict[str, JobSpec] = {}
            for spec in self._declarations():
                for job in spec.job_specs(self):
                    earlier = declared.setdefault(job.out_metrics, job)
                    if earlier != job:
                        raise ConfigError(f"experiments.{spec.experiment_key}: plans {job.out_metrics} with another "
                                          f"job spec than another experiment does; give them the same settings")
            self._declared = declared
        return self._declared

    def declared_spec(self, path: str) -> JobSpec:
        """The spec of the declared job writing ``path`` (a rule's params); ConfigError when none plans it."""
        found = self.declared_jobs().get(str(path))
        if found is None:
            raise ConfigError(f"no configured experiment plans a job writing {path}")
        return found

    # ------------------------------------------------------------------ what made an output
    def planned_spec(self, path: str) -> JobSpec | None:
        """The job spec this config plans for the job writing metrics file ``path``; ``None`` for a
        file no job spec describes (lambda* selections), or an adopted MCMI teacher whose lambda* is
        not chosen yet. The tables compare it with the spec a file records (stale results)."""
        if str(path) in self.declared_jobs():
            return self.declared_jobs()[str(path)]
        p = self.paths
        if m := p.parse("student_metrics", path):
            return self.student_spec(m["dataset"], m["teacher"], m["student"], m["method"], m["variant"],
                                     m["setting"], m["seed"])
        if m := p.parse("vanilla_metrics", path):
            return self.vanilla_spec(m["dataset"], m["student"], m["seed"])
        if m := p.parse("teacher_metrics", path):
            variant = Variant.parse(m["variant"])
            if variant.is_finetuned:
                return self.finetune_spec(m["dataset"], m["teacher"], m["variant"])
            if variant.kind != MCMI:
                return self.teacher_spec(m["dataset"], m["teacher"], m["variant"])
            lam = self.adopted_lambda(m["dataset"], m["teacher"])
            return None if lam is None else self.mcmi_spec(m["dataset"], m["teacher"], number_text(lam))
        if m := p.parse("measure", path):
            return self.measure_spec(m["dataset"], m["teacher"], m["variant"], m["temp"])
        if m := p.parse("hsakd_heads_metrics", path):
            return self.hsakd_heads_spec(m["dataset"], m["teacher"], m["variant"])
        if m := p.parse("synthetic", path):
            return self.synthetic_spec(m["preset"], m["dmu"])
        if m := p.parse("data_ready", path):
            return self.data_spec(m["dataset"])
        return None

    def adopted_lambda(self, ds: str, teacher: str) -> float | None:
        """lambda* of the MCMI teacher: the paper's value, or the one the selection file records
        (``None`` while it is not chosen)."""
        if self.selection_mode() == "paper":
            return self.paper_lambda_star(ds, teacher)
        selection = Path(self.lambda_star_file(ds, teacher))
        return float(read_json_strict(selection)["final"]["lambda_star"]) if selection.is_file() else None

    def rule_of(self, path: str) -> str:
        """The name of the rule whose job writes ``path`` (for the rebuild hint of a stale file)."""
        if cell := self._cell(path):
            return next((g.name for g in self.student_groups() if cell in g.cells), "students")
        if str(path) in self.declared_jobs():
            return self.declared_jobs()[str(path)].STAGE       # each declared stage's rule is named after it
        for template, rule in (("vanilla_metrics", "student_vanilla"), ("measure", "measure"),
                               ("hsakd_heads_metrics", "hsakd_heads"), ("synthetic", "synthetic"),
                               ("data_ready", "prepare_data")):
            if self.paths.parse(template, path):
                return rule
        if m := self.paths.parse("teacher_metrics", path):
            variant = Variant.parse(m["variant"])
            return "mcmi_finetune" if variant.is_finetuned else "mcmi_selected" if variant.kind == MCMI else "teacher"
        return "?"

    def plan_config_file(self) -> str:
        """The config the results folder was last planned with (canonical JSON; every table and
        figure depends on it, so a config change re-checks them even without Snakemake's metadata)."""
        return self.paths.path("plan_config")

    def record_plan_config(self, create: bool = False) -> str:
        """Rewrite :meth:`plan_config_file` when its content differs from this config, so its time stamp
        changes only with the config; a missing file is written only with ``create`` (the workflow's
        ``plan_config`` job: reading a config never creates the results folder). Returns its path."""
        return _record_stamp(Path(self.plan_config_file()), canonical_json(self.config) + "\n", create)

    def code_stamp_file(self) -> str:
        """The package code the results folder's tables and figures were last planned with (its
        fingerprint): every table and figure depends on it, so a code change rebuilds them -- a report
        fix shows, and each table says which of its results other code produced (mcmi.report.origin)."""
        return self.paths.path("code_stamp")

    def record_code_stamp(self, create: bool = False) -> str:
        """:meth:`code_stamp_file` rewritten when the package's code changed (as :meth:`record_plan_config`)."""
        text = canonical_json({"package_code": code_fingerprint()}) + "\n"
        return _record_stamp(Path(self.code_stamp_file()), text, create)

    # ------------------------------------------------------------------ resources
    def mem_mb(self, ds: str) -> int:
        """Host memory of a (single-student) job on ``ds``."""
        return self.resources.mem_mb(ds)

    def job_threads(self, ds: str) -> int:
        """CPU threads of a job on ``ds``: per process times its processes."""
        return self.resources.threads(ds)

    def job_resources(self, kind: str, ds: str, model: str, variant: str = MLL) -> dict[str, int]:
        """mem_mb, runtime (minutes, from the stated epoch costs) and gpu of a teacher, import, measure,
        mcmi, hsakd_heads or (teacher-free) student job; a job that cannot fit in
        ``walltime.max_job_hours`` fails planning naming what to change."""
        r = self.resources
        if kind == "student":
            gpu_minutes = r.group_gpu_minutes(ds, None, [(model, "vanilla")], self.recipe(ds, "student", model)["epochs"])
        elif kind == "teacher" and variant == MLL and self.pretrained(ds, model):
            gpu_minutes = r.job_gpu_minutes("import", ds, model)
        elif kind == "teacher":
            spec = self.teacher_spec(ds, model, variant)
            epochs = spec.stop_after_epoch or spec.recipe["epochs"]
            gpu_minutes = r.job_gpu_minutes("teacher", ds, model, epochs, epochs // spec.cmi_every if spec.cmi_every else 0)
        elif kind == "mcmi":
            gpu_minutes = r.job_gpu_minutes("mcmi", ds, model, self.mcmi_recipe(ds, model)["epochs"])
        elif kind == "hsakd_heads":
            gpu_minutes = r.job_gpu_minutes("hsakd_heads", ds, model, self.recipe(ds, "teacher", model)["epochs"])
        else:
            gpu_minutes = r.job_gpu_minutes(kind, ds, model)
        processes = 1 if kind in SINGLE_PROCESS_KINDS else None
        return {"mem_mb": r.mem_mb(ds, processes=processes), "gpu": r.gpus(ds, processes),
                "runtime": r.checked(f"the {kind} job of {model} on {ds}", ds, gpu_minutes, processes)}


def _record_stamp(path: Path, text: str, create: bool) -> str:
    """Write ``text`` to ``path`` when it differs from the file's content (only if the file exists,
    unless ``create``), so the file's time stamp changes only with its content. Returns its path."""
    if (create or path.is_file()) and (not path.is_file() or path.read_text() != text):
        write_text_atomic(path, text)
    return str(path)
