"""The workflow's view of the config: checks beyond the JSON schema, output paths, job specs and
the inputs of every target. The Snakemake rules stay thin and call this one place."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VARIANTS = ("MLL", "MCMI")


# a student's metrics file: {results}/{dataset}/students/{teacher}-{student}/{method}/{variant}/{setting}/seed{seed}/
_STUDENT_METRICS = re.compile(
    r"/(?P<ds>[a-z0-9_]+)/students/(?P<teacher>[A-Za-z0-9_]+)-(?P<student>[A-Za-z0-9_]+)/(?P<method>[A-Za-z+]+)/"
    r"(?P<variant>[^/]+)/(?P<setting>[^/]+)/seed(?P<seed>[0-9]+)/metrics\.json$")
_MCMI_TEACHER_USE = re.compile(r"/(?P<ds>[a-z0-9_]+)/(?:teachers|measure)/(?P<teacher>[A-Za-z0-9_]+)/MCMI/")


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
        """Which students share a job: one per setting, except that a temperature sweep ('T1', 'T4', ...;
        all on the full training set) is one group, kept apart from the 'full' students so that a
        target needing only one of them trains only those."""
        return "T" if self.setting.startswith("T") else self.setting


@dataclass
class StudentGroup:
    """Students trained by one job: same dataset, teacher checkpoint, setting, seed and batch size."""

    name: str
    cells: list[StudentCell] = field(default_factory=list)


class ConfigError(ValueError):
    """A config value that the schema lets through but the pipeline cannot use; names the key."""


def lam_str(lam: float) -> str:
    """Canonical text of a lambda in paths: 0.15 -> '0.15', 0 -> '0'."""
    return f"{float(lam):g}"


def known_num_classes(dataset: dict[str, Any]) -> int | None:
    """Number of classes of a dataset spec when it is known without loading it."""
    fixed = {"cifar10": 10, "cifar100": 100, "digits": 10, "demo_imagefolder": 10}
    if dataset["kind"] in fixed:
        return fixed[dataset["kind"]]
    train = Path(dataset.get("root", "")) / "train"
    return sum(1 for p in train.iterdir() if p.is_dir()) if train.is_dir() else None


def split_pair(pair: str) -> tuple[str, str]:
    teacher, student = pair.split("->")
    return teacher, student


class WorkflowConfig:
    """Validated config plus the functions the rules need."""

    def __init__(self, config: dict[str, Any], repo: Path) -> None:
        self.config = config
        self.repo = Path(repo)
        self.results = str(config["results"]).rstrip("/")
        self.gpus_per_job = 0 if config.get("device") == "cpu" else 1
        self.threads = int(config.get("threads", 1))
        paper = Path(config["paper_dir"])
        self.paper_dir = str(paper if paper.is_absolute() or paper.exists() else self.repo / paper)
        self._groups: list[StudentGroup] | None = None    # planned once, on first use
        self.check()

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Names, references and ranges the schema cannot check; every error names its key."""
        from mcmi.distill import registry

        cfg, methods = self.config, registry()
        self._check_results_path()
        for name, hparams in cfg["methods"].items():
            if name not in methods:
                raise ConfigError(f"methods.{name}: unknown method; known: {sorted(methods)}")
            self._check_hparams(methods[name], hparams, f"methods.{name}")
        for ds, roles in cfg["recipe_of"].items():
            for role, recipe in roles.items():
                if recipe not in cfg["recipes"]:
                    raise ConfigError(f"recipe_of.{ds}.{role}: no recipe named {recipe!r} in recipes")
        for exp_name, exp in cfg["experiments"].items():
            where = f"experiments.{exp_name}"
            if "dataset" in exp:
                self._check_dataset(exp["dataset"], f"{where}.dataset")
            for i, pair in enumerate(exp.get("pairs", [])):
                for model in split_pair(pair):
                    self._check_model(model, f"{where}.pairs[{i}]", f" in {pair!r}")
            for i, model in enumerate(exp.get("teachers", [])):
                self._check_model(model, f"{where}.teachers[{i}]")
            for i, method in enumerate(exp.get("methods", [])):
                if method not in cfg["methods"]:
                    raise ConfigError(f"{where}.methods[{i}]: method {method!r} has no entry under 'methods'")
        for method, overrides in cfg.get("method_pair_overrides", {}).items():
            if method not in cfg["methods"]:
                raise ConfigError(f"method_pair_overrides.{method}: method not configured under 'methods'")
            for pair, hparams in overrides.items():
                for model in split_pair(pair):
                    self._check_model(model, f"method_pair_overrides.{method}.{pair}")
                self._check_hparams(methods[method], {**cfg["methods"][method], **hparams},
                                    f"method_pair_overrides.{method}.{pair}")
        for model in cfg.get("lr_overrides", {}):
            self._check_model(model, f"lr_overrides.{model}")
        for ds, models in cfg["teachers"].get("pretrained", {}).items():
            if ds not in cfg["datasets"]:
                raise ConfigError(f"teachers.pretrained.{ds}: dataset {ds!r} is not defined under 'datasets'")
            for model, path in models.items():
                self._check_model(model, f"teachers.pretrained.{ds}.{model}")
                if not Path(path).is_file():
                    raise ConfigError(f"teachers.pretrained.{ds}.{model}: checkpoint {path} does not exist")
        for teacher, student in cfg["mcmi"].get("lambda_selection", {}).get("student_of", {}).items():
            self._check_model(teacher, f"mcmi.lambda_selection.student_of.{teacher}")
            self._check_model(student, f"mcmi.lambda_selection.student_of.{teacher}")
        selection_method = cfg["mcmi"].get("lambda_selection", {}).get("method", "KD")
        if selection_method not in cfg["methods"]:
            raise ConfigError(f"mcmi.lambda_selection.method: {selection_method!r} has no entry under 'methods'")
        if "table5" in cfg["experiments"]:
            from mcmi.synthetic import resolve_config

            for preset in self.synthetic_presets:
                try:
                    resolve_config(cfg["experiments"]["table5"].get("synthetic", {}), preset)
                except ValueError as error:
                    raise ConfigError(f"experiments.table5.synthetic (preset {preset}): {error}") from error
        if "table4" in cfg["experiments"]:
            self._check_early_stop(cfg["experiments"]["table4"])
        if "figure4" in cfg["experiments"]:
            self._check_zero_shot(cfg["experiments"]["figure4"])

    def _check_results_path(self) -> None:
        raw = str(self.config["results"]).strip()
        if raw in ("", "/") or Path(raw).resolve() == Path("/"):
            raise ConfigError(f"results: {raw!r} cannot hold the outputs; name a folder such as 'results'")
        if Path(raw).exists() and not Path(raw).is_dir():
            raise ConfigError(f"results: {raw!r} is a file, not a folder")

    @staticmethod
    def _check_model(model: str, key: str, context: str = "") -> None:
        from mcmi.models import MODEL_NAMES

        if model not in MODEL_NAMES:
            raise ConfigError(f"{key}: unknown model {model!r}{context}; known: {sorted(MODEL_NAMES)}")

    @staticmethod
    def _check_hparams(method: Any, hparams: dict[str, Any], key: str) -> None:
        problems = method.check_hparams(hparams)
        if problems:
            raise ConfigError(f"{key}: " + "; ".join(problems))

    def _check_early_stop(self, exp: dict[str, Any]) -> None:
        """An early-stopped teacher must stop before its recipe's last epoch."""
        for teacher, epochs in exp["es_epochs"].items():
            self._check_model(teacher, f"experiments.table4.es_epochs.{teacher}")
            full = self.recipe(exp["dataset"], "teacher", teacher)["epochs"]
            if epochs >= full:
                raise ConfigError(f"experiments.table4.es_epochs.{teacher}: {epochs} is not earlier than the "
                                  f"teacher recipe's {full} epochs")

    def _check_zero_shot(self, exp: dict[str, Any]) -> None:
        removed = exp["removed_classes"]
        if len(set(removed)) != len(removed):
            raise ConfigError("experiments.figure4.removed_classes: repeated class")
        classes = known_num_classes(self.config["datasets"][exp["dataset"]])
        if classes is None:
            return   # an image folder not yet on disk: the job checks when it loads the data
        out_of_range = [c for c in removed if c >= classes]
        if out_of_range:
            raise ConfigError(f"experiments.figure4.removed_classes: {out_of_range} out of range for "
                              f"{exp['dataset']!r}, which has classes 0..{classes - 1}")
        if len(set(removed)) >= classes:
            raise ConfigError(f"experiments.figure4.removed_classes: removes every class of {exp['dataset']!r}; "
                              f"the student would have no training data")

    def _check_dataset(self, name: str, key: str) -> None:
        cfg = self.config
        if name not in cfg["datasets"]:
            raise ConfigError(f"{key}: dataset {name!r} is not defined under 'datasets'")
        if name not in cfg["recipe_of"]:
            raise ConfigError(f"{key}: dataset {name!r} has no entry under 'recipe_of'")
        if name not in cfg["mcmi"]["epochs"]:
            raise ConfigError(f"{key}: dataset {name!r} has no entry under 'mcmi.epochs'")
        if name not in cfg["mcmi"]["lambda_grid"]:
            raise ConfigError(f"{key}: dataset {name!r} has no entry under 'mcmi.lambda_grid'")

    # ------------------------------------------------------------------ paths
    def data_ready(self, ds: str) -> str:
        return f"{self.results}/data/{ds}.json"

    def teacher_dir(self, ds: str, teacher: str, variant: str) -> str:
        return f"{self.results}/{ds}/teachers/{teacher}/{variant}"

    def teacher_model(self, ds: str, teacher: str, variant: str) -> str:
        return f"{self.teacher_dir(ds, teacher, variant)}/model.pt"

    def teacher_metrics(self, ds: str, teacher: str, variant: str) -> str:
        return f"{self.teacher_dir(ds, teacher, variant)}/metrics.json"

    def lambda_star_file(self, ds: str, teacher: str) -> str:
        return f"{self.results}/{ds}/teachers/{teacher}/lambda_star.json"

    def measure(self, ds: str, teacher: str, variant: str, temperature: float = 1) -> str:
        return f"{self.results}/{ds}/measure/{teacher}/{variant}/T{lam_str(temperature)}.json"

    def student(self, ds: str, teacher: str, student: str, method: str, variant: str, setting: str,
                seed: int) -> str:
        return f"{self.results}/{ds}/students/{teacher}-{student}/{method}/{variant}/{setting}/seed{seed}/metrics.json"

    def vanilla(self, ds: str, student: str, seed: int) -> str:
        return f"{self.results}/{ds}/students/vanilla/{student}/seed{seed}/metrics.json"

    def hsakd_heads(self, ds: str, teacher: str, variant: str) -> str:
        return f"{self.teacher_dir(ds, teacher, variant)}/hsakd_heads.pt"

    def synthetic(self, preset: str, dmu: float | str) -> str:
        return f"{self.results}/synthetic/{preset}/dmu{lam_str(dmu)}.json"

    def _private(self, folder: str, output: str) -> str:
        rel = Path(output).parent.relative_to(self.results) if output.startswith(self.results) else Path(output).parent
        return f"{self.results}/{folder}/{rel}"

    def resume(self, output: str) -> str:
        """Resumable checkpoint for a job: beside the results tree, never a declared output."""
        return f"{self._private('_resume', output)}/last.pt"

    def finished(self, output: str) -> str:
        """Where a finished student's files are kept (hard links, no extra space) for reuse when its
        group reruns because another member's spec changed."""
        return self._private("_finished", output)

    # ------------------------------------------------------------------ recipes and specs
    def dataset_spec(self, ds: str) -> dict[str, Any]:
        return copy.deepcopy(self.config["datasets"][ds])

    def recipe(self, ds: str, role: str, model: str) -> dict[str, Any]:
        recipe = copy.deepcopy(self.config["recipes"][self.config["recipe_of"][ds][role]])
        if model in self.config.get("lr_overrides", {}):
            recipe["lr"] = self.config["lr_overrides"][model]
        return recipe

    def mcmi_recipe(self, ds: str, teacher: str) -> dict[str, Any]:
        """Cosine schedule over the MCMI epochs from lr_factor x the teacher's initial lr."""
        base = self.recipe(ds, "teacher", teacher)
        mcmi = self.config["mcmi"]
        return {**base, "epochs": mcmi["epochs"][ds], "schedule": "cosine", "milestones": [],
                "lr": base["lr"] * mcmi.get("lr_factor", 0.2),
                "batch_size": mcmi.get("batch_size", {}).get(ds, base.get("batch_size", 64))}

    def _common(self, ds: str, seed: int, out_metrics: str) -> dict[str, Any]:
        return {"dataset": self.dataset_spec(ds), "seed": int(seed), "device": self.config.get("device", "auto"),
                "out_metrics": out_metrics, "resume": self.resume(out_metrics)}

    def _numerics(self) -> dict[str, Any]:
        """Training numerics of students (config ``precision``, ``channels_last``)."""
        return {"precision": self.config.get("precision", "fp32"),
                "channels_last": bool(self.config.get("channels_last", False))}

    def pretrained(self, ds: str, teacher: str) -> str | None:
        return self.config["teachers"].get("pretrained", {}).get(ds, {}).get(teacher)

    def teacher_spec(self, ds: str, teacher: str, variant: str) -> dict[str, Any]:
        out = self.teacher_metrics(ds, teacher, variant)
        spec = {**self._common(ds, self.config["teachers"].get("seed", 0), out),
                "out_model": self.teacher_model(ds, teacher, variant), "model": teacher,
                "run": {"dataset": ds, "teacher": teacher, **self.variant_run_fields(variant)}}
        if variant == "MLL" and self.pretrained(ds, teacher):
            return {**spec, "stage": "import", "checkpoint": self.pretrained(ds, teacher)}
        spec.update(stage="teacher", recipe=self.recipe(ds, "teacher", teacher))
        fig2 = self.config["experiments"].get("figure2")
        if variant == "MLL" and fig2 and fig2["dataset"] == ds and teacher in fig2["teachers"]:
            spec["cmi_every"] = fig2.get("cmi_every", 1)
        if variant.startswith("ES"):
            spec["stop_after_epoch"] = int(variant[2:])
        return spec

    def mcmi_spec(self, ds: str, teacher: str, lam: str) -> dict[str, Any]:
        variant = f"MCMI_lam{lam}"
        out = self.teacher_metrics(ds, teacher, variant)
        return {**self._common(ds, self.config["teachers"].get("seed", 0), out), "stage": "mcmi",
                "out_model": self.teacher_model(ds, teacher, variant), "model": teacher,
                "teacher_checkpoint": self.teacher_model(ds, teacher, "MLL"), "lam": float(lam),
                "recipe": self.mcmi_recipe(ds, teacher),
                "centroid_pass": self.config["mcmi"].get("centroid_pass", "eval"),
                "run": {"dataset": ds, "teacher": teacher, "variant": "MCMI", "lam": float(lam)}}

    def variant_run_fields(self, variant: str) -> dict[str, Any]:
        """How a teacher variant appears in the metrics' run block."""
        if variant.startswith("MCMI_lam"):
            return {"variant": "MCMI", "lam": float(variant[len("MCMI_lam"):])}
        if variant.startswith("ES"):
            return {"variant": "ES", "es_epochs": int(variant[2:])}
        return {"variant": variant}

    def measure_spec(self, ds: str, teacher: str, variant: str, temp: str) -> dict[str, Any]:
        out = self.measure(ds, teacher, variant, float(temp))
        return {**self._common(ds, 0, out), "stage": "measure", "model": teacher,
                "checkpoint": self.teacher_model(ds, teacher, variant), "temperature": float(temp),
                "run": {"dataset": ds, "teacher": teacher, **self.variant_run_fields(variant)}}

    def method_hparams(self, method: str, teacher: str, student: str) -> dict[str, Any]:
        hparams = dict(self.config["methods"].get(method, {}))
        hparams.update(self.config.get("method_pair_overrides", {}).get(method, {}).get(f"{teacher}->{student}", {}))
        return hparams

    def student_spec(self, ds: str, teacher: str, student: str, method: str, variant: str, setting: str,
                     seed: str) -> dict[str, Any]:
        out = self.student(ds, teacher, student, method, variant, setting, int(seed))
        hparams = self.method_hparams(method, teacher, student)
        run = {"dataset": ds, "teacher": teacher, "student": student, "method": method, "seed": int(seed),
               **self.variant_run_fields(variant)}
        spec = {**self._common(ds, int(seed), out), **self._numerics(), "stage": "student", "student": student,
                "teacher": teacher,
                "teacher_checkpoint": self.teacher_model(ds, teacher, variant), "method": method,
                "recipe": self.recipe(ds, "student", student), "out_model": str(Path(out).with_name("model.pt")),
                "finished": self.finished(out)}
        if setting.startswith("fs"):
            alpha = float(setting[2:])
            exp = self.config["experiments"].get("table3", {})
            spec["few_shot"] = {"alpha_percent": alpha, "seed": exp.get("partition_seed", 0)}
            run["alpha_percent"] = alpha
        elif setting.startswith("T"):
            hparams["T"] = float(setting[1:])
            run["temperature"] = float(setting[1:])
        elif setting == "zs":
            spec["zero_shot"] = {"removed_classes": self.config["experiments"]["figure4"]["removed_classes"]}
        if method == "HSAKD":
            spec["extra"] = {"hsakd_teacher_heads": self.hsakd_heads(ds, teacher, variant)}
        spec["hparams"] = hparams
        spec["run"] = run
        return spec

    def vanilla_spec(self, ds: str, student: str, seed: str) -> dict[str, Any]:
        out = self.vanilla(ds, student, int(seed))
        return {**self._common(ds, int(seed), out), **self._numerics(), "stage": "student", "student": student,
                "method": "vanilla",
                "recipe": self.recipe(ds, "student", student), "out_model": str(Path(out).with_name("model.pt")),
                "hparams": dict(self.config["methods"].get("vanilla", {})),
                "run": {"dataset": ds, "student": student, "method": "vanilla", "seed": int(seed)}}

    def data_spec(self, ds: str) -> dict[str, Any]:
        return {"stage": "prepare_data", "dataset": self.dataset_spec(ds), "seed": 0, "out_metrics": self.data_ready(ds),
                "run": {"dataset": ds}}

    def hsakd_heads_spec(self, ds: str, teacher: str, variant: str) -> dict[str, Any]:
        out = f"{self.teacher_dir(ds, teacher, variant)}/hsakd_heads.json"
        return {**self._common(ds, self.config["teachers"].get("seed", 0), out), "stage": "hsakd_heads",
                "model": teacher, "checkpoint": self.teacher_model(ds, teacher, variant),
                "out_model": self.hsakd_heads(ds, teacher, variant), "recipe": self.recipe(ds, "teacher", teacher),
                "hparams": dict(self.config["methods"].get("HSAKD", {})),
                "run": {"dataset": ds, "teacher": teacher, **self.variant_run_fields(variant)}}

    @property
    def synthetic_threads(self) -> int:
        """Threads of one synthetic job (its config's ``threads``; 1 lets jobs of several delta_mu share a CPU)."""
        return int(self.config["experiments"].get("table5", {}).get("synthetic", {}).get("threads", 1))

    @property
    def synthetic_presets(self) -> list[str]:
        """The presets Table 5 runs (``experiments.table5.presets``; default: as_written only)."""
        from mcmi.synthetic import DEFAULT_PRESET

        return list(self.config["experiments"].get("table5", {}).get("presets", [DEFAULT_PRESET]))

    def synthetic_spec(self, preset: str, dmu: str) -> dict[str, Any]:
        """The job spec of one synthetic run; a function of the wildcards only (Snakemake sees its changes)."""
        return {"stage": "synthetic", "synthetic": dict(self.config["experiments"]["table5"].get("synthetic", {})),
                "preset": preset, "delta_mu": float(dmu), "seed": None, "out_metrics": self.synthetic(preset, dmu)}

    def teacher_inputs(self, ds: str, teacher: str, variant: str) -> dict[str, str]:
        """A teacher job needs its data; an imported (pretrained) one also its checkpoint file, so
        replacing that file reruns the import and everything downstream."""
        inputs = {"ready": self.data_ready(ds)}
        if variant == "MLL" and self.pretrained(ds, teacher):
            inputs["checkpoint"] = self.pretrained(ds, teacher)
        return inputs

    # ------------------------------------------------------------------ grouped student jobs
    def student_cells(self) -> list[StudentCell]:
        """Every distilled student some target needs: the tables' and figures' inputs, and the
        lambda-selection students of each teacher whose MCMI (lambda*) version is used."""
        paths = [p for outputs in self._target_inputs() for p in outputs]
        cells = {self._cell(p) for p in paths if _STUDENT_METRICS.search(p)}
        mcmi_teachers = {(m["ds"], m["teacher"]) for p in paths for m in [_MCMI_TEACHER_USE.search(p)] if m}
        mcmi_teachers |= {(c.ds, c.teacher) for c in cells if c.variant == "MCMI"}
        if self.selection_mode() == "select":
            for ds, teacher in sorted(mcmi_teachers):
                cells |= {self._cell(p) for p in self.selection_inputs(ds, teacher)}
        return sorted(cells)

    def _target_inputs(self) -> list[list[str]]:
        found = []
        for target in self.targets():
            kind, number = re.fullmatch(r"(table|figure)(\w+)", target).groups()
            found.append(self.table_inputs(number) if kind == "table" else self.figure_inputs(int(number)))
        return found

    @staticmethod
    def _cell(path: str) -> StudentCell:
        m = _STUDENT_METRICS.search(path)
        return StudentCell(m["ds"], m["teacher"], m["student"], m["method"], m["variant"], m["setting"], int(m["seed"]))

    def student_groups(self) -> list[StudentGroup]:
        """The student jobs: cells that share (dataset, teacher checkpoint, setting, seed, batch size) --
        and the student model too when ``student_groups.by`` is 'pair' -- in chunks of at most
        ``student_groups.max_students``; 'none' makes every student a job of its own."""
        if self._groups is not None:
            return self._groups
        options = self.config.get("student_groups", {})
        by, limit = options.get("by", "pair"), int(options.get("max_students", 0)) or None
        grouped: dict[tuple, list[StudentCell]] = {}
        for cell in self.student_cells():
            batch = self.recipe(cell.ds, "student", cell.student).get("batch_size", 64)
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
            for k, chunk in enumerate(chunks):
                groups.append(StudentGroup(f"{base}_part{k + 1}" if len(chunks) > 1 else base, chunk))
        self._groups = groups
        return groups

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

    def group_spec(self, group: StudentGroup) -> dict[str, Any]:
        return {"stage": "student_group",
                "members": [self.student_spec(c.ds, c.teacher, c.student, c.method, c.variant, c.setting, str(c.seed))
                            for c in group.cells]}

    def group_resources(self, group: StudentGroup) -> dict[str, int]:
        """Scheduler resources of a group: wall time and memory grow with its number of students."""
        first, n = group.cells[0], len(group.cells)
        imagenet = self.mem_mb(first.ds) > 8000
        epochs = max(self.recipe(c.ds, "student", c.student)["epochs"] for c in group.cells)
        per_student = self._wall_minutes(first.ds, epochs)
        return {"mem_mb": self.mem_mb(first.ds) + (4000 if imagenet else 1000) * (n - 1),
                "runtime": per_student * n, "gpu": self.gpus_per_job}

    # ------------------------------------------------------------------ lambda*
    def selection_mode(self) -> str:
        return self.config["mcmi"].get("lambda_selection", {}).get("mode", "select")

    def selection_inputs(self, ds: str, teacher: str) -> list[str]:
        sel = self.config["mcmi"].get("lambda_selection", {})
        student = sel.get("student_of", {}).get(teacher)
        if student is None:
            raise ConfigError(f"mcmi.lambda_selection.student_of.{teacher}: no student named for lambda selection")
        method = sel.get("method", "KD")
        seeds = sel.get("seeds", [0])
        return [self.student(ds, teacher, student, method, f"MCMI_lam{lam_str(lam)}", "full", s)
                for lam in self.config["mcmi"]["lambda_grid"][ds] for s in seeds]

    def paper_lambda_star(self, ds: str, teacher: str) -> float:
        try:
            return float(self.config["mcmi"]["paper_lambda_star"][ds][teacher])
        except KeyError:
            raise ConfigError(f"mcmi.paper_lambda_star.{ds}.{teacher}: needed because "
                              f"mcmi.lambda_selection.mode is 'paper'") from None

    def _grid_variant(self, lam: float) -> str:
        return f"MCMI_lam{lam_str(lam)}"

    def selected_teacher_inputs(self, ds: str, teacher: str) -> dict[str, Any]:
        """What the lambda* teacher is copied from: the selection and the grid (select mode), or the
        grid teacher at the paper's lambda* (paper mode)."""
        if self.selection_mode() == "paper":
            variant = self._grid_variant(self.paper_lambda_star(ds, teacher))
            return {"model": self.teacher_model(ds, teacher, variant),
                    "metrics": self.teacher_metrics(ds, teacher, variant)}
        grid = self.config["mcmi"]["lambda_grid"][ds]
        return {"selection": self.lambda_star_file(ds, teacher),
                "grid": [self.teacher_model(ds, teacher, self._grid_variant(lam)) for lam in grid]}

    def selected_teacher_choice(self, ds: str, teacher: str) -> str:
        """Arguments of ``mcmi adopt-teacher``: a selection file, or the paper's lambda*."""
        template = self.teacher_dir(ds, teacher, "MCMI_lam{lam}")
        if self.selection_mode() == "paper":
            return f"--lam {lam_str(self.paper_lambda_star(ds, teacher))} --template {template}"
        return f"--selection {self.lambda_star_file(ds, teacher)} --template {template}"

    # ------------------------------------------------------------------ per-target inputs
    def experiment(self, name: str) -> dict[str, Any]:
        """The block ``experiments.<name>``; ConfigError when the config does not define it."""
        if name not in self.config["experiments"]:
            raise ConfigError(f"experiments.{name}: not configured, so its target cannot be built")
        return self.config["experiments"][name]

    def seeds(self, exp: dict[str, Any]) -> list[int]:
        """An experiment's seeds (its own ``seeds``, else the config's)."""
        return exp.get("seeds", self.config["seeds"])

    def students_and_teachers(self, exp: dict[str, Any], variants: tuple[str, ...] = VARIANTS) -> list[str]:
        """Per pair of ``exp``: the teacher measured at T = 1 in each variant, and its students per method,
        variant and seed on the full training set."""
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

    def figure_inputs(self, n: int) -> list[str]:
        """The metrics files of figure ``n`` (an id of ``mcmi.report.FIGURES``)."""
        from mcmi.report import FIGURES

        return FIGURES[n].input_files(self)

    def targets(self) -> dict[str, list[str]]:
        """Each named target (a table or figure of ``mcmi.report``) that the config defines, with its outputs."""
        from mcmi.report import all_targets

        return {spec.target: spec.outputs(self.results) for spec in all_targets()
                if spec.target in self.config["experiments"]}

    # ------------------------------------------------------------------ resources
    def mem_mb(self, ds: str) -> int:
        return 32000 if self.config["datasets"][ds]["kind"] == "imagefolder" and ds == "imagenet" else 8000

    def runtime_minutes(self, kind: str, wc: Any) -> int:
        """A generous wall-time estimate for cluster schedulers, in minutes."""
        ds = wc.dataset
        epochs = {"mcmi": self.config["mcmi"]["epochs"].get(ds, 20), "measure": 1}.get(
            kind, self.config["recipes"][self.config["recipe_of"][ds]["student" if kind == "student" else "teacher"]]
            ["epochs"])
        return self._wall_minutes(ds, epochs)

    @staticmethod
    def _wall_minutes(ds: str, epochs: int) -> int:
        """Twice a generous per-epoch time (ImageNet 40 min, otherwise 1 min), at least 10 minutes."""
        return int(max(10, 2 * {"imagenet": 40}.get(ds, 1.0) * epochs))
