"""The synthetic Gaussian task of Table 5 (paper appendix A.6), trained batched over seeds.

    task.py        the task: means, sampling, noise reading, Bayes posterior P*, splits, Pdist, accuracy;
                   the presets (as_written, authors_code) and resolve_config
    stack.py       MLPStack (M MLPs as one parameter buffer) and the stacked Adam/SGD
    training.py    train_stack (one epoch at a time, C++ kernel or batched torch), best-validation selection
    experiment.py  run_synthetic: teachers, MCMI fine-tuning, lambda selection, students, metrics JSON

The C++ epoch kernel is ``mcmi/kernels/mlp_stack.cpp`` (built on first use).
"""

from mcmi.synthetic.experiment import run_synthetic
from mcmi.synthetic.stack import MLPStack, StackedAdam, StackedSGD, make_mlp, make_optimizer, seeded_mlp
from mcmi.synthetic.task import (
    DEFAULT_PRESET,
    DEFAULTS,
    KERNELS,
    PAPER_SCALE,
    PAPER_SEEDS,
    PRESETS,
    TARGETS,
    TaskData,
    accuracy,
    bayes_posterior,
    noise_std,
    pdist,
    resolve_config,
    sample_gaussian,
    scale_of,
    split_sizes,
    task_means,
)
from mcmi.synthetic.training import BestValidation, epoch_lr, select_kernel, train_stack

__all__ = [
    "DEFAULT_PRESET", "DEFAULTS", "KERNELS", "PAPER_SCALE", "PAPER_SEEDS", "PRESETS", "TARGETS",
    "BestValidation", "MLPStack", "StackedAdam", "StackedSGD", "TaskData",
    "accuracy", "bayes_posterior", "epoch_lr", "make_mlp", "make_optimizer", "noise_std", "pdist",
    "resolve_config", "run_synthetic", "sample_gaussian", "scale_of", "seeded_mlp", "select_kernel",
    "split_sizes", "task_means", "train_stack",
]
