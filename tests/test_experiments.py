"""The appendix experiments as targets of the one DAG (issue 25): what each plans on the paper, demo and
test configs, the jobs they share with Tables 1-7 and Figures 1, 2, 4 (a student or teacher that one
experiment trains is never planned twice), and the config errors naming their keys."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from mcmi.pipeline import ConfigError, StudentCell, WorkflowConfig
from mcmi.pipeline.naming import Setting

REPO = Path(__file__).resolve().parents[1]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def plan(config: dict) -> WorkflowConfig:
    return WorkflowConfig(copy.deepcopy(config), REPO)


def without(config: dict, *experiments: str) -> dict:
    config = copy.deepcopy(config)
    for name in experiments:
        del config["experiments"][name]
    return config


def cells_of(w: WorkflowConfig, target: str) -> set[StudentCell]:
    return {cell for path in w.target_inputs(target) if (cell := w._cell(path)) is not None}


# ---------------------------------------------------------------- Figure 1 and Figure 8: temperatures
def test_figure1_at_the_kd_temperature_is_table1s_student():
    """Figure 1's T = 4 bar is Table 1's KD student (setting 'full', one job); the other T are 'T<t>'."""
    w = plan(load("config/config.yaml"))
    figure1, table1 = cells_of(w, "figure1"), cells_of(w, "table1")
    shared = figure1 & table1
    assert {(c.teacher, c.setting) for c in shared} == {(t, "full") for t in ("resnet56", "resnet110", "ResNet50")}
    assert len(shared) == 3 * 5                                      # 3 pairs x 5 seeds
    assert {c.setting for c in figure1 - table1} == {f"T{t}" for t in (1, 2, 3, 5, 6, 7, 8)}


def test_figure8_plans_only_the_cells_figure1_and_table1_do_not_train():
    """Figure 8's 3 pairs x 3 T_s x 8 T_t x {MLL, MCMI} x 5 seeds = 720 students; the T_t = T_s cells of the
    MLL teacher are Figure 1's (T1, T2) and Table 1's (T = 4), the MCMI teacher's T_t = T_s = 4 cell is
    Table 1's: 660 new students, and the other 60 are the same cells (same paths, same jobs)."""
    config = load("config/config.yaml")
    full, rest = plan(config), plan(without(config, "figure8"))
    figure8 = cells_of(full, "figure8")
    assert len(figure8) == 3 * 3 * 8 * 2 * 5 == 720
    new = set(full.student_cells()) - set(rest.student_cells())
    assert len(new) == 720 - 3 * 5 * (3 + 1) == 660
    reused = figure8 - new
    assert reused <= cells_of(full, "figure1") | cells_of(full, "table1")
    assert {(c.variant, c.setting) for c in reused} == {("MLL", "T1"), ("MLL", "T2"), ("MLL", "full"),
                                                         ("MCMI", "full")}
    settings = {Setting.parse(c.setting) for c in new}
    assert all(s.is_temperature for s in settings)
    assert sum(len(g.cells) for g in full.student_groups()) == sum(len(g.cells) for g in rest.student_groups()) + 660
    # a cell at two temperatures carries both, and figure8.kd_scale; one at T_t = T_s is Figure 1's spec
    spec = full.student_spec("cifar100", "resnet56", "resnet20", "KD", "MCMI", "Tt2_Ts4", 0)
    assert (spec.hparams["T_teacher"], spec.hparams["T_student"], spec.hparams["scale"]) == (2.0, 4.0, "ts2")
    assert spec.run["temperature_teacher"] == 2.0 and spec.run["temperature_student"] == 4.0
    assert "scale" not in full.student_spec("cifar100", "resnet56", "resnet20", "KD", "MLL", "T2", 0).hparams


def test_kd_setting_names_table1s_student_only_at_the_configured_temperature():
    w = plan(load("config/config.yaml"))
    assert w.kd_setting("resnet56", "resnet20", 4, 4) == "full"
    assert w.kd_setting("resnet56", "resnet20", 2, 2) == "T2"
    assert w.kd_setting("resnet56", "resnet20", 4, 2) == "Tt4_Ts2"
    config = load("config/config.yaml")
    config["methods"]["KD"]["T"] = 2
    assert plan(config).kd_setting("resnet56", "resnet20", 4, 4) == "T4"


@pytest.mark.parametrize("edit, key", [
    (lambda e: e["figure8"].update(kd_scale="t4"), r"config experiments\.figure8\.kd_scale"),
    (lambda e: e["figure8"].update(teacher_temperatures=[1, 0]), r"experiments\.figure8\.teacher_temperatures\[1\]"),
    (lambda e: e["figure8"].update(student_temperatures=[1e-9]), r"experiments\.figure8\.student_temperatures\[0\]"),
    (lambda e: e["figure8"].update(pairs=["resnet56->resnet99"]), r"experiments\.figure8\.pairs\[0\]"),
])
def test_config_errors_name_the_key(edit, key):
    config = load("config/test.yaml")
    edit(config["experiments"])
    with pytest.raises(ConfigError, match=key):
        plan(config)


def test_an_empty_block_takes_the_schema_defaults():
    config = load("config/config.yaml")
    config["experiments"]["figure8"] = {}
    w = plan(config)
    exp = w.config["experiments"]["figure8"]
    assert exp["teacher_temperatures"] == [1, 2, 3, 4, 5, 6, 7, 8] and exp["student_temperatures"] == [1, 2, 4]
    assert exp["pairs"] == ["resnet56->resnet20", "resnet110->resnet20", "ResNet50->MobileNetV2"]
    assert exp["kd_scale"] == "ts2" and exp["dataset"] == "cifar100"


# ---------------------------------------------------------------- Figure 5: teacher size
def test_figure5_plans_teachers_fine_tunes_and_students_sharing_the_grids():
    """resnet56's and resnet110's MLL teachers are Table 1's and their fine-tunes at λ = 0.25 the λ grid's
    (the same jobs); resnet32 and resnet152 are new teachers; students resnet8 by KD and CRD."""
    config = load("config/config.yaml")
    full, rest = plan(config), plan(without(config, "figure5"))
    inputs = full.target_inputs("figure5")
    measured = {(m["teacher"], m["variant"]) for p in inputs if (m := full.paths.parse("measure", p))}
    assert measured == {(t, v) for t in ("resnet32", "resnet56", "resnet110", "resnet152")
                        for v in ("MLL", "MCMI_lam0.25")}
    cells = cells_of(full, "figure5")
    assert len(cells) == 4 * 2 * 2 and {c.student for c in cells} == {"resnet8"}
    assert set(full.student_cells()) - set(rest.student_cells()) == cells
    grid = full.config["mcmi"]["lambda_grid"]["cifar100"]
    assert 0.25 in grid          # the grid's fine-tune: MCMI_lam0.25 of resnet56/110 is planned by Table 6 too
    spec = full.planned_spec(full.teacher_metrics("cifar100", "resnet152", "MCMI_lam0.25"))
    assert spec.lam == 0.25 and spec.teacher_checkpoint == full.teacher_model("cifar100", "resnet152", "MLL")
    assert spec.recipe["epochs"] == 20 and spec.recipe["schedule"] == "cosine"


def test_figure5_lambda_per_teacher_and_its_key_errors():
    config = load("config/config.yaml")
    config["experiments"]["figure5"]["lam_per_teacher"] = {"resnet110": 0.1}
    inputs = plan(config).target_inputs("figure5")
    assert any("/resnet110/MCMI_lam0.1/" in p for p in inputs) and not any("/resnet110/MCMI_lam0.25/" in p for p in inputs)
    config["experiments"]["figure5"]["lam_per_teacher"] = {"resnet20": 0.1}
    with pytest.raises(ConfigError, match=r"experiments\.figure5\.lam_per_teacher\.resnet20: not one of"):
        plan(config)
    config["experiments"]["figure5"]["lam_per_teacher"] = {"resnet110": 0.10000001}
    with pytest.raises(ConfigError, match=r"experiments\.figure5\.lam_per_teacher\.resnet110: 0\.10000001"):
        plan(config)
    config["experiments"]["figure5"] = {"student": "resnet9"}
    with pytest.raises(ConfigError, match=r"experiments\.figure5\.student: unknown model 'resnet9'"):
        plan(config)


# ---------------------------------------------------------------- Figure 7: regularised teachers
def test_figure7_adds_only_the_regularised_teachers_and_their_students():
    """The MLL and MCMI teachers, their measurements and KD students are Table 1's (the same jobs); Figure 7
    adds per pair an entropy teacher (β = the pair's λ*: vgg13 0.2, resnet56 0.15) and a label-smoothing
    teacher (ε = 0.1), fine-tuned from the MLL teacher with the MCMI recipe, and their KD students."""
    config = load("config/config.yaml")
    full, rest = plan(config), plan(without(config, "figure7"))
    new = set(full.student_cells()) - set(rest.student_cells())
    assert {(c.teacher, c.student, c.variant) for c in new} == {
        ("vgg13", "MobileNetV2", "ENT0.2"), ("vgg13", "MobileNetV2", "LS0.1"),
        ("resnet56", "resnet20", "ENT0.15"), ("resnet56", "resnet20", "LS0.1")}
    assert len(new) == 4 * 5 and {c.method for c in new} == {"KD"} and {c.setting for c in new} == {"full"}
    shared = cells_of(full, "figure7") & cells_of(full, "table1")
    assert {(c.teacher, c.variant) for c in shared} == {(t, v) for t in ("vgg13", "resnet56") for v in ("MLL", "MCMI")}
    spec = full.planned_spec(full.teacher_metrics("cifar100", "resnet56", "ENT0.15"))
    assert spec.STAGE == "regularized" and spec.objective == {"objective": "entropy", "beta": 0.15}
    assert spec.teacher_checkpoint == full.teacher_model("cifar100", "resnet56", "MLL")
    assert spec.recipe == full.mcmi_recipe("cifar100", "resnet56")          # the MCMI teacher's recipe
    assert full.rule_of(full.teacher_metrics("cifar100", "resnet56", "LS0.1")) == "mcmi_finetune"
    measured = {p for p in full.target_inputs("figure7") if full.paths.parse("measure", p)}
    assert len(measured) == 2 * 4


def test_figure7_label_smoothing_in_the_authors_form_and_key_errors():
    config = load("config/config.yaml")
    config["experiments"]["figure7"].update(ls_form="code", regularizers=["label_smoothing"])
    spec = plan(config).finetune_spec("cifar100", "vgg13", "LSKL0.1w0.2")
    assert spec.objective == {"objective": "label_smoothing_reverse_kl", "eps": 0.1, "weight": 0.2}
    assert any("/LSKL0.1w0.2/" in p for p in plan(config).target_inputs("figure7"))
    config["experiments"]["figure7"]["pairs"] = ["wrn_40_2->wrn_16_2", "resnet32x4->ShuffleV1", "resnet20->resnet8"]
    with pytest.raises(ConfigError, match=r"experiments\.figure7\.beta\.resnet20: missing"):
        plan(config)
    config = load("config/config.yaml")
    config["experiments"]["figure7"]["ls_weight"] = 0.3
    with pytest.raises(ConfigError, match=r"experiments\.figure7\.ls_weight: only used with ls_form 'code'"):
        plan(config)
    config["experiments"]["figure7"] = {"regularizers": ["dropout"]}
    with pytest.raises(ConfigError, match=r"config experiments\.figure7\.regularizers\[0\]"):
        plan(config)


# ---------------------------------------------------------------- Figure 9: semi-supervised
def test_figure9_teachers_of_labelled_subsets_and_their_students_under_one_dataset():
    """Per number of labels and seed: the MLL teacher of that subset ('MLL_lab<count>s<seed>'), its MCMI
    fine-tune ('MCMI_lam0.25_lab<count>s<seed>', centroids and training on the same subset) and a SemiKD
    student of each on every CIFAR-10 training image -- all under the dataset 'cifar10'."""
    w = plan(load("config/config.yaml"))
    cells = cells_of(w, "figure9")
    assert len(cells) == 4 * 3 * 2 and {(c.ds, c.teacher, c.student, c.method, c.setting) for c in cells} == \
        {("cifar10", "ResNet50", "ResNet18", "SemiKD", "full")}
    assert all(c.variant.endswith(f"_lab{c.variant.split('_lab')[1].split('s')[0]}s{c.seed}") for c in cells)
    teacher = w.planned_spec(w.teacher_metrics("cifar10", "ResNet50", "MLL_lab500s2"))
    assert teacher.STAGE == "teacher" and teacher.labelled.count == 500 and teacher.labelled.seed == 2
    assert teacher.recipe == w.recipe("cifar10", "teacher", "ResNet50")
    mcmi = w.planned_spec(w.teacher_metrics("cifar10", "ResNet50", "MCMI_lam0.25_lab500s2"))
    assert mcmi.STAGE == "mcmi" and mcmi.lam == 0.25 and mcmi.labelled == teacher.labelled
    assert mcmi.teacher_checkpoint == w.teacher_model("cifar10", "ResNet50", "MLL_lab500s2")
    assert mcmi.run == {"dataset": "cifar10", "teacher": "ResNet50", "variant": "MCMI", "lam": 0.25,
                        "labeled_count": 500, "labeled_seed": 2}
    student = w.student_spec("cifar10", "ResNet50", "ResNet18", "SemiKD", "MCMI_lam0.25_lab500s2", "full", 2)
    assert student.hparams["labeled_count"] == 500 and student.hparams["labeled_seed"] == 2
    assert student.teacher_checkpoint == w.teacher_model("cifar10", "ResNet50", "MCMI_lam0.25_lab500s2")
    assert student.few_shot is None                                  # the student sees every image
    assert "labelled" not in w.teacher_spec("cifar10", "ResNet50", "MLL").to_dict()   # other teachers unchanged


def test_figure9_key_errors():
    config = load("config/test.yaml")
    config["experiments"]["figure9"]["labels"] = [20, 5]
    with pytest.raises(ConfigError, match=r"experiments\.figure9\.labels\[1\]: 5 labelled images cannot hold"):
        plan(config)
    config["experiments"]["figure9"]["labels"] = [500]
    with pytest.raises(ConfigError, match=r"experiments\.figure9\.labels\[0\]: 500 is more than the 120"):
        plan(config)
    config["experiments"]["figure9"] = {"dataset": "digits", "method": "SemiSupervisedKD"}
    with pytest.raises(ConfigError, match=r"experiments\.figure9\.method: 'SemiSupervisedKD' has no entry"):
        plan(config)


# ---------------------------------------------------------------- Figure 6: t-SNE
def test_figure6_declares_its_tsne_jobs_on_the_shared_teachers():
    """Two t-SNE jobs (the experiment's own stage, its settings from its block) on the MLL teacher and the
    λ-grid teacher at 0.25 that Figure 4's and Table 6's plans already train; the rule's spec, the planned
    spec of the file and its rule name come from the declaration."""
    w = plan(load("config/config.yaml"))
    inputs = w.target_inputs("figure6")
    assert inputs == [f"results/cifar10/analysis/resnet56/{v}/tsne.json" for v in ("MLL", "MCMI_lam0.25")]
    spec = w.declared_spec(inputs[1])
    assert spec.STAGE == "embedding" and (spec.input, spec.perplexity, spec.seed, spec.split) == ("probs", 15.0, 0, "test")
    assert spec.checkpoint == w.teacher_model("cifar10", "resnet56", "MCMI_lam0.25") and spec.resume is None
    assert w.planned_spec(inputs[1]) == spec and w.rule_of(inputs[1]) == "embedding"
    assert 0.25 in w.config["mcmi"]["lambda_grid"]["cifar10"]       # the grid's fine-tune, one job
    with pytest.raises(ConfigError, match=r"no configured experiment plans a job writing .*/resnet20/MLL/tsne\.json"):
        w.declared_spec("results/cifar10/analysis/resnet20/MLL/tsne.json")
    config = load("config/config.yaml")
    config["experiments"]["figure6"]["input"] = "logits"
    changed = plan(config).declared_spec(inputs[1])
    assert changed.input == "logits" and changed.fingerprint() != spec.fingerprint()
    config["experiments"]["figure6"]["input"] = "softmax"
    with pytest.raises(ConfigError, match=r"config experiments\.figure6\.input"):
        plan(config)


# ---------------------------------------------------------------- Table 8: per-class CMI
def test_table8_declares_a_class_cmi_job_per_imagenet_teacher():
    """The MLL and MCMI (λ*) resnet50 teachers of Table 2 (the same jobs), each measured on the four
    classes' training images, the folders named by their WordNet ids; the demo maps four of its folders."""
    w = plan(load("config/config.yaml"))
    inputs = w.target_inputs("table8")
    assert inputs == [f"results/imagenet/measure/resnet50/{v}/classes.json" for v in ("MLL", "MCMI")]
    spec = w.declared_spec(inputs[1])
    assert spec.STAGE == "class_cmi" and spec.split == "train" and spec.temperature == 1.0
    assert spec.classes == [{"class": "goldfish", "folder": "n01443537"}, {"class": "bee_eater", "folder": "n01828970"},
                            {"class": "toy_terrier", "folder": "n02087046"},
                            {"class": "mountain_tent", "folder": "n03792972"}]
    assert spec.checkpoint == w.teacher_model("imagenet", "resnet50", "MCMI") and w.rule_of(inputs[0]) == "class_cmi"
    demo = plan(load("config/demo.yaml"))
    assert [c["folder"] for c in demo.declared_spec(demo.target_inputs("table8")[0]).classes] == \
        ["n00000001", "n00000002", "n00000003", "n00000004"]


def test_table8_key_errors():
    config = load("config/test.yaml")
    config["experiments"]["table8"]["dataset"] = "digits"
    with pytest.raises(ConfigError, match=r"experiments\.table8\.dataset: 'digits' is a digits dataset"):
        plan(config)
    config = load("config/test.yaml")
    config["experiments"]["table8"]["folders"]["bee_eater"] = "n00000002"
    with pytest.raises(ConfigError, match=r"experiments\.table8\.folders\.bee_eater: not one of"):
        plan(config)
    config["experiments"]["table8"]["folders"] = {"tench": "n00000000"}
    with pytest.raises(ConfigError, match=r"config experiments\.table8\.folders"):
        plan(config)


def test_an_experiment_whose_own_job_reads_the_lambda_star_teacher_plans_its_selection():
    """With Table 8 alone, the MCMI teacher it measures is still chosen from the λ grid by KD students
    (mcmi.lambda_selection.mode: select): those students are planned."""
    config = load("config/config.yaml")
    config["experiments"] = {"table8": config["experiments"]["table8"]}
    w = plan(config)
    selection = {(c.teacher, c.student, c.variant) for c in w.student_cells()}
    assert selection == {("resnet50", "mobilenet_v2", f"MCMI_lam{lam:g}") for lam in (0.05, 0.1, 0.15, 0.2, 0.3)}


# ---------------------------------------------------------------- Figures 3, 10-13: Eigen-CAM
def test_the_eigen_cam_figures_share_one_experiment_and_two_jobs():
    """Five targets from one block (experiments.eigen_cam): each plans the same two Eigen-CAM jobs, on the
    MLL and MCMI (λ*) resnet50 teachers of Table 2, 24 images of each of the four classes."""
    w = plan(load("config/config.yaml"))
    targets = [f"figure{n}" for n in (3, 10, 11, 12, 13)]
    assert all(t in w.targets() for t in targets)
    inputs = {t: w.target_inputs(t) for t in targets}
    assert all(paths == inputs["figure3"] for paths in inputs.values())
    assert inputs["figure3"] == [f"results/imagenet/analysis/resnet50/{v}/eigen_cam.json" for v in ("MLL", "MCMI")]
    spec = w.declared_spec(inputs["figure3"][1])
    assert spec.STAGE == "eigen_cam" and spec.images == 24 and spec.split == "val" and spec.image_size is None
    assert spec.out_maps.endswith("MCMI/eigen_cam.npz") and [c["class"] for c in spec.classes] == \
        ["goldfish", "bee_eater", "toy_terrier", "mountain_tent"]
    moved = dataclasses.replace(spec, out_maps="elsewhere.npz")
    assert moved.fingerprint() == spec.fingerprint()          # where the maps go is not what they are
    config = without(load("config/config.yaml"), "eigen_cam")
    assert not any(t in plan(config).targets() for t in targets)


def test_eigen_cam_key_errors():
    config = load("config/test.yaml")
    config["experiments"]["eigen_cam"]["teacher"] = "resnet56"
    with pytest.raises(ConfigError, match=r"experiments\.eigen_cam\.teacher: Eigen-CAM reads the last stage"):
        plan(config)
    config = load("config/test.yaml")
    config["experiments"]["eigen_cam"]["images"] = 0
    with pytest.raises(ConfigError, match=r"config experiments\.eigen_cam\.images"):
        plan(config)
