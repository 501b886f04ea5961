"""Reading a workflow config: the JSON schema (types, ranges, known keys) with its ``default``s
applied once, then the checks the schema cannot express (names that refer to other entries, model
and method names, ranges that depend on other values). Every error names the key to fix."""

from __future__ import annotations

import copy
import functools
import math
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from mcmi.pipeline.naming import NUMBER, number_text, split_pair

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value that the pipeline cannot use; the message names the key."""


def with_defaults(config: dict[str, Any], schema_path: Path | None = None) -> dict[str, Any]:
    """``config`` validated against the schema, with every ``default`` of the schema filled in
    (in place, as Snakemake's ``validate`` does, so the rules and the code see one config).

    Stricter than plain JSON schema in two ways: a NaN or infinity anywhere is refused (first, naming
    its key), and ``integer`` means an int (JSON schema also takes 64.0, which fails in training)."""
    import jsonschema
    from jsonschema import validators

    from mcmi.provenance import find_non_finite

    non_finite = find_non_finite(config)
    if non_finite:
        raise ConfigError(f"config {non_finite}: not a finite number (NaN and infinity are refused)")
    schema = _load_schema(Path(schema_path or SCHEMA))
    base = jsonschema.Draft202012Validator
    fill_properties = base.VALIDATORS["properties"]

    def properties(validator: Any, props: dict[str, Any], instance: Any, sub: dict[str, Any]) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, prop in props.items():
                if isinstance(prop, dict) and "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from fill_properties(validator, props, instance, sub)

    strict_integers = base.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    filling = validators.extend(base, {"properties": properties}, type_checker=strict_integers)
    error = jsonschema.exceptions.best_match(filling(schema).iter_errors(config))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise ConfigError(f"config {where or '(top level)'}: {error.message}")
    return config


def yaml_error_text(error: Exception) -> str:
    """A YAML parser error in one line: what is wrong and where (PyYAML's own text spans lines)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def typed_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Snakemake's ``--config key=value`` overrides with the scalars inside lists and mappings read
    as YAML. Snakemake types a top-level value (int, float, bool, else string) but reads lists and
    mappings with YAML's BaseLoader, which leaves every scalar a string: ``seeds=[0,1]`` arrives as
    ['0', '1']. A scalar YAML reads as a number, bool or null gets that type; other strings stay."""

    def retype(value: Any, top: bool) -> Any:
        if isinstance(value, Mapping):
            return {key: retype(item, False) for key, item in value.items()}
        if isinstance(value, list):
            return [retype(item, False) for item in value]
        if isinstance(value, str) and not top:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
        return value

    return {key: retype(value, True) for key, value in overrides.items()}


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


def check_config(cfg: dict[str, Any]) -> None:
    """The checks beyond the schema that concern the config as a whole; each experiment's own checks
    (``check`` and ``path_numbers`` of its declaration in mcmi.report) run after these."""
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
        for role in ("teacher", "student"):
            if isinstance(exp.get(role), str):
                check_model(exp[role], f"{where}.{role}")
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
    for ds, grid in cfg["mcmi"]["lambda_grid"].items():
        for i, lam in enumerate(grid):
            check_path_number(lam, f"mcmi.lambda_grid.{ds}[{i}]")
    for ds, teachers in cfg["mcmi"].get("paper_lambda_star", {}).items():
        for teacher, lam in teachers.items():
            check_path_number(lam, f"mcmi.paper_lambda_star.{ds}.{teacher}")


def path_numbers(block: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(key, value) of every number in ``block`` (a number, or a list or mapping of them, nested),
    each named by its key ('experiments.table3.alpha_percent[1]')."""
    if isinstance(block, dict):
        for name, value in block.items():
            yield from path_numbers(value, f"{key}.{name}")
    elif isinstance(block, list):
        for i, value in enumerate(block):
            yield from path_numbers(value, f"{key}[{i}]")
    elif isinstance(block, (int, float)) and not isinstance(block, bool):
        yield key, block


def check_path_number(value: float, key: str) -> None:
    """``value`` is written in output paths as ``number_text`` writes it (6 significant digits, the
    rules' wildcards take digits and a point): refuse a value whose text would not read back as
    itself, since two such values would share one path (0.1 and 0.1000001) or match no rule (1e-05, -0)."""
    text = number_text(value)
    if math.copysign(1.0, float(value)) < 0 and float(value) == 0:
        raise ConfigError(f"{key}: -0.0 would be written '-0' in output paths; write 0")
    if not re.fullmatch(NUMBER, text):
        raise ConfigError(f"{key}: {value!r} would be written {text!r} in output paths, which the rules cannot "
                          f"match; use a plain decimal of at most 6 significant digits from 0.0001 up (or 0)")
    if float(text) != float(value):
        raise ConfigError(f"{key}: {value!r} would be written {text!r} in output paths, the same as "
                          f"{float(text)!r}; use at most 6 significant digits")


def check_device_here(device: str, key: str = "device") -> None:
    """``device`` (a config's or ``--device``) can be used on this machine: 'cuda'/'cuda:N' need a
    visible CUDA GPU (N below their count), 'mps' Apple's GPU. For jobs that run here; a cluster's
    submit node may have no GPU, so the workflow checks this only when jobs run locally."""
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            found = f"{count} visible CUDA GPU(s)" if count else "no usable CUDA GPU"
            raise ConfigError(f"{key}: {device!r}, but this machine has {found} (torch.cuda.is_available() is "
                              f"{torch.cuda.is_available()}); use 'auto' (CUDA when present, else the CPU) or 'cpu'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}: 'mps', but Apple's GPU is not available here; use 'auto' or 'cpu'")


def check_paper_dir(paper_dir: str, raw: str) -> None:
    """The tables are written beside the paper's published numbers, read from ``paper_dir``."""
    if not Path(paper_dir).is_dir():
        where = "" if raw == paper_dir else f" (looked for {paper_dir})"
        raise ConfigError(f"paper_dir: {raw!r} is not a folder{where}; the tables need the paper's published "
                          f"numbers there (this repository's config/paper)")


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


def _check_dataset(cfg: dict[str, Any], name: str, key: str) -> None:
    if name not in cfg["datasets"]:
        raise ConfigError(f"{key}: dataset {name!r} is not defined under 'datasets'")
    if name not in cfg["recipe_of"]:
        raise ConfigError(f"{key}: dataset {name!r} has no entry under 'recipe_of'")
    if name not in cfg["mcmi"]["epochs"]:
        raise ConfigError(f"{key}: dataset {name!r} has no entry under 'mcmi.epochs'")
    if name not in cfg["mcmi"]["lambda_grid"]:
        raise ConfigError(f"{key}: dataset {name!r} has no entry under 'mcmi.lambda_grid'")
