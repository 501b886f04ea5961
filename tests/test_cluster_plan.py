"""What the paper config asks a cluster for (planning only, nothing runs): ImageNet jobs on 8 processes
(GPUs) of one node, CIFAR jobs on one; every job's wall time from the stated per-epoch costs and at
most walltime.max_job_hours; student groups split to fit; a job that cannot fit fails planning naming
what to change; the ImageNet MLL teachers are imports of torchvision's weights."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import yaml

from mcmi.pipeline import WorkflowConfig
from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.resources import split_to_fit

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def plan(edit=None) -> WorkflowConfig:
    config = copy.deepcopy(PAPER)
    if edit:
        edit(config)
    return WorkflowConfig(config, REPO)


def test_imagenet_jobs_run_on_eight_processes_and_cifar_jobs_on_one():
    w = plan()
    teacher = w.teacher_spec("imagenet", "resnet50", "ES35")
    assert teacher.distributed == {"processes": 8, "batchnorm": "local"} and teacher.processes == 8
    assert w.job_resources("teacher", "imagenet", "resnet50", "ES35")["gpu"] == 8
    assert w.job_threads("imagenet") == 8 * 10 and w.job_threads("cifar100") == 4
    cifar = w.teacher_spec("cifar100", "resnet56", "MLL")
    assert cifar.processes == 1 and "distributed" not in json.loads(cifar.to_json())
    assert w.job_resources("teacher", "cifar100", "resnet56", "MLL")["gpu"] == 1
    for group in w.student_groups():
        spec = w.group_spec(group)
        assert spec.processes == (8 if group.cells[0].ds == "imagenet" else 1)
        assert w.group_resources(group)["gpu"] == spec.processes


def test_the_imagenet_mll_teachers_are_imports_of_torchvisions_weights():
    w = plan()
    for teacher in ("resnet34", "resnet50"):
        spec = w.teacher_spec("imagenet", teacher, "MLL")
        assert spec.STAGE == "import" and spec.source == "torchvision:IMAGENET1K_V1"
        assert Path(spec.checkpoint).name == {"resnet34": "resnet34-b627a593.pth",
                                              "resnet50": "resnet50-0676ba61.pth"}[teacher]
        assert "weights" in w.teacher_inputs("imagenet", teacher, "MLL")
        early_stopped = f"ES{w.config['experiments']['table4']['es_epochs'][teacher]}"
        assert w.teacher_spec("imagenet", teacher, early_stopped).STAGE == "teacher"     # Table 4's: trained


def test_wall_times_follow_the_stated_epoch_costs():
    """(epochs x minutes per epoch / GPUs + set-up) x margin: resnet50's early-stopped teacher, 35 epochs
    of 58.2 GPU-minutes on 8 GPUs plus 20 minutes, times 1.5."""
    w = plan()
    assert w.job_resources("teacher", "imagenet", "resnet50", "ES35")["runtime"] == pytest.approx(
        (35 * 58.2 / 8 + 20) * 1.5, abs=1)
    cifar = w.job_resources("teacher", "cifar100", "resnet56", "MLL")["runtime"]
    assert cifar == pytest.approx(240 * 0.4 * 1.5, abs=1)
    group = next(g for g in w.student_groups() if g.name == "students_imagenet_resnet34_resnet18_MLL_full_seed0")
    # teacher forward 0.35 x 29.6 + KD, DKD (1 each), ReviewKD (1.3), CRD (1.2) x 17.4, for 100 epochs
    gpu_minutes = 100 * (0.35 * 29.6 + (1 + 1 + 1.3 + 1.2) * 17.4)
    assert w.group_resources(group)["runtime"] == pytest.approx((gpu_minutes / 8 + 20) * 1.5, abs=1)


def test_no_job_of_the_paper_config_asks_for_more_than_max_job_hours():
    w = plan()
    limit = 60 * w.config["walltime"]["max_job_hours"]
    assert max(w.group_resources(g)["runtime"] for g in w.student_groups()) <= limit
    for ds, teacher, variant in [("imagenet", "resnet34", "ES50"), ("imagenet", "resnet50", "ES35"),
                                 ("cifar100", "wrn_40_2", "MLL"), ("imagenet", "resnet50", "MLL")]:
        assert w.job_resources("teacher", ds, teacher, variant)["runtime"] <= limit
    for kind in ("mcmi", "measure", "hsakd_heads"):
        assert w.job_resources(kind, "imagenet", "resnet50")["runtime"] <= limit


def test_student_groups_are_split_to_fit_max_job_hours():
    whole = {g.name: g for g in plan().student_groups()}
    w = plan(lambda c: c["walltime"].update(max_job_hours=30))
    parts = [g for g in w.student_groups() if g.name.startswith("students_imagenet_resnet50_mobilenet_v2_MLL_full")]
    assert [g.name for g in parts] == [f"students_imagenet_resnet50_mobilenet_v2_MLL_full_seed0_part{k}" for k in (1, 2)]
    assert [len(g.cells) for g in parts] == [2, 2]                       # balanced
    assert all(w.group_resources(g)["runtime"] <= 30 * 60 for g in w.student_groups())
    assert [c for g in parts for c in g.cells] == whole["students_imagenet_resnet50_mobilenet_v2_MLL_full_seed0"].cells
    assert sum(len(g.cells) for g in w.student_groups()) == sum(len(g.cells) for g in whole.values())


def test_split_to_fit_uses_the_fewest_balanced_parts():
    assert split_to_fit(list(range(13)), len, 8) == [list(range(7)), list(range(7, 13))]
    assert split_to_fit([1, 1, 1], sum, 10) == [[1, 1, 1]]
    assert split_to_fit([5, 1, 1, 5], sum, 6) == [[5, 1], [1, 5]]


def test_a_job_that_cannot_fit_alone_fails_planning_saying_what_to_change():
    w = plan(lambda c: c["distributed"]["processes"].update(imagenet=1))
    with pytest.raises(ConfigError, match=r"the student job of .*imagenet.* would ask for .* h .* more than "
                                          r"walltime\.max_job_hours = 48: raise distributed\.processes\.imagenet"):
        w.student_groups()
    with pytest.raises(ConfigError, match=r"the teacher job of resnet50 on imagenet would ask for 51\.\d h"):
        w.job_resources("teacher", "imagenet", "resnet50", "ES35")


@pytest.mark.slow
def test_dry_run_through_the_slurm_profile(tmp_path):
    """`snakemake -n --profile profiles/slurm` on the paper config: every job to SLURM asks for at most
    max_job_hours; every ImageNet job for 8 GPUs; the ImageNet MLL teachers are imports of
    torchvision's IMAGENET1K_V1 weights (fetched by the local rule pretrained_weights), not training."""
    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    from cluster_request import dry_run, planned_jobs, summary

    jobs = planned_jobs(dry_run(REPO / "config" / "config.yaml"))
    remote = [j for j in jobs if not j["local"]]
    assert remote and max(j["runtime"] for j in remote) <= 48 * 60
    imagenet = [j for j in remote if '"kind":"imagefolder","root":"data/imagenet"' in j.get("shell", "")]
    analyses = [j for j in imagenet if j["rule"] in ("class_cmi", "eigen_cam")]   # Table 8, Figures 3, 10-13
    assert len(imagenet) == 40 and len(analyses) == 4
    assert all(j["gpu"] == (1 if j in analyses else 8) for j in imagenet)
    assert all(j["gpu"] == 1 for j in remote if j not in imagenet and j["rule"] != "synthetic")
    mll = [j for j in imagenet if j["rule"] == "teacher" and j["wildcards"]["variant"] == "MLL"]
    assert len(mll) == 2
    for job in mll:
        spec = json.loads(job["shell"].split("--spec '")[1].split("'")[0])
        assert spec["stage"] == "import" and spec["source"] == "torchvision:IMAGENET1K_V1"
    fetches = [j for j in jobs if j["rule"] == "pretrained_weights"]
    assert len(fetches) == 2 and all(j["local"] for j in fetches)
    assert {j["wildcards"]["weights"] for j in fetches} == {"ResNet34_Weights.IMAGENET1K_V1",
                                                            "ResNet50_Weights.IMAGENET1K_V1"}
    assert summary(jobs)["jobs"] == len(remote)
