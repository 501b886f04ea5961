"""The synthetic Gaussian task of Table 5 (paper appendix A.6): data, Bayes posterior, metrics and config.

Task: K classes with uniform prior, x | y=k ~ N(mu_k, sigma^2 I) in D dimensions, mu_k entries drawn
uniformly from {-dmu, 0, +dmu}. The Bayes posterior P*(y|x) is known exactly, so one can measure how far
a teacher's output (the target a student learns from) is from it.

Presets. Two named conventions (:data:`PRESETS`), each an explicit set of config keys that user keys
override: ``as_written`` follows appendix A.6 as printed (sigma is the standard deviation, split 0.9/0.05/0.05,
Adam, last-epoch models, Pdist over the test set); ``authors_code`` follows Ren et al.'s public toy-Gaussian
notebooks, which the paper cites for the task (sigma is the variance, split 0.05/0.05/0.9 = 5k/5k/90k, SGD
with momentum 0.9 at a constant lr, the student of the best validation accuracy kept, Pdist over the
training points). The MCMI fine-tuning and the lambda selection are the same under both.

Data seed. ``task_seed`` fixes one sign pattern s in {-1,0,1}^{K x D} (mu = dmu * s, so the four tasks
differ only in scale) and one data sample (labels and the standard-normal noise, shared across dmu). This
matches the paper's tiny stds (e.g. 0.07 points of GroundTruth accuracy at dmu=0.5, while resampling the
5,000 test points alone would give ~0.7), i.e. one fixed data set per dmu.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

TARGETS = ("GroundTruth", "MCMI_KD", "MLL_KD", "OneHot")  # what the four students of a seed learn from
SPLITS = ("train", "val", "test")

DEFAULTS: dict[str, Any] = {
    "num_points": 100_000,
    "num_classes": 10,
    "dim": 30,
    "sigma": 4.0,
    "noise_param": "std",
    "split": [0.9, 0.05, 0.05],
    "hidden": 128,
    "epochs": 100,
    "batch_size": 32,
    "lr": 5e-4,
    "optimizer": "adam",
    "momentum": 0.9,
    "lr_schedule": "constant",
    "model_selection": "last",
    "pdist_split": "test",
    "mcmi_epochs": 10,
    "mcmi_lr": 1e-4,
    "lambda_grid": [0.05, 0.1, 0.15, 0.2, 0.25],
    "lambda_criterion": "val_pdist",
    "seeds": [0, 1, 2, 3, 4],
    "task_seed": 0,
    "log_every": 10,
    "threads": 2,
    "kernel": "auto",
}

# The named conventions of the task: each is the explicit key set it sets; a config's own keys override them.
PRESETS: dict[str, dict[str, Any]] = {
    "as_written": {"noise_param": "std", "split": [0.9, 0.05, 0.05], "optimizer": "adam", "lr_schedule": "constant",
                   "model_selection": "last", "pdist_split": "test"},
    "authors_code": {"noise_param": "variance", "split": [0.05, 0.05, 0.9], "optimizer": "sgd", "momentum": 0.9,
                     "lr_schedule": "constant", "model_selection": "best_val_acc", "pdist_split": "train"},
}
DEFAULT_PRESET = "as_written"
# The paper's scale (A.6): only a run at this scale (and 5 seeds) may sit beside a published cell.
PAPER_SCALE: dict[str, Any] = {"num_points": 100_000, "num_classes": 10, "dim": 30, "sigma": 4.0, "hidden": 128,
                               "epochs": 100, "batch_size": 32, "lr": 5e-4}
PAPER_SEEDS = 5

KERNELS = ("auto", "cpp", "torch")
LAMBDA_CRITERIA = ("val_pdist", "val_nll")
CHOICES: dict[str, tuple[str, ...]] = {
    "noise_param": ("std", "variance"), "optimizer": ("adam", "sgd"), "lr_schedule": ("constant", "cosine"),
    "model_selection": ("last", "best_val_acc"), "pdist_split": ("test", "train"), "kernel": KERNELS,
    "lambda_criterion": LAMBDA_CRITERIA,
}

# sample_gaussian seeds its generator with seed + SAMPLE_SEED_OFFSET, so the data sample's stream differs
# from task_means' (seeded with task_seed itself) although both come from the one task_seed.
SAMPLE_SEED_OFFSET = 1


# --------------------------------------------------------------------------------------------- config
def resolve_config(config: dict[str, Any], preset: str = DEFAULT_PRESET) -> dict[str, Any]:
    """``config`` over the ``preset``'s keys over :data:`DEFAULTS`; unknown keys, an unknown preset and bad
    choices raise ValueError naming the key."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic config keys: {sorted(unknown)}")
    cfg = {**DEFAULTS, **PRESETS[preset], **config}
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise ValueError(f"{key} must be one of {choices}, got {cfg[key]!r}")
    if len(cfg["split"]) != 3 or any(part <= 0 for part in cfg["split"]) or abs(sum(cfg["split"]) - 1) > 1e-6:
        raise ValueError(f"split must be three positive fractions (train, val, test) summing to 1, "
                         f"got {cfg['split']}")
    if any(float(lam) < 0 for lam in cfg["lambda_grid"]):
        raise ValueError(f"lambda_grid entries must be >= 0, got {cfg['lambda_grid']}")
    return cfg


def scale_of(cfg: dict[str, Any]) -> str:
    """"paper" when a resolved config runs at the paper's scale (:data:`PAPER_SCALE`, 5 seeds), else "reduced"."""
    same = all(float(cfg[key]) == float(value) for key, value in PAPER_SCALE.items())
    return "paper" if same and len(cfg["seeds"]) == PAPER_SEEDS else "reduced"


# ----------------------------------------------------------------------------------------------- data
def task_means(num_classes: int, dim: int, delta_mu: float, task_seed: int) -> torch.Tensor:
    """Class means (K, D), float64: entries uniform on {-dmu, 0, +dmu}; the sign pattern depends on
    ``task_seed`` only, so tasks with different dmu are rescalings of each other."""
    gen = torch.Generator().manual_seed(task_seed)
    signs = torch.randint(-1, 2, (num_classes, dim), generator=gen)
    return delta_mu * signs.to(torch.float64)


def sample_gaussian(
    means: torch.Tensor, sigma: float, num_points: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_points`` samples (x float32 (N, D), y int64 (N,)), labels uniform over the classes."""
    gen = torch.Generator().manual_seed(seed + SAMPLE_SEED_OFFSET)
    labels = torch.randint(0, means.shape[0], (num_points,), generator=gen)
    noise = torch.randn(num_points, means.shape[1], generator=gen, dtype=torch.float64)
    return (means[labels] + sigma * noise).to(torch.float32), labels


def noise_std(sigma: float, noise_param: str) -> float:
    """The noise standard deviation: ``sigma`` itself ("std") or its square root ("variance", Ren et al.'s
    NOISE: x = mu + sqrt(NOISE) * eps)."""
    if noise_param == "std":
        return float(sigma)
    if noise_param == "variance":
        return math.sqrt(sigma)
    raise ValueError(f"noise_param must be 'std' or 'variance', got {noise_param!r}")


def bayes_posterior(x: torch.Tensor, means: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact P*(y|x) (N, K) in float64 for equal priors: softmax_y(-||x - mu_y||^2 / (2 sigma^2))."""
    x = x.to(torch.float64)
    sq_dist = torch.cdist(x, means.to(torch.float64)).square()
    return torch.softmax(-sq_dist / (2.0 * sigma**2), dim=1)


def split_sizes(num_points: int, split: list[float]) -> tuple[int, int, int]:
    """(train, val, test) sizes; the test split takes the rounding remainder."""
    n_train, n_val = round(split[0] * num_points), round(split[1] * num_points)
    return n_train, n_val, num_points - n_train - n_val


@dataclass(frozen=True)
class TaskData:
    """One data set of the task at one dmu, cut into :data:`SPLITS` (in that order along the sample)."""

    noise_std: float
    x: dict[str, torch.Tensor]        # split -> inputs (n, D), float32
    y: dict[str, torch.Tensor]        # split -> labels (n,), int64
    p_star: dict[str, torch.Tensor]   # split -> Bayes posterior (n, K), float64

    @classmethod
    def generate(cls, cfg: dict[str, Any], delta_mu: float) -> "TaskData":
        """The data set of a resolved config at ``delta_mu`` (means and sample from ``cfg["task_seed"]``)."""
        std = noise_std(cfg["sigma"], cfg["noise_param"])
        means = task_means(cfg["num_classes"], cfg["dim"], delta_mu, cfg["task_seed"])
        x, y = sample_gaussian(means, std, cfg["num_points"], cfg["task_seed"])
        n_train, n_val, _ = split_sizes(cfg["num_points"], cfg["split"])
        parts = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val),
                 "test": slice(n_train + n_val, None)}
        xs = {name: x[part] for name, part in parts.items()}
        return cls(noise_std=std, x=xs, y={name: y[part] for name, part in parts.items()},
                   p_star={name: bayes_posterior(xs[name], means, std) for name in SPLITS})

    def size(self, split: str) -> int:
        """The number of points in ``split``."""
        return len(self.y[split])


# -------------------------------------------------------------------------------------------- metrics
def pdist(reference: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(Frobenius norm of reference - target over all rows, mean per-row L2 norm)."""
    diff = reference.to(torch.float64) - target.to(torch.float64)
    return float(torch.linalg.norm(diff)), float(diff.norm(dim=-1).mean())


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((probs.argmax(-1) == labels).to(torch.float64).mean())
