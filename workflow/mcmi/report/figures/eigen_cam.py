"""Figures 3 and 10-13 (§6.1, appendix A.10): Eigen-CAM maps of the MLL and MCMI (λ*) ImageNet teachers on
the same seeded images -- 4 toy terriers (Figure 3) and 24 images of each class: mountain tent (Figure 10),
goldfish (11), bee eater (12), toy terrier (13). One experiment, ``experiments.eigen_cam``, five targets.

The maps come from the grad-cam package's ``EigenCAM`` on the last block of the last stage, with the SVD's
sign oriented so that the first component's projection has a non-negative covariance with the channel-mean
activation (analysis/cam.py): a map is never shown inverted. Images are drawn per class with the seed and
the class's ImageNet index alone, so both teachers see the same ones and Figure 3's four are the first four
of Figure 13's. The paper states neither teacher, layer nor split: ours are resnet50, ``layer4[-1]``, the
validation images."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from mcmi.data.imagenet_classes import PAPER_CLASSES, class_folders_spec
from mcmi.pipeline.config import ConfigError
from mcmi.pipeline.naming import MCMI, MLL, VARIANTS, Variant
from mcmi.pipeline.specs import CamSpec
from mcmi.report.figures import common
from mcmi.report.figures.common import plotting
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import ConfigView, Experiment, FigureSpec

EXPERIMENT = "eigen_cam"
COLUMNS = 6            # images a row in Figures 10-13 (24 images: 4 x 6 per teacher, as in the paper)
FIGURE3_IMAGES = 4     # Figure 3: the paper's four toy terriers, the first of Figure 13's draw


def _jobs(w: ConfigView, exp: Experiment) -> list[CamSpec]:
    """One Eigen-CAM job per teacher (MLL, MCMI λ*): ``images`` images of each of the four classes."""
    ds, teacher, jobs = exp["dataset"], exp["teacher"], []
    for variant in VARIANTS:
        out = w.path("cam", dataset=ds, teacher=teacher, variant=variant)
        fields = w.job_fields(ds, exp["seed"], out, {"dataset": ds, "teacher": teacher,
                                                     **Variant.parse(variant).run_fields()}, one_process=True)
        jobs.append(CamSpec(**{**fields, "resume": None}, model=teacher, checkpoint=w.teacher_model(ds, teacher, variant),
                            classes=class_folders_spec(list(PAPER_CLASSES), exp["folders"]), images=exp["images"],
                            split=exp["split"], image_size=exp.get("image_size"),
                            out_maps=w.path("cam_maps", dataset=ds, teacher=teacher, variant=variant)))
    return jobs


def _check(w: ConfigView, exp: Experiment, key: str) -> None:
    from mcmi.models.zoo import IMAGENET_MODEL_NAMES

    if exp["teacher"] not in IMAGENET_MODEL_NAMES:
        raise ConfigError(f"{key}.teacher: Eigen-CAM reads the last stage of an ImageNet model of the zoo "
                          f"{list(IMAGENET_MODEL_NAMES)}, not {exp['teacher']!r}")
    kind = w.config["datasets"][exp["dataset"]]["kind"]
    if kind not in ("imagefolder", "demo_imagefolder"):
        raise ConfigError(f"{key}.dataset: {exp['dataset']!r} is a {kind} dataset; the ImageNet classes need an "
                          f"image folder (kind imagefolder, or demo_imagefolder with {key}.folders)")


def _maps(record: MetricsRecord, key: str):
    """The images (N, H, W, 3 uint8) and maps (N, H, W) of class ``key`` from a run's .npz beside its metrics,
    refused when the file is not the one the run wrote (its recorded digest)."""
    import numpy as np

    from mcmi.identity import output_problem

    path = Path(record.path).with_name(str(record.need("final", "maps_file")))
    if record.provenance.get("outputs"):
        problem = output_problem({"provenance": record.provenance}, "maps", path)
        if problem:
            raise ValueError(f"{record.path}: {problem}")
    elif not path.is_file():
        raise ValueError(f"{record.path}: its maps file {path} is missing")
    with np.load(path) as data:
        if f"maps_{key}" not in data:
            raise ValueError(f"{path}: no maps of class {key!r}")
        return data[f"images_{key}"], data[f"maps_{key}"].astype(np.float32)


def _runs(records: list[MetricsRecord], figure: int) -> dict[str, MetricsRecord]:
    runs = {r.need("run", "variant"): r for r in of_stage(records, "eigen_cam")}
    missing = [v for v in (MLL, MCMI) if v not in runs]
    if missing:
        raise ValueError(f"figure {figure}: no Eigen-CAM run of the {' and '.join(missing)} teacher among the "
                         f"metrics files")
    return runs


def _class_entry(record: MetricsRecord, key: str) -> dict:
    for entry in record.need("final", "classes"):
        if entry.get("class") == key:
            return entry
    raise ValueError(f"{record.path}: missing required key 'final.classes[class={key}]'")


def _overlay(ax, image, cam) -> None:
    ax.imshow(image)
    ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def _label(record: MetricsRecord, entry: dict, count: int) -> str:
    correct = sum(p == entry["label"] for p in entry["predicted"][:count])
    name = "MCMI (λ*)" if record.run["variant"] == MCMI else record.run["variant"]
    return f"{name} teacher ({record.run.get('teacher', '')})\n{correct} of {count} predicted '{entry['name']}'"


def _draw_class(key: str, figure: int, records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """The MLL teacher's maps (a block of 6 columns) beside the MCMI teacher's, image by image."""
    runs = _runs(records, figure)
    plt, _, _ = plotting()
    (mll_images, mll_maps), (_, mcmi_maps) = _maps(runs[MLL], key), _maps(runs[MCMI], key)
    count = len(mll_images)
    rows, columns = math.ceil(count / COLUMNS), min(COLUMNS, count)
    fig = plt.figure(figsize=(2 * max(columns, 4) * 1.15 + 0.4, rows * 1.2 + 0.6))   # room for the two titles
    blocks = fig.subfigures(1, 2, wspace=0.04)
    for block, variant, maps in zip(blocks, (MLL, MCMI), (mll_maps, mcmi_maps)):
        axes = block.subplots(rows, columns, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i < count:
                _overlay(ax, mll_images[i], maps[i])
            else:
                ax.set_visible(False)
        block.suptitle(_label(runs[variant], _class_entry(runs[variant], key), count), fontsize="small")
    common.save(fig, out_prefix, tight_layout=False, crop=True)


def _draw_figure3(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """The first four toy terriers of the draw: the MLL teacher's maps above the MCMI teacher's."""
    runs = _runs(records, 3)
    plt, _, _ = plotting()
    images, mll_maps = _maps(runs[MLL], "toy_terrier")
    _, mcmi_maps = _maps(runs[MCMI], "toy_terrier")
    count = min(FIGURE3_IMAGES, len(images))
    fig, axes = plt.subplots(2, count, figsize=(1.9 * count + 0.8, 4.2), squeeze=False)
    for row, (variant, maps) in enumerate(((MLL, mll_maps), (MCMI, mcmi_maps))):
        for j in range(count):
            _overlay(axes[row, j], images[j], maps[j])
        axes[row, 0].set_ylabel("MCMI (λ*)" if variant == MCMI else variant)
    entry = _class_entry(runs[MLL], "toy_terrier")
    fig.suptitle(f"{entry['name']}: {count} images, {runs[MLL].run.get('teacher', '')} teachers", fontsize="small")
    common.save(fig, out_prefix, crop=True)


CAPTION = ("Eigen-CAM maps (grad-cam's EigenCAM on the last block of the last stage, the SVD's sign oriented so "
           "that no map is shown inverted) of the MLL and MCMI (λ*) ImageNet teachers on the same seeded "
           "validation images")
CLASS_FIGURES = {10: "mountain_tent", 11: "goldfish", 12: "bee_eater", 13: "toy_terrier"}

FIGURES = [
    FigureSpec(3, f"{CAPTION}: the first 4 toy-terrier images of Figure 13's draw, MLL teacher above, MCMI "
                  "below.", inputs=lambda w, exp: [], jobs=_jobs, draw=_draw_figure3, paper_dataset="imagenet",
               experiment=EXPERIMENT, check=_check),
    *[FigureSpec(n, f"{CAPTION}: 24 images of class '{PAPER_CLASSES[key].name}' (ImageNet index "
                    f"{PAPER_CLASSES[key].index}, {PAPER_CLASSES[key].wnid}), the MLL teacher's maps (left) beside "
                    "the MCMI teacher's (right), image by image.",
                 inputs=lambda w, exp: [], jobs=_jobs, draw=partial(_draw_class, key, n), paper_dataset="imagenet",
                 experiment=EXPERIMENT, check=_check)
      for n, key in CLASS_FIGURES.items()],
]
