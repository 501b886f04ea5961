"""The workflow's view of the config: checks beyond the JSON schema, output paths, job specs and
the inputs of every target. The Snakemake rules stay thin and call this one place."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

VARIANTS = ("MLL", "MCMI")
# Table ids in target order: the paper's Tables 1-7, then tables beyond the paper ("1x": Table 1's
# layout for MIMKD and ITRD).
TABLE_IDS = ("1", "2", "3", "4", "5", "6", "7", "1x")


class ConfigError(ValueError):
    """A config value that the schema lets through but the pipeline cannot use; names the key."""


def lam_str(lam: float) -> str:
    """Canonical text of a lambda in paths: 0.15 -> '0.15', 0 -> '0'."""
    return f"{float(lam):g}"


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
        self.check()

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Names and references the schema cannot check; every error names its key."""
        from mcmi.distill import registry
        from mcmi.models import MODEL_NAMES

        cfg, methods = self.config, registry()
        for name, hparams in cfg["methods"].items():
            if name not in methods:
                raise ConfigError(f"methods.{name}: unknown method; known: {sorted(methods)}")
            unknown = set(hparams) - set(methods[name].defaults)
            if unknown:
                raise ConfigError(f"methods.{name}: unknown hyperparameter(s) {sorted(unknown)}; "
                                  f"expected some of {sorted(methods[name].defaults)}")
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
                    if model not in MODEL_NAMES:
                        raise ConfigError(f"{where}.pairs[{i}]: unknown model {model!r} in {pair!r}; "
                                          f"known: {sorted(MODEL_NAMES)}")
            for key in ("teachers",):
                for i, model in enumerate(exp.get(key, [])):
                    if model not in MODEL_NAMES:
                        raise ConfigError(f"{where}.{key}[{i}]: unknown model {model!r}")
            for i, method in enumerate(exp.get("methods", [])):
                if method not in cfg["methods"]:
                    raise ConfigError(f"{where}.methods[{i}]: method {method!r} has no entry under 'methods'")
        for method, overrides in cfg.get("method_pair_overrides", {}).items():
            if method not in cfg["methods"]:
                raise ConfigError(f"method_pair_overrides.{method}: method not configured under 'methods'")
            for pair, hparams in overrides.items():
                unknown = set(hparams) - set(methods[method].defaults)
                if unknown:
                    raise ConfigError(f"method_pair_overrides.{method}.{pair}: unknown hyperparameter(s) "
                                      f"{sorted(unknown)}")
        for ds, models in cfg["teachers"].get("pretrained", {}).items():
            for model, path in models.items():
                if not Path(path).is_file():
                    raise ConfigError(f"teachers.pretrained.{ds}.{model}: checkpoint {path} does not exist")
        if "synthetic" in cfg["experiments"].get("table5", {}):
            from mcmi.synthetic import resolve_config

            try:
                resolve_config(cfg["experiments"]["table5"]["synthetic"])
            except ValueError as error:
                raise ConfigError(f"experiments.table5.synthetic: {error}") from error
        if "figure4" in cfg["experiments"]:
            exp = cfg["experiments"]["figure4"]
            if len(set(exp["removed_classes"])) != len(exp["removed_classes"]):
                raise ConfigError("experiments.figure4.removed_classes: repeated class")

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

    def synthetic(self, dmu: float) -> str:
        return f"{self.results}/synthetic/dmu{lam_str(dmu)}.json"

    def resume(self, output: str) -> str:
        """Resumable checkpoint for a job: beside the results tree, never a declared output."""
        rel = Path(output).parent.relative_to(self.results) if output.startswith(self.results) else Path(output).parent
        return f"{self.results}/_resume/{rel}/last.pt"

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

    def measure_spec(self, ds: str, teacher: str, variant: str, temp: str, out: str) -> dict[str, Any]:
        return {**self._common(ds, 0, out), "stage": "measure", "model": teacher,
                "checkpoint": self.teacher_model(ds, teacher, variant), "temperature": float(temp),
                "run": {"dataset": ds, "teacher": teacher, **self.variant_run_fields(variant)}}

    def method_hparams(self, method: str, teacher: str, student: str) -> dict[str, Any]:
        hparams = dict(self.config["methods"].get(method, {}))
        hparams.update(self.config.get("method_pair_overrides", {}).get(method, {}).get(f"{teacher}->{student}", {}))
        return hparams

    def student_spec(self, ds: str, teacher: str, student: str, method: str, variant: str, setting: str,
                     seed: str, out: str) -> dict[str, Any]:
        hparams = self.method_hparams(method, teacher, student)
        run = {"dataset": ds, "teacher": teacher, "student": student, "method": method, "seed": int(seed),
               **self.variant_run_fields(variant)}
        spec = {**self._common(ds, int(seed), out), "stage": "student", "student": student, "teacher": teacher,
                "teacher_checkpoint": self.teacher_model(ds, teacher, variant), "method": method,
                "recipe": self.recipe(ds, "student", student), "out_model": str(Path(out).with_name("model.pt"))}
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

    def vanilla_spec(self, ds: str, student: str, seed: str, out: str) -> dict[str, Any]:
        return {**self._common(ds, int(seed), out), "stage": "student", "student": student, "method": "vanilla",
                "recipe": self.recipe(ds, "student", student), "out_model": str(Path(out).with_name("model.pt")),
                "hparams": dict(self.config["methods"].get("vanilla", {})),
                "run": {"dataset": ds, "student": student, "method": "vanilla", "seed": int(seed)}}

    def data_spec(self, ds: str, out: str) -> dict[str, Any]:
        return {"stage": "prepare_data", "dataset": self.dataset_spec(ds), "seed": 0, "out_metrics": out,
                "run": {"dataset": ds}}

    def hsakd_heads_spec(self, ds: str, teacher: str, variant: str, out: str) -> dict[str, Any]:
        return {**self._common(ds, self.config["teachers"].get("seed", 0), out), "stage": "hsakd_heads",
                "model": teacher, "checkpoint": self.teacher_model(ds, teacher, variant),
                "out_model": self.hsakd_heads(ds, teacher, variant), "recipe": self.recipe(ds, "teacher", teacher),
                "hparams": dict(self.config["methods"].get("HSAKD", {})),
                "run": {"dataset": ds, "teacher": teacher, **self.variant_run_fields(variant)}}

    @property
    def synthetic_threads(self) -> int:
        """Threads of one synthetic job (its config's ``threads``; 1 lets jobs of several delta_mu share a CPU)."""
        return int(self.config["experiments"].get("table5", {}).get("synthetic", {}).get("threads", 1))

    def synthetic_spec(self, dmu: str, out: str) -> dict[str, Any]:
        return {"stage": "synthetic", "synthetic": dict(self.config["experiments"]["table5"].get("synthetic", {})),
                "delta_mu": float(dmu), "seed": None, "out_metrics": out}

    def student_inputs(self, wc: Any) -> dict[str, str]:
        inputs = {"ready": self.data_ready(wc.dataset),
                  "teacher": self.teacher_model(wc.dataset, wc.teacher, wc.variant)}
        if wc.method == "HSAKD":
            inputs["heads"] = self.hsakd_heads(wc.dataset, wc.teacher, wc.variant)
        return inputs

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

    def selected_teacher_choice(self, ds: str, teacher: str, inputs: Any) -> str:
        """Arguments of ``mcmi adopt-teacher``: a selection file, or the paper's lambda*."""
        template = self.teacher_dir(ds, teacher, "MCMI_lam{lam}")
        if self.selection_mode() == "paper":
            return f"--lam {lam_str(self.paper_lambda_star(ds, teacher))} --template {template}"
        return f"--selection {inputs.selection} --template {template}"

    # ------------------------------------------------------------------ per-target inputs
    def _exp(self, name: str) -> dict[str, Any]:
        if name not in self.config["experiments"]:
            raise ConfigError(f"experiments.{name}: not configured, so its target cannot be built")
        return self.config["experiments"][name]

    def _seeds(self, exp: dict[str, Any]) -> list[int]:
        return exp.get("seeds", self.config["seeds"])

    def table_inputs(self, n: int | str) -> list[str]:
        """The metrics files of table ``n`` (an id of ``TABLE_IDS``; 1 and "1" are the same)."""
        if str(n) not in TABLE_IDS:
            raise ConfigError(f"no table {n!r}; known: {list(TABLE_IDS)}")
        return getattr(self, f"_table{n}_inputs")()

    def _students_and_teachers(self, exp: dict[str, Any], variants: tuple[str, ...] = VARIANTS) -> list[str]:
        ds, seeds = exp["dataset"], self._seeds(exp)
        paths = []
        for pair in exp["pairs"]:
            teacher, student = split_pair(pair)
            paths += [self.measure(ds, teacher, v) for v in variants]
            paths += [self.student(ds, teacher, student, m, v, "full", s)
                      for m in exp["methods"] for v in variants for s in seeds]
        return paths

    def _table1_inputs(self) -> list[str]:
        exp = self._exp("table1")
        students = sorted({split_pair(p)[1] for p in exp["pairs"]})
        vanilla = [self.vanilla(exp["dataset"], st, s) for st in students for s in self._seeds(exp)]
        return _unique(self._students_and_teachers(exp) + vanilla)

    def _table1x_inputs(self) -> list[str]:
        """As Table 1 (teachers measured, students with MLL and MCMI teachers, teacher-free baselines)
        for ``experiments.table1x``."""
        exp = self._exp("table1x")
        students = sorted({split_pair(p)[1] for p in exp["pairs"]})
        vanilla = [self.vanilla(exp["dataset"], st, s) for st in students for s in self._seeds(exp)]
        return _unique(self._students_and_teachers(exp) + vanilla)

    def _table2_inputs(self) -> list[str]:
        return _unique(self._students_and_teachers(self._exp("table2")))

    def _table3_inputs(self) -> list[str]:
        exp = self._exp("table3")
        return _unique([self.student(exp["dataset"], *split_pair(p), m, v, f"fs{lam_str(a)}", s)
                        for p in exp["pairs"] for m in exp["methods"] for v in VARIANTS
                        for a in exp["alpha_percent"] for s in self._seeds(exp)])

    def _table4_inputs(self) -> list[str]:
        exp = self._exp("table4")
        paths = []
        for pair in exp["pairs"]:
            teacher = split_pair(pair)[0]
            if teacher not in exp["es_epochs"]:
                raise ConfigError(f"experiments.table4.es_epochs.{teacher}: missing")
            variants = ("MLL", f"ES{exp['es_epochs'][teacher]}", "MCMI")
            paths += self._students_and_teachers({**exp, "pairs": [pair]}, variants)
        return _unique(paths)

    def _table5_inputs(self) -> list[str]:
        return [self.synthetic(d) for d in self._exp("table5")["delta_mu"]]

    def _table6_inputs(self) -> list[str]:
        exp = self._exp("table6")
        return [self.lambda_star_file(exp["dataset"], t) for t in exp["teachers"]]

    def _table7_inputs(self) -> list[str]:
        exp = self._exp("table7")
        variants = tuple(f"MCMI_lam{lam_str(lam)}" for lam in exp["lambdas"])
        return _unique(self._students_and_teachers(exp, variants))

    def figure_inputs(self, n: int) -> list[str]:
        if n == 1:
            exp = self._exp("figure1")
            ds = exp["dataset"]
            return _unique([path for pair in exp["pairs"] for t in exp["temperatures"] for path in
                            [self.measure(ds, split_pair(pair)[0], "MLL", t)]
                            + [self.student(ds, *split_pair(pair), "KD", "MLL", f"T{lam_str(t)}", s)
                               for s in self._seeds(exp)]])
        if n == 2:
            exp = self._exp("figure2")
            return [self.teacher_metrics(exp["dataset"], t, "MLL") for t in exp["teachers"]]
        if n == 4:
            exp = self._exp("figure4")
            mcmi = f"MCMI_lam{lam_str(exp['lam'])}" if "lam" in exp else "MCMI"
            return _unique([self.student(exp["dataset"], *split_pair(p), m, v, "zs", s)
                            for p in exp["pairs"] for m in exp["methods"] for v in ("MLL", mcmi)
                            for s in self._seeds(exp)])
        raise ConfigError(f"no figure {n}")

    def targets(self) -> dict[str, list[str]]:
        """Each named target (table1..7, table1x, figure1/2/4) that the config defines, with its outputs."""
        out = {}
        for n in TABLE_IDS:
            if f"table{n}" in self.config["experiments"]:
                out[f"table{n}"] = [f"{self.results}/tables/table{n}.{ext}" for ext in ("md", "tex", "csv")]
        for n in (1, 2, 4):
            if f"figure{n}" in self.config["experiments"]:
                out[f"figure{n}"] = [f"{self.results}/figures/figure{n}.{ext}" for ext in ("pdf", "png")]
        return out

    # ------------------------------------------------------------------ resources
    def mem_mb(self, ds: str) -> int:
        return 32000 if self.config["datasets"][ds]["kind"] == "imagefolder" and ds == "imagenet" else 8000

    def runtime_minutes(self, kind: str, wc: Any) -> int:
        """A generous wall-time estimate for cluster schedulers, in minutes."""
        ds = wc.dataset
        per_epoch = {"imagenet": 40}.get(ds, 1.0)
        epochs = {"mcmi": self.config["mcmi"]["epochs"].get(ds, 20), "measure": 1}.get(
            kind, self.config["recipes"][self.config["recipe_of"][ds]["student" if kind == "student" else "teacher"]]
            ["epochs"])
        return int(max(10, 2 * per_epoch * epochs))


def _unique(paths: list[str]) -> list[str]:
    return list(dict.fromkeys(paths))
