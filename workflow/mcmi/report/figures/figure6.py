"""Figure 6 (appendix A.4.1): what low and high CMI look like. A 2-D t-SNE of the output vectors of the
MLL teacher (low CMI) and its MCMI fine-tune (high CMI) on one split, coloured by class.

The paper maps the output *probabilities*; the authors' ``ZeroShot/TSNE.py`` fed the *logits* to
``TSNE(random_state=0, perplexity=15)`` on the CIFAR-10 test set (resnet56, λ = 0.25, the checkpoint
chosen on the test set; ours is the last one). ``input: probs|logits``, perplexity, seed and init are
config; the t-SNE is scikit-learn's (analysis/embedding.py). Each network's accuracy and CMI on the
split are in its panel's title."""

from __future__ import annotations

from mcmi.pipeline.naming import MLL, Variant, grid_variant
from mcmi.pipeline.specs import EmbeddingSpec
from mcmi.report.figures import common
from mcmi.report.figures.common import plotting, style
from mcmi.report.records import MetricsRecord, of_stage
from mcmi.report.spec import ConfigView, Experiment, FigureSpec

INPUT_WORDS = {"probs": "output probabilities", "logits": "logits"}


def _jobs(w: ConfigView, exp: Experiment) -> list[EmbeddingSpec]:
    """One t-SNE job per network: the MLL teacher and its MCMI fine-tune at ``lam`` (``MCMI_lam<λ>``)."""
    ds, teacher, jobs = exp["dataset"], exp["teacher"], []
    for variant in (MLL, grid_variant(exp["lam"])):
        out = w.path("embedding", dataset=ds, teacher=teacher, variant=variant)
        fields = w.job_fields(ds, exp["seed"], out, {"dataset": ds, "teacher": teacher,
                                                     **Variant.parse(variant).run_fields()}, one_process=True)
        jobs.append(EmbeddingSpec(**{**fields, "resume": None}, model=teacher,
                                  checkpoint=w.teacher_model(ds, teacher, variant), split=exp["split"],
                                  input=exp["input"], perplexity=float(exp["perplexity"]), init=exp["init"]))
    return jobs


def _draw(records: list[MetricsRecord], out_prefix: str, paper_dir: str) -> None:
    """Two scatter plots side by side (MLL, then MCMI), points coloured by their true class."""
    import numpy as np

    runs = sorted(of_stage(records, "embedding"), key=lambda r: r.run.get("lam") is not None)
    if not runs:
        raise ValueError("figure 6: no t-SNE (embedding) runs among the metrics files")
    plt, _, _ = plotting()
    with style():
        fig, axes = plt.subplots(1, len(runs), figsize=(5.0 * len(runs), 4.8), squeeze=False)
        for ax, run in zip(axes[0], runs):
            points = np.asarray(run.need("final", "points"), dtype=float)
            labels = np.asarray(run.need("final", "labels"))
            if points.shape != (len(labels), 2):
                raise ValueError(f"{run.path}: final.points must hold one (x, y) per label, got {points.shape}")
            scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=4, alpha=0.8,
                                 vmin=-0.5, vmax=9.5, linewidths=0)
            variant = "MCMI (λ = {:g})".format(run.run["lam"]) if run.run.get("lam") is not None else run.run["variant"]
            final = run.final
            ax.set_title(f"{run.run.get('teacher')} {variant}: CMI {final['split_cmi']:.4f}, acc "
                         f"{final['split_acc']:.2f} %", fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(scatter, ax=list(axes[0]), ticks=range(10), label="true class", shrink=0.8)
        first = runs[0].final
        common.footnote(fig, [f"t-SNE (scikit-learn) of the {INPUT_WORDS.get(first['input'], first['input'])} of the {first['n_points']} "
                              f"{first['split']} images, perplexity {first['perplexity']:g}, init {first['init']}; "
                              f"CMI and accuracy on the same images."])
        common.save(fig, out_prefix, tight_layout=False, crop=True)


FIGURE = FigureSpec(
    6, "t-SNE of the output vectors of a low-CMI network (the MLL teacher) and a high-CMI one (its MCMI "
       "fine-tune), CIFAR-10 test set, coloured by class; each panel gives the network's CMI and accuracy on "
       "those images. The paper says probabilities, the authors' script fed logits (experiments.figure6.input).",
    inputs=lambda w, exp: [], jobs=_jobs, draw=_draw, paper_dataset="cifar10", path_numbers=("lam",))
