"""The stages the appendix experiments added, on tiny inputs: a teacher fine-tuned with a regulariser
instead of the CMI term (Figure 7), a teacher of a labelled subset and its MCMI fine-tune (Figure 9), the
teacher's mean output entropy in the measure stage, and the experiments' own stages (t-SNE, per-class CMI,
Eigen-CAM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mcmi.cmi import collect_probs, entropy
from mcmi.data.sources import load_dataset
from mcmi.data.subsets import labelled_indices
from mcmi.identity import file_digest
from mcmi.models import create_model, load_repdistiller_checkpoint
from mcmi.stages import run_stage

DIGITS = {"kind": "digits", "image_size": 8, "max_train": 96, "max_test": 40}
RECIPE = {"epochs": 1, "lr": 0.05, "batch_size": 32, "milestones": []}


def _job(tmp_path: Path, name: str, stage: str, **fields) -> dict:
    folder = tmp_path / name
    return {"stage": stage, "dataset": DIGITS, "seed": 0, "device": "cpu",
            "out_metrics": str(folder / "metrics.json"), "resume": str(tmp_path / "_resume" / name / "last.pt"),
            "run": {"dataset": "digits", "teacher": "resnet8"}, **fields}


def _teacher(tmp_path: Path, name: str = "mll", **fields) -> str:
    spec = _job(tmp_path, name, "teacher", model="resnet8", recipe=RECIPE,
                out_model=str(tmp_path / name / "model.pt"), **fields)
    spec["run"]["variant"] = "MLL"
    run_stage(spec)
    return spec["out_model"]


def _metrics(path: str) -> dict:
    return json.loads(Path(path).read_text())


@pytest.mark.parametrize("objective, terms", [
    ({"objective": "entropy", "beta": 0.5}, {"entropy": 0.5}),
    ({"objective": "label_smoothing", "eps": 0.1}, {"eps": 0.1}),
    ({"objective": "label_smoothing_reverse_kl", "eps": 0.1, "weight": 0.2}, {"eps": 0.1, "weight": 0.2}),
])
def test_a_regularised_teacher_is_fine_tuned_from_the_mll_checkpoint(tmp_path, objective, terms):
    mll = _teacher(tmp_path)
    spec = _job(tmp_path, "reg", "regularized", model="resnet8", teacher_checkpoint=mll, objective=objective,
                recipe={**RECIPE, "schedule": "cosine"}, out_model=str(tmp_path / "reg" / "model.pt"))
    run_stage(spec)
    metrics = _metrics(spec["out_metrics"])
    assert metrics["run"]["stage"] == "regularized" and metrics["run"]["objective"] == objective["objective"]
    assert metrics["provenance"]["identity"]["inputs"]["teacher_checkpoint"] == file_digest(mll)
    assert metrics["provenance"]["outputs"]["model"] == file_digest(spec["out_model"])
    before, after = (torch.load(p, weights_only=True)["model"] for p in (mll, spec["out_model"]))
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_an_unknown_regulariser_is_refused_before_training(tmp_path):
    spec = _job(tmp_path, "reg", "regularized", model="resnet8", teacher_checkpoint=str(tmp_path / "x.pt"),
                objective={"objective": "dropout", "p": 0.5}, recipe=RECIPE, out_model=str(tmp_path / "m.pt"))
    with pytest.raises(ValueError, match="unknown teacher regulariser 'dropout'"):
        run_stage(spec)
    assert not (tmp_path / "_resume").exists()


def test_measure_records_the_mean_output_entropy(tmp_path):
    """train_entropy is the mean over the training set of H(softmax(logits / T)), computed directly here."""
    mll = _teacher(tmp_path)
    spec = _job(tmp_path, "measure", "measure", model="resnet8", checkpoint=mll, temperature=2.0)
    spec["run"]["variant"] = "MLL"
    run_stage(spec)
    final = _metrics(spec["out_metrics"])["final"]
    train, _ = load_dataset(DIGITS)
    model = create_model("resnet8", 10)
    load_repdistiller_checkpoint(model, mll)
    model.eval()
    probs, _ = collect_probs(model, train.batches(64), temperature=2.0)
    assert final["train_entropy"] == pytest.approx(float(entropy(probs.double()).mean()), rel=1e-9)
    assert 0 < final["train_entropy"] <= torch.log(torch.tensor(10.0)).item()


def test_a_teacher_of_a_labelled_subset_sees_only_those_images(tmp_path, monkeypatch):
    """The teacher's and its MCMI fine-tune's training sets are the class-balanced labelled subset
    (data.subsets.labelled_indices: 20 images, 2 a class); the test set is the whole test split."""
    import mcmi.stages

    seen = []
    fit = mcmi.stages.fit

    def recording_fit(model, objective, train, test, recipe, **kw):
        seen.append((train.labels.clone(), len(test)))
        return fit(model, objective, train, test, recipe, **kw)

    monkeypatch.setattr(mcmi.stages, "fit", recording_fit)
    labelled = {"count": 20, "seed": 3}
    mll = _teacher(tmp_path, "mll_lab", labelled=labelled)
    spec = _job(tmp_path, "mcmi_lab", "mcmi", model="resnet8", teacher_checkpoint=mll, lam=0.1, recipe=RECIPE,
                out_model=str(tmp_path / "mcmi_lab" / "model.pt"), labelled=labelled)
    spec["run"]["variant"] = "MCMI"
    run_stage(spec)
    train, test = load_dataset(DIGITS)
    expected = train.labels[labelled_indices(train.labels, 20, 3, 10)]
    assert len(seen) == 2
    for labels, test_size in seen:
        assert torch.equal(labels, expected) and test_size == len(test)
        assert torch.bincount(labels, minlength=10).tolist() == [2] * 10


def test_the_embedding_stage_maps_each_output_vector_to_a_point(tmp_path):
    """One 2-D point per test image, in the test set's order with its label; deterministic for a seed;
    'probs' and 'logits' embed different vectors; the split's accuracy and CMI beside them."""
    mll = _teacher(tmp_path)
    results = {}
    for name, extra in (("a", {}), ("b", {}), ("c", {"input": "logits"})):
        spec = _job(tmp_path, f"tsne_{name}", "embedding", model="resnet8", checkpoint=mll, perplexity=5.0, **extra)
        spec.pop("resume")
        spec["run"]["variant"] = "MLL"
        run_stage(spec)
        results[name] = _metrics(spec["out_metrics"])
    _, test = load_dataset(DIGITS)
    final = results["a"]["final"]
    assert final["n_points"] == len(test) == 40 and final["labels"] == test.labels.tolist()
    assert len(final["points"]) == 40 and all(len(p) == 2 for p in final["points"])
    assert final["points"] == results["b"]["final"]["points"]                  # same seed, same map
    assert final["points"] != results["c"]["final"]["points"] and results["c"]["final"]["input"] == "logits"
    assert 0 <= final["split_acc"] <= 100 and final["split_cmi"] >= 0 and final["split_ll"] <= 0
    assert results["a"]["provenance"]["identity"]["inputs"]["checkpoint"] == file_digest(mll)


def test_the_embedding_stage_refuses_bad_settings_before_any_work(tmp_path):
    spec = _job(tmp_path, "tsne", "embedding", model="resnet8", checkpoint=str(tmp_path / "none.pt"), input="softmax")
    with pytest.raises(ValueError, match=r"embedding input must be one of \['probs', 'logits'\], got 'softmax'"):
        run_stage(spec)
    mll = _teacher(tmp_path)
    spec = _job(tmp_path, "tsne", "embedding", model="resnet8", checkpoint=mll, perplexity=40.0)
    with pytest.raises(ValueError, match=r"perplexity must be in \(0, 40\)"):
        run_stage(spec)


def _imagefolder(tmp_path: Path) -> dict:
    from mcmi.data.sources import write_demo_image_folder

    root = tmp_path / "folder"
    write_demo_image_folder(root, per_class=4, image_size=16)
    return {"kind": "demo_imagefolder", "root": str(root), "image_size": 16, "per_class": 4}


def _random_checkpoint(tmp_path: Path, model: str, classes: int, sharpen: float = 1.0) -> str:
    """A randomly initialised zoo model in RepDistiller's layout; ``sharpen`` scales its classifier, so that
    its outputs are far from uniform (a CMI well above float32's rounding)."""
    torch.manual_seed(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    net = create_model(model, classes)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.startswith("fc."):
                parameter.mul_(sharpen)
    path = tmp_path / f"{model}.pt"
    torch.save({"model": net.state_dict()}, path)
    return str(path)


def test_per_class_cmi_of_the_mapped_folders_against_a_direct_computation(tmp_path):
    """Folders n00000001 and n00000003 play goldfish and toy terrier: each class's CMI is the mean KL of its
    training images' outputs to their own mean, computed here by hand; the label and image count are kept."""
    dataset = _imagefolder(tmp_path)
    checkpoint = _random_checkpoint(tmp_path, "resnet18", 10, sharpen=30.0)
    spec = {"stage": "class_cmi", "dataset": dataset, "seed": 0, "device": "cpu", "model": "resnet18",
            "checkpoint": checkpoint, "out_metrics": str(tmp_path / "classes.json"),
            "classes": [{"class": "goldfish", "folder": "n00000001"}, {"class": "toy_terrier", "folder": "n00000003"}],
            "run": {"dataset": "demo_imagenet", "teacher": "resnet18", "variant": "MLL"}}
    run_stage(spec)
    found = {c["class"]: c for c in _metrics(spec["out_metrics"])["final"]["classes"]}
    train, _ = load_dataset(dataset)
    model = create_model("resnet18", 10)
    load_repdistiller_checkpoint(model, checkpoint)
    model.eval()
    for key, label, index in (("goldfish", 1, 1), ("toy_terrier", 3, 158)):
        images = train.subset((train.labels == label).nonzero().flatten())
        with torch.no_grad():
            probs = torch.cat([torch.softmax(model(b.x).float(), dim=1).double() for b in images.batches(8)])
        centroid = probs.mean(dim=0)
        expected = (torch.xlogy(probs, probs) - torch.xlogy(probs, centroid)).sum(dim=1).mean()   # 0 log 0 = 0
        assert expected > 0.01 and found[key]["cmi"] == pytest.approx(float(expected), rel=1e-6)
        assert (found[key]["label"], found[key]["images"], found[key]["imagenet_index"]) == (label, 4, index)


def test_per_class_cmi_names_a_missing_folder(tmp_path):
    dataset = _imagefolder(tmp_path)
    spec = {"stage": "class_cmi", "dataset": dataset, "seed": 0, "device": "cpu", "model": "resnet18",
            "checkpoint": _random_checkpoint(tmp_path, "resnet18", 10), "out_metrics": str(tmp_path / "c.json"),
            "classes": [{"class": "goldfish", "folder": "n01443537"}]}
    with pytest.raises(ValueError, match=r"class 'goldfish': no folder 'n01443537' under .*folder/train \(10 class"):
        run_stage(spec)


def _cam_spec(tmp_path: Path, dataset: dict, checkpoint: str, name: str, images: int, variant: str = "MLL") -> dict:
    folder = tmp_path / name
    classes = [{"class": key, "folder": f"n0000000{i + 1}"}
               for i, key in enumerate(("goldfish", "bee_eater", "toy_terrier", "mountain_tent"))]
    return {"stage": "eigen_cam", "dataset": dataset, "seed": 0, "device": "cpu", "model": "resnet18",
            "checkpoint": checkpoint, "out_metrics": str(folder / "eigen_cam.json"),
            "out_maps": str(folder / "eigen_cam.npz"), "classes": classes, "images": images, "image_size": 64,
            "run": {"dataset": "demo_imagenet", "teacher": "resnet18", "variant": variant}}


def test_eigen_cam_stage_writes_maps_of_seeded_nested_draws_and_the_figures_read_them(tmp_path):
    """Per class: the images drawn by seed and class alone (a draw of 2 is the first 2 of a draw of 3, the
    same for another checkpoint), their maps in [0, 1] at the image size and the images as shown, in an .npz
    whose digest the metrics record; Figures 3 and 13 are drawn from two such runs."""
    import numpy as np

    from mcmi.report import make_figure

    dataset = _imagefolder(tmp_path)
    mll = _random_checkpoint(tmp_path, "resnet18", 10)
    runs = {}
    for name, images, checkpoint, variant in (("mll", 3, mll, "MLL"), ("small", 2, mll, "MLL"),
                                              ("mcmi", 3, _random_checkpoint(tmp_path / "x", "resnet18", 10, 3.0),
                                               "MCMI")):
        spec = _cam_spec(tmp_path, dataset, checkpoint, name, images, variant)
        run_stage(spec)
        runs[name] = (spec, _metrics(spec["out_metrics"]))
    spec, metrics = runs["mll"]
    classes = {c["class"]: c for c in metrics["final"]["classes"]}
    assert classes["toy_terrier"]["imagenet_index"] == 158 and classes["toy_terrier"]["label"] == 3
    small = {c["class"]: c for c in runs["small"][1]["final"]["classes"]}
    other = {c["class"]: c for c in runs["mcmi"][1]["final"]["classes"]}
    for key, entry in classes.items():
        assert small[key]["indices"] == entry["indices"][:2] and other[key]["indices"] == entry["indices"]
        assert len(set(entry["indices"])) == 3
    assert metrics["provenance"]["outputs"]["maps"] == file_digest(spec["out_maps"])
    with np.load(spec["out_maps"]) as data:
        images, maps = data["images_toy_terrier"], data["maps_toy_terrier"].astype(np.float32)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert maps.shape == (3, 64, 64) and maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0.5
    paths = [runs["mll"][0]["out_metrics"], runs["mcmi"][0]["out_metrics"]]
    for n in (3, 13):
        make_figure(n, paths, str(tmp_path / f"figure{n}"))
        assert (tmp_path / f"figure{n}.png").stat().st_size > 1000
    Path(spec["out_maps"]).write_bytes(b"replaced")
    with pytest.raises(ValueError, match=r"its maps file .*eigen_cam\.npz is not the one it recorded"):
        make_figure(13, paths, str(tmp_path / "again"))


def test_eigen_cam_refuses_a_model_without_a_target_layer_and_too_few_images(tmp_path):
    dataset = _imagefolder(tmp_path)
    spec = _cam_spec(tmp_path, dataset, _random_checkpoint(tmp_path, "resnet18", 10), "many", images=5)
    with pytest.raises(ValueError, match=r"class 'goldfish': folder n00000001 has 4 val images, 5 are asked for"):
        run_stage(spec)


@pytest.mark.parametrize("run, expected", [
    ({"stage": "regularized", "variant": "ENT", "beta": 0.15}, "ENT0.15"),
    ({"stage": "regularized", "variant": "LSKL", "eps": 0.1, "ls_weight": 0.2}, "LSKL0.1w0.2"),
    ({"stage": "teacher", "variant": "MLL", "labeled_count": 500, "labeled_seed": 2}, "MLL_lab500s2"),
    ({"stage": "mcmi", "variant": "MCMI", "lam": 0.25, "labeled_count": 500, "labeled_seed": 2},
     "MCMI_lam0.25_lab500s2"),
])
def test_a_hand_run_student_records_its_appendix_teachers_variant(tmp_path, run, expected):
    """`mcmi student` files a student under the variant its teacher's metrics record, the new kinds too,
    and refuses a --variant that names another regulariser weight or labelled subset."""
    from mcmi.pipeline.handrun import teacher_variant

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    (tmp_path / "metrics.json").write_text(json.dumps({"run": run, "final": {}}))
    assert teacher_variant(str(checkpoint), None) == expected == teacher_variant(str(checkpoint), expected)
    other = expected.replace("500", "1000") if "_lab" in expected else expected.replace("0.1", "0.3", 1)
    with pytest.raises(ValueError, match=f"--variant {other} disagrees with"):
        teacher_variant(str(checkpoint), other)
