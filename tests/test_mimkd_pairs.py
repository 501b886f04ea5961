"""MIMKD's set R on every table1x pair of the paper config: the pairs of maps with their sizes, listed
by hand from the models' native sizes on a 32x32 input, so that a pairing of different sizes cannot
come back; and the paper's learning-rate recipe, offered as a config overlay."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml

from mcmi.distill import PairContext, build_method
from mcmi.distill.mimkd import map_size
from mcmi.models import create_model, probe_shapes
from mcmi.models.base import FeatureShapes
from mcmi.pipeline import WorkflowConfig

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
TABLE1X_PAIRS = PAPER_CONFIG["experiments"]["table1x"]["pairs"]

# R with the defaults (include_stem false, same_size_map deepest): (size, student index, teacher index)
# into ``stages``, k = 1..K. Native sizes per stage (stages[0] is the stem): CIFAR ResNets and WRNs
# 32, 32, 16, 8; resnet32x4 32, 32, 16, 8; ResNet50 32, 32, 16, 8, 4; VGG 32, 16, 8, 4, 4;
# MobileNetV2 16, 16, 8, 4, 2; ShuffleV1/V2 32, 16, 8, 4.
RESNET_LIKE = [(32, 1, 1), (16, 2, 2), (8, 3, 3)]
EXPECTED_R = {
    "resnet56->resnet20": RESNET_LIKE,
    "resnet110->resnet20": RESNET_LIKE,
    "resnet110->resnet32": RESNET_LIKE,
    "wrn_40_2->wrn_16_2": RESNET_LIKE,
    "wrn_40_2->wrn_40_1": RESNET_LIKE,
    "vgg13->vgg8": [(16, 1, 1), (8, 2, 2), (4, 4, 4)],               # VGG's deeper 4x4 map on both sides
    "ResNet50->vgg8": [(16, 1, 2), (8, 2, 3), (4, 4, 4)],            # no 32x32 pair: VGG's 32x32 map is its stem
    "ResNet50->MobileNetV2": [(16, 1, 2), (8, 2, 3), (4, 3, 4)],     # MobileNetV2's 2x2 map has no partner
    "resnet32x4->ShuffleV1": [(16, 1, 2), (8, 2, 3)],                # ShuffleNet's 4x4 map has no partner
    "resnet32x4->ShuffleV2": [(16, 1, 2), (8, 2, 3)],
    "wrn_40_2->ShuffleV1": [(16, 1, 2), (8, 2, 3)],
    "vgg13->MobileNetV2": [(16, 1, 1), (8, 2, 2), (4, 3, 4)],
}
# The pairs that the former pairing (stages[1:-1] of each model, aligned from the deepest, the larger
# map pooled) matched with maps of different sizes.
FORMERLY_MISPAIRED = ["ResNet50->vgg8", "ResNet50->MobileNetV2", "resnet32x4->ShuffleV1", "resnet32x4->ShuffleV2",
                      "wrn_40_2->ShuffleV1"]


@functools.lru_cache(maxsize=None)
def model_shapes(name: str) -> FeatureShapes:
    return probe_shapes(create_model(name, 100), (3, 32, 32))


def context(teacher: str, student: str) -> PairContext:
    return PairContext(student=model_shapes(student), teacher=model_shapes(teacher), num_classes=100, num_train=64,
                       train_labels=torch.arange(64) % 100, epochs=240, input_shape=(3, 32, 32),
                       student_name=student, teacher_name=teacher)


def former_pairs(student: FeatureShapes, teacher: FeatureShapes) -> list[tuple[int, int]]:
    s_ids, t_ids = list(range(1, len(student.stages) - 1)), list(range(1, len(teacher.stages) - 1))
    n = min(len(s_ids), len(t_ids))
    return list(zip(s_ids[len(s_ids) - n:], t_ids[len(t_ids) - n:]))


def test_every_table1x_pair_has_its_expected_R() -> None:
    assert sorted(TABLE1X_PAIRS) == sorted(EXPECTED_R)


@pytest.mark.parametrize("pair", TABLE1X_PAIRS)
def test_R_of_each_table1x_pair_holds_same_sized_maps(pair: str) -> None:
    teacher, student = pair.split("->")
    ctx = context(teacher, student)
    method = build_method("MIMKD", ctx, {"nce_k": 8})
    listed = [(size[0], i, j) for size, i, j in method.feature_pairs_with_sizes()]
    assert listed == EXPECTED_R[pair]
    for _, i, j in listed:
        assert map_size(ctx.student.stages[i]) == map_size(ctx.teacher.stages[j]), (i, j)
        assert map_size(ctx.student.stages[i])[0] == map_size(ctx.student.stages[i])[1]
    # the local term's map is the student's map of the deepest pair: f_s^(K), m_K x m_K
    assert method.local_stage == listed[-1][1]
    assert method.local_critic.net[0].in_channels == ctx.teacher.pooled_dim + ctx.student.stages[listed[-1][1]][0]
    # one critic per pair, on the teacher's and the student's channels of that pair
    assert [c.net[0].in_channels for c in method.feature_critics] == [
        ctx.teacher.stages[j][0] + ctx.student.stages[i][0] for _, i, j in listed]


@pytest.mark.parametrize("pair", FORMERLY_MISPAIRED)
def test_the_formerly_mispaired_pairs_now_pair_equal_sizes(pair: str) -> None:
    teacher, student = pair.split("->")
    ctx = context(teacher, student)
    old = former_pairs(ctx.student, ctx.teacher)
    assert any(map_size(ctx.student.stages[i]) != map_size(ctx.teacher.stages[j]) for i, j in old)
    method = build_method("MIMKD", ctx, {"nce_k": 8})
    assert all(map_size(ctx.student.stages[i]) == map_size(ctx.teacher.stages[j]) for i, j in method.feature_pairs)


def test_the_other_table1x_pairs_were_paired_by_size_before() -> None:
    """Only the five pairs above changed their sizes; the others changed K (the deepest map joined R)."""
    for pair in sorted(set(TABLE1X_PAIRS) - set(FORMERLY_MISPAIRED)):
        teacher, student = pair.split("->")
        ctx = context(teacher, student)
        assert all(map_size(ctx.student.stages[i]) == map_size(ctx.teacher.stages[j])
                   for i, j in former_pairs(ctx.student, ctx.teacher)), pair


def test_stem_and_shallowest_choices_on_a_table1x_pair() -> None:
    ctx = context("resnet32x4", "ShuffleV1")
    with_stem = build_method("MIMKD", ctx, {"nce_k": 8, "include_stem": True})
    assert [(z[0], i, j) for z, i, j in with_stem.feature_pairs_with_sizes()] == [(32, 0, 1), (16, 1, 2), (8, 2, 3)]
    shallowest = build_method("MIMKD", ctx, {"nce_k": 8, "include_stem": True, "same_size_map": "shallowest"})
    assert [(z[0], i, j) for z, i, j in shallowest.feature_pairs_with_sizes()] == [(32, 0, 0), (16, 1, 2), (8, 2, 3)]
    vgg = build_method("MIMKD", context("vgg13", "vgg8"), {"nce_k": 8, "same_size_map": "shallowest"})
    assert [(z[0], i, j) for z, i, j in vgg.feature_pairs_with_sizes()] == [(16, 1, 1), (8, 2, 2), (4, 3, 3)]


def test_the_papers_lr_overlay_sets_lr_005_for_every_table1x_student() -> None:
    """config/mimkd_paper_lr.yaml on top of config/config.yaml, merged as Snakemake merges several
    --configfile files: every table1x student at lr 0.05 (§3.7), MIMKD only, in its own results folder,
    one job per student; the default config keeps the project-wide recipe."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config/mimkd_paper_lr.yaml").read_text()))
    plan = WorkflowConfig(config, REPO)
    default = WorkflowConfig(yaml.safe_load((REPO / "config/config.yaml").read_text()), REPO)
    assert plan.results != default.results
    assert plan.config["experiments"]["table1x"]["methods"] == ["MIMKD"]
    assert plan.config["student_groups"]["by"] == "none"
    students = {pair.split("->")[1] for pair in TABLE1X_PAIRS}
    assert {plan.recipe("cifar100", "student", s)["lr"] for s in students} == {0.05}
    lifted = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
    assert {default.recipe("cifar100", "student", s)["lr"] for s in lifted} == {0.01}
    # only the learning rates differ from the project's recipe
    for s in students:
        ours, project = plan.recipe("cifar100", "student", s), default.recipe("cifar100", "student", s)
        assert {**ours, "lr": 0} == {**project, "lr": 0}


@pytest.mark.parametrize("method, key, bad", [("MIMKD", "same_size_map", "middle"), ("MIMKD", "include_stem", "yes"),
                                              ("MIMKD", "global_bound", "dv"), ("ITRD", "mi_kernel", "laplace"),
                                              ("ITRD", "rbf_h", 0)])
def test_the_schema_refuses_a_bad_named_choice_before_any_job(method: str, key: str, bad: object) -> None:
    from mcmi.pipeline.config import ConfigError

    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    config["methods"][method] = {**config["methods"][method], key: bad}
    with pytest.raises(ConfigError, match=f"methods.{method}.{key}"):
        WorkflowConfig(config, REPO)


def test_the_schema_accepts_the_methods_defaults() -> None:
    from mcmi.distill import registry

    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    for method in ("MIMKD", "ITRD"):
        config["methods"][method] = dict(registry()[method].defaults)
    WorkflowConfig(config, REPO)
