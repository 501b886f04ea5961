"""The workflow layer without Snakemake: naming grammar, path table, typed job specs, config defaults,
the plan on the demo, test and paper configs, and one-command runs building the workflow's specs."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from mcmi.cli import build_parser
from mcmi.pipeline import ConfigError, WorkflowConfig
from mcmi.pipeline.config import with_defaults
from mcmi.pipeline.naming import (WILDCARDS, Setting, Variant, early_stop_variant, few_shot_setting, grid_variant,
                                  number_text, temperature_setting)
from mcmi.pipeline.paths import TEMPLATES, Paths
from mcmi.pipeline.specs import StudentGroupSpec, StudentSpec, SyntheticSpec, parse_spec

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["config/demo.yaml", "config/test.yaml", "config/config.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def plan(name: str = "config/test.yaml", **changes) -> WorkflowConfig:
    config = load(name)
    config.update(changes)
    return WorkflowConfig(config, REPO)


# ---------------------------------------------------------------- naming
@pytest.mark.parametrize("text, kind, lam, es", [("MLL", "MLL", None, None), ("MCMI", "MCMI", None, None),
                                                 ("MCMI_lam0.15", "MCMI", 0.15, None), ("ES150", "ES", None, 150)])
def test_variants_parse_and_match_the_wildcard(text, kind, lam, es):
    import re

    v = Variant.parse(text)
    assert (v.kind, v.lam, v.es_epochs) == (kind, lam, es)
    assert re.fullmatch(WILDCARDS["variant"], text)


def test_variant_and_setting_texts_round_trip():
    assert grid_variant(0.15) == "MCMI_lam0.15" and grid_variant("0.10") == "MCMI_lam0.1"
    assert Variant.parse(grid_variant(0.25)).lam == 0.25
    assert Variant.parse(early_stop_variant(60)).es_epochs == 60
    assert Setting.parse(few_shot_setting(25.0)).alpha_percent == 25.0 and few_shot_setting(25.0) == "fs25"
    assert Setting.parse(temperature_setting(4)).temperature == 4.0 and temperature_setting(4.0) == "T4"
    assert Setting.parse("zs").is_zero_shot and Setting.parse("full").kind == "full"
    assert number_text(0) == "0" and number_text("1.50") == "1.5"
    with pytest.raises(ValueError, match="unknown teacher variant"):
        Variant.parse("MCMI-0.1")
    with pytest.raises(ValueError, match="unknown student setting"):
        Setting.parse("fewshot10")


# ---------------------------------------------------------------- paths
def test_every_template_fills_and_parses_back():
    paths = Paths("results/x")
    values = {"dataset": "cifar100", "teacher": "resnet56", "student": "resnet20", "method": "CRD+KD",
              "variant": "MCMI_lam0.15", "setting": "fs25", "seed": "3", "temp": "4", "preset": "as_written",
              "dmu": "2", "n": "1x", "ext": "md", "group": "students_x",
              "weights": "ResNet34_Weights.IMAGENET1K_V1"}
    for name, template in TEMPLATES.items():
        needed = {k: v for k, v in values.items() if "{" + k + "}" in template}
        path = paths.path(name, **needed)
        assert path.startswith("results/x/") and "{" not in path
        parsed = paths.parse(name, path)
        assert parsed == needed, name


def test_pattern_keeps_wildcards_and_fixes_the_given_ones():
    paths = Paths("res/")
    assert paths.pattern("teacher_model") == "res/{dataset}/teachers/{teacher}/{variant}/model.pt"
    assert paths.pattern("teacher_model", variant="MCMI") == "res/{dataset}/teachers/{teacher}/MCMI/model.pt"
    assert paths.parse("student_metrics", "res/cifar100/students/vanilla/resnet20/seed0/metrics.json") is None
    assert paths.resume("res/a/b/metrics.json") == "res/_resume/a/b/last.pt"


# ---------------------------------------------------------------- specs
def test_specs_round_trip_through_json_and_refuse_unknown_or_missing_keys():
    w = plan()
    group = w.group_spec(w.student_groups()[0])
    again = parse_spec(json.loads(group.to_json()))
    assert isinstance(again, StudentGroupSpec) and again == group and again.to_json() == group.to_json()
    member = group.members[0].to_dict()
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\]"):
        parse_spec({**member, "lr": 0.1})
    del member["student"]
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['student'\]"):
        parse_spec(member)
    with pytest.raises(ValueError, match="unknown stage"):
        parse_spec({"stage": "distil"})


def test_spec_json_is_independent_of_the_config_key_order():
    config = load("config/test.yaml")
    reordered = {k: config[k] for k in reversed(list(config))}
    reordered["methods"] = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(config["methods"].items()))}
    a, b = WorkflowConfig(config, REPO), WorkflowConfig(reordered, REPO)
    assert [a.group_spec(g).to_json() for g in a.student_groups()] == \
        [b.group_spec(g).to_json() for g in b.student_groups()]


def test_synthetic_spec_keeps_its_null_seed():
    spec = plan().synthetic_spec("as_written", "2")
    assert isinstance(spec, SyntheticSpec) and spec.to_dict()["seed"] is None



def test_the_long_synthetic_jobs_are_scheduled_first():
    """Table 5's as_written jobs train on 18x the points of authors_code ones: they start first, so the
    short jobs fill the cores at the end instead of leaving one idle."""
    paper = plan("config/config.yaml")
    assert paper.synthetic_priority("as_written") == 90 and paper.synthetic_priority("authors_code") == 5
    assert plan().synthetic_priority("as_written") >= 1    # a tiny test-scale job still gets a valid priority

# ---------------------------------------------------------------- config defaults
def test_schema_defaults_are_applied_once_and_nested():
    config = with_defaults(copy.deepcopy(load("config/test.yaml")))
    assert config["precision"] == "fp32" and config["student_groups"] == {"by": "pair", "max_students": 0}
    assert config["mcmi"]["lambda_selection"]["mode"] in ("select", "paper")
    assert config["mcmi"]["lambda_selection"]["seeds"]
    if "table3" in config["experiments"]:
        assert "partition_seed" in config["experiments"]["table3"]


def test_schema_errors_name_the_key():
    config = load("config/test.yaml")
    config["student_groups"] = {"by": "everything"}
    with pytest.raises(ConfigError, match=r"config student_groups\.by"):
        WorkflowConfig(config, REPO)
    config = load("config/test.yaml")
    config["experiments"]["table5"]["synthetic"]["lambda_grid"] = [0.1, -0.2]
    with pytest.raises(ConfigError, match=r"config experiments\.table5\.synthetic\.lambda_grid\[1\]: -0\.2"):
        WorkflowConfig(config, REPO)


def _training_specs(workflow: WorkflowConfig) -> list:
    """Every student (group members), teacher, fine-tune and HSAKD-heads spec the config plans."""
    members = [m for g in workflow.student_groups() for m in workflow.group_spec(g).members]
    teachers = {workflow.paths.parse("teacher_model", m.teacher_checkpoint)["variant"]
                for m in members if m.teacher_checkpoint and m.run.get("dataset") == "digits"}
    others = [workflow.planned_spec(workflow.teacher_metrics("digits", "resnet14", v)) for v in sorted(teachers)]
    others += [workflow.hsakd_heads_spec("digits", "resnet14", "MLL")]
    return members + [s for s in others if s is not None]


def test_compile_none_plans_the_specs_of_before():
    """``compile: none`` (the default) leaves the key out of every spec: the JSON, fingerprints and job
    identities are those of before the option existed, so no result is stale. A mode is another job."""
    absent, none, compiled = plan(), plan(compile="none"), plan(compile="default")
    assert "compile" not in load("config/test.yaml") and none.config["compile"] == absent.config["compile"] == "none"
    eager_specs, compiled_specs = _training_specs(none), _training_specs(compiled)
    kinds = {type(s).__name__ for s in eager_specs}
    assert {"StudentSpec", "TeacherSpec", "MCMISpec", "HeadsSpec"} <= kinds, kinds
    assert [s.to_json() for s in _training_specs(absent)] == [s.to_json() for s in eager_specs]
    for eager, other in zip(eager_specs, compiled_specs):
        assert "compile" not in eager.to_dict() and eager.compile is None and eager.compile_mode == "none"
        assert other.to_dict()["compile"] == "default"
        assert {**other.to_dict(), "compile": None} == {**eager.to_dict(), "compile": None}
        assert other.fingerprint() != eager.fingerprint()
        # the eager fingerprint is that of the same spec written without the key (as before the option)
        assert type(eager).from_dict({k: v for k, v in eager.to_dict().items() if k != "stage"}).fingerprint() \
            == eager.fingerprint()
    groups = [compiled.group_spec(g) for g in compiled.student_groups()]
    assert all(m.compile == "default" for g in groups for m in g.members)


def test_a_bad_compile_mode_is_one_error_line_naming_the_key():
    with pytest.raises(ConfigError) as error:
        plan(compile="max-autotune")
    message = str(error.value)
    assert message.startswith("config compile: 'max-autotune' is not one of") and "\n" not in message
    assert "'none', 'default', 'reduce-overhead'" in message
    with pytest.raises(ValueError, match="job spec key 'compile' must be 'default' or 'reduce-overhead'"):
        StudentSpec.from_dict({**plan().group_spec(plan().student_groups()[0]).members[0].to_dict(),
                               "compile": "none"})


# ---------------------------------------------------------------- the plan on the shipped configs
@pytest.mark.parametrize("name", CONFIGS)
def test_every_target_input_is_an_instance_of_a_path_template(name):
    w = plan(name)
    for target in w.targets():
        inputs = w.target_inputs(target)
        assert inputs, target
        for path in inputs:
            assert any(w.paths.parse(t, path) for t in TEMPLATES), path


def test_paper_config_plans_the_paper_grid():
    w = plan("config/config.yaml")
    groups = w.student_groups()
    # 362 groups, 30 of them (Figure 8's temperature groups) split in two to fit walltime.max_job_hours
    assert sum(len(g.cells) for g in groups) == 2627 and len(groups) == 392
    table1 = [g for g in groups if any(c.method in ("KD", "DKD") and c.setting == "full" for c in g.cells)]
    assert table1 and all(len({(c.teacher, c.variant, c.seed) for c in g.cells}) == 1 for g in groups)


def test_group_members_are_the_specs_of_their_cells():
    w = plan()
    group = w.student_groups()[0]
    spec = w.group_spec(group)
    cell = group.cells[0]
    assert spec.members[0] == w.student_spec(cell.ds, cell.teacher, cell.student, cell.method, cell.variant,
                                             cell.setting, cell.seed)
    assert len({m.shared_key() for m in spec.members}) == 1


@pytest.mark.parametrize("setting", ["fs10", "zs", "T4", "full"])
def test_members_of_every_setting_have_a_shared_key(setting):
    w = plan("config/demo.yaml")
    spec = w.student_spec("digits", "resnet14", "resnet8", "KD", "MLL", setting, 0)
    twin = w.student_spec("digits", "resnet14", "resnet8", "AT", "MLL", setting, 0)
    assert spec.shared_key() == twin.shared_key()
    assert spec.shared_key() != w.student_spec("digits", "resnet14", "resnet8", "KD", "MLL", setting, 1).shared_key()
    assert parse_spec(spec.to_json()) == spec


def test_lambda_star_teacher_is_adopted_from_the_grid_inputs():
    w = plan()
    teacher = next(iter(w.config["mcmi"]["lambda_selection"]["student_of"]))
    ds = next(ds for ds in w.config["mcmi"]["lambda_grid"])
    inputs = w.selected_teacher_inputs(ds, teacher)
    assert len(inputs["models"]) == len(inputs["metrics"]) == len(w.config["mcmi"]["lambda_grid"][ds])
    assert w.selected_teacher_choice(ds, teacher) == f"--selection {inputs['selection']}"


# ---------------------------------------------------------------- one-command runs
def _hand_spec(argv: list[str]):
    args = build_parser().parse_args(argv)
    return args.build(args)


def _teacher_files(model: Path, run: dict) -> str:
    """A teacher's model.pt (its content is not read here) and the metrics.json beside it."""
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"")
    (model.parent / "metrics.json").write_text(json.dumps({"run": run, "final": {}}))
    return str(model)


def test_hand_run_student_equals_the_workflow_job_but_for_its_paths(tmp_path):
    w = plan("config/config.yaml", results=str(tmp_path / "res"))
    job = w.student_spec("cifar100", "resnet56", "resnet20", "KD", "MLL", "full", 0)
    _teacher_files(Path(job.teacher_checkpoint), {"stage": "teacher", "teacher": "resnet56", "variant": "MLL"})
    hand = _hand_spec(["student", "--teacher", "resnet56", "--teacher-checkpoint", job.teacher_checkpoint,
                       "--student", "resnet20", "--method", "KD", "--out", str(tmp_path / "s")])
    assert isinstance(hand, StudentSpec)
    assert hand.out_metrics == str(tmp_path / "s" / "metrics.json")
    ignored = {"out_metrics", "out_model", "resume", "finished"}
    assert {f.name: getattr(hand, f.name) for f in dataclasses.fields(hand) if f.name not in ignored} == \
        {f.name: getattr(job, f.name) for f in dataclasses.fields(job) if f.name not in ignored}


def test_hand_run_flags_override_recipe_and_hyperparameters(tmp_path):
    (tmp_path / "t.pt").write_bytes(b"")
    hand = _hand_spec(["student", "--teacher", "resnet32x4", "--teacher-checkpoint", str(tmp_path / "t.pt"),
                       "--variant", "MLL", "--student", "ShuffleV1",
                       "--method", "KD", "--hp", "T=2", "--hp", "alpha=0.5", "--epochs", "3", "--seed", "2",
                       "--data-root", "/data/cifar", "--out", str(tmp_path)])
    assert hand.hparams["T"] == 2 and hand.hparams["alpha"] == 0.5 and hand.hparams["ce_weight"] == 0.1
    assert hand.recipe["epochs"] == 3 and hand.recipe["lr"] == 0.01     # ShuffleV1's lr override stays
    assert hand.seed == 2 and hand.dataset["root"] == "/data/cifar"
    teacher = _hand_spec(["teacher", "--model", "resnet56", "--early-stop", "60", "--out", str(tmp_path / "t")])
    assert teacher.stop_after_epoch == 60 and teacher.recipe["epochs"] == 240
    mcmi = _hand_spec(["mcmi", "--model", "resnet56", "--teacher-checkpoint", str(tmp_path / "t.pt"), "--lam", "0.15",
                       "--out", str(tmp_path / "m")])
    assert mcmi.lam == 0.15 and mcmi.teacher_checkpoint == str(tmp_path / "t.pt")
    assert mcmi.recipe["schedule"] == "cosine"


def test_student_help_lists_every_method_with_its_hyperparameters(capsys):
    from mcmi.distill import registry

    with pytest.raises(SystemExit):
        build_parser().parse_args(["student", "--help"])
    text = capsys.readouterr().out
    for name, cls in registry().items():
        assert f"  {name} " in text
    assert "KD        ce_weight=0.1, alpha=0.9, T=4" in text


def test_hand_run_bad_hyperparameter_is_refused(tmp_path):
    (tmp_path / "t.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        _hand_spec(["student", "--teacher", "resnet56", "--teacher-checkpoint", str(tmp_path / "t.pt"), "--variant",
                    "MLL", "--student", "resnet20", "--method", "KD", "--hp", "T4", "--out", str(tmp_path / "s")])
