"""Reading a workflow config: the JSON schema (types, ranges, known keys) with its ``default``s
applied once, then the checks the schema cannot express (names that refer to other entries, model
and method names, ranges that depend on other values). Every error names the key to fix."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from mcmi.pipeline.naming import split_pair

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value that the pipeline cannot use; the message names the key."""


def with_defaults(config: dict[str, Any], schema_path: Path | None = None) -> dict[str, Any]:
    """``config`` validated against the schema, with every ``default`` of the schema filled in
    (in place, as Snakemake's ``validate`` does, so the rules and the code see one config)."""
    import jsonschema
    from jsonschema import validators

    schema = _load_schema(Path(schema_path or SCHEMA))
    base = jsonschema.Draft202012Validator
    fill_properties = base.VALIDATORS["properties"]

    def properties(validator: Any, props: dict[str, Any], instance: Any, sub: dict[str, Any]) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, prop in props.items():
                if isinstance(prop, dict) and "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from fill_properties(validator, props, instance, sub)

    filling = validators.extend(base, {"properties": properties})
    error = jsonschema.exceptions.best_match(filling(schema).iter_errors(config))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise ConfigError(f"config {where or '(top level)'}: {error.message}")
    return config


@functools.lru_cache(maxsize=4)
def _load_schema(path: Path) -> dict[str, Any]:
    """The schema file, read once per process (every WorkflowConfig validates against it)."""
    return yaml.safe_load(path.read_text())


def known_num_classes(dataset: dict[str, Any]) -> int | None:
    """Number of classes of a dataset spec when it is known without loading it."""
    fixed = {"cifar10": 10, "cifar100": 100, "digits": 10, "demo_imagefolder": 10}
    if dataset["kind"] in fixed:
        return fixed[dataset["kind"]]
    train = Path(dataset.get("root", "")) / "train"
    return sum(1 for p in train.iterdir() if p.is_dir()) if train.is_dir() else None


def check_config(cfg: dict[str, Any], teacher_epochs: Callable[[str, str], int],
                 synthetic_presets: list[str]) -> None:
    """The checks beyond the schema; ``teacher_epochs(dataset, model)`` gives a teacher recipe's epochs."""
    from mcmi.distill import registry

    methods = registry()
    _check_results_path(cfg["results"])
    for name, hparams in cfg["methods"].items():
        if name not in methods:
            raise ConfigError(f"methods.{name}: unknown method; known: {sorted(methods)}")
        _check_hparams(methods[name], hparams, f"methods.{name}")
    for ds, roles in cfg["recipe_of"].items():
        for role, recipe in roles.items():
            if recipe not in cfg["recipes"]:
                raise ConfigError(f"recipe_of.{ds}.{role}: no recipe named {recipe!r} in recipes")
    for exp_name, exp in cfg["experiments"].items():
        where = f"experiments.{exp_name}"
        if "dataset" in exp:
            _check_dataset(cfg, exp["dataset"], f"{where}.dataset")
        for i, pair in enumerate(exp.get("pairs", [])):
            for model in split_pair(pair):
                check_model(model, f"{where}.pairs[{i}]", f" in {pair!r}")
        for i, model in enumerate(exp.get("teachers", [])):
            check_model(model, f"{where}.teachers[{i}]")
        for i, method in enumerate(exp.get("methods", [])):
            if method not in cfg["methods"]:
                raise ConfigError(f"{where}.methods[{i}]: method {method!r} has no entry under 'methods'")
    for method, overrides in cfg["method_pair_overrides"].items():
        if method not in cfg["methods"]:
            raise ConfigError(f"method_pair_overrides.{method}: method not configured under 'methods'")
        for pair, hparams in overrides.items():
            for model in split_pair(pair):
                check_model(model, f"method_pair_overrides.{method}.{pair}")
            _check_hparams(methods[method], {**cfg["methods"][method], **hparams},
                           f"method_pair_overrides.{method}.{pair}")
    for model in cfg["lr_overrides"]:
        check_model(model, f"lr_overrides.{model}")
    for ds, models in cfg["teachers"]["pretrained"].items():
        if ds not in cfg["datasets"]:
            raise ConfigError(f"teachers.pretrained.{ds}: dataset {ds!r} is not defined under 'datasets'")
        for model, path in models.items():
            check_model(model, f"teachers.pretrained.{ds}.{model}")
            _check_pretrained(path, model, f"teachers.pretrained.{ds}.{model}")
    selection = cfg["mcmi"]["lambda_selection"]
    for teacher, student in selection.get("student_of", {}).items():
        check_model(teacher, f"mcmi.lambda_selection.student_of.{teacher}")
        check_model(student, f"mcmi.lambda_selection.student_of.{teacher}")
    if selection["method"] not in cfg["methods"]:
        raise ConfigError(f"mcmi.lambda_selection.method: {selection['method']!r} has no entry under 'methods'")
    if "table5" in cfg["experiments"]:
        from mcmi.synthetic import resolve_config

        for preset in synthetic_presets:
            try:
                resolve_config(cfg["experiments"]["table5"].get("synthetic", {}), preset)
            except ValueError as error:
                raise ConfigError(f"experiments.table5.synthetic (preset {preset}): {error}") from error
    if "table4" in cfg["experiments"]:
        _check_early_stop(cfg["experiments"]["table4"], teacher_epochs)
    if "figure4" in cfg["experiments"]:
        _check_zero_shot(cfg, cfg["experiments"]["figure4"])


def _check_pretrained(source: str, model: str, key: str) -> None:
    """A pretrained teacher is an existing file or torchvision weights of that model."""
    from mcmi.models.pretrained import is_torchvision, resolve_torchvision

    if is_torchvision(source):
        try:
            resolve_torchvision(model, source)
        except ValueError as error:
            raise ConfigError(f"{key}: {error}") from error
    elif not Path(source).is_file():
        raise ConfigError(f"{key}: checkpoint {source} does not exist (or write torchvision:<WEIGHTS> for "
                          f"torchvision's weights of an ImageNet model)")


def _check_results_path(results: Any) -> None:
    raw = str(results).strip()
    if raw in ("", "/") or Path(raw).resolve() == Path("/"):
        raise ConfigError(f"results: {raw!r} cannot hold the outputs; name a folder such as 'results'")
    if Path(raw).exists() and not Path(raw).is_dir():
        raise ConfigError(f"results: {raw!r} is a file, not a folder")


def check_model(model: str, key: str, context: str = "") -> None:
    """``model`` is a name of the zoo, else a ConfigError naming ``key``."""
    from mcmi.models import MODEL_NAMES

    if model not in MODEL_NAMES:
        raise ConfigError(f"{key}: unknown model {model!r}{context}; known: {sorted(MODEL_NAMES)}")


def _check_hparams(method: Any, hparams: dict[str, Any], key: str) -> None:
    problems = method.check_hparams(hparams)
    if problems:
        raise ConfigError(f"{key}: " + "; ".join(problems))


def _check_early_stop(exp: dict[str, Any], teacher_epochs: Callable[[str, str], int]) -> None:
    """An early-stopped teacher must stop before its recipe's last epoch."""
    for teacher, epochs in exp["es_epochs"].items():
        check_model(teacher, f"experiments.table4.es_epochs.{teacher}")
        full = teacher_epochs(exp["dataset"], teacher)
        if epochs >= full:
            raise ConfigError(f"experiments.table4.es_epochs.{teacher}: {epochs} is not earlier than the "
                              f"teacher recipe's {full} epochs")


def _check_zero_shot(cfg: dict[str, Any], exp: dict[str, Any]) -> None:
    removed = exp["removed_classes"]
    if len(set(removed)) != len(removed):
        raise ConfigError("experiments.figure4.removed_classes: repeated class")
    classes = known_num_classes(cfg["datasets"][exp["dataset"]])
    if classes is None:
        return   # an image folder not yet on disk: the job checks when it loads the data
    out_of_range = [c for c in removed if c >= classes]
    if out_of_range:
        raise ConfigError(f"experiments.figure4.removed_classes: {out_of_range} out of range for "
                          f"{exp['dataset']!r}, which has classes 0..{classes - 1}")
    if len(set(removed)) >= classes:
        raise ConfigError(f"experiments.figure4.removed_classes: removes every class of {exp['dataset']!r}; "
                          f"the student would have no training data")


def _check_dataset(cfg: dict[str, Any], name: str, key: str) -> None:
    if name not in cfg["datasets"]:
        raise ConfigError(f"{key}: dataset {name!r} is not defined under 'datasets'")
    if name not in cfg["recipe_of"]:
        raise ConfigError(f"{key}: dataset {name!r} has no entry under 'recipe_of'")
    if name not in cfg["mcmi"]["epochs"]:
        raise ConfigError(f"{key}: dataset {name!r} has no entry under 'mcmi.epochs'")
    if name not in cfg["mcmi"]["lambda_grid"]:
        raise ConfigError(f"{key}: dataset {name!r} has no entry under 'mcmi.lambda_grid'")
