"""The synthetic Gaussian task (paper appendix A.6, Table 5), trained batched over seeds.

Task: K classes with uniform prior, x | y=k ~ N(mu_k, sigma^2 I) in D dimensions, mu_k entries drawn
uniformly from {-dmu, 0, +dmu}. The Bayes posterior P*(y|x) is known exactly, so one can measure how far
a teacher's output (the target a student learns from) is from it.

Presets. Two named conventions (:data:`PRESETS`), each an explicit set of config keys that user keys
override: ``as_written`` follows appendix A.6 as printed (sigma is the standard deviation, split 0.9/0.05/0.05,
Adam, last-epoch models, Pdist over the test set); ``authors_code`` follows Ren et al.'s public toy-Gaussian
notebooks, which the paper cites for the task (sigma is the variance, split 0.05/0.05/0.9 = 5k/5k/90k, SGD
with momentum 0.9 at a constant lr, the student of the best validation accuracy kept, Pdist over the
training points). The MCMI fine-tuning and the lambda selection are the same under both.

Seeds. ``task_seed`` fixes one sign pattern s in {-1,0,1}^{K x D} (mu = dmu * s, so the four tasks differ
only in scale) and one data sample (labels and the standard-normal noise, shared across dmu). The run
seeds change only initialisation and data order. This matches the paper's tiny stds (e.g. 0.07 points of
GroundTruth accuracy at dmu=0.5, while resampling the 5,000 test points alone would give ~0.7), i.e. one
fixed data set per dmu.

Speed. All models of a stage (5 seeds; 4 targets x 5 seeds; lambda grid x 5 seeds) are trained in one
process on one stack of parameters (:class:`MLPStack`, (M, in, out) weight views of one flat buffer).
Each member keeps its own initialisation (``torch.manual_seed(init_seed)`` then ``nn.Linear`` defaults,
as a separate run would do) and its own data order (``randperm`` from a generator seeded with its order
seed), so a member is the same computation as the plain loop :func:`train_reference`. Two kernels run
an epoch: the fused C++ one (``mcmi/kernels/mlp_stack.cpp``; each member runs its whole epoch with its
weights and Adam state in cache, and the matrix products are register-blocked) and the batched torch
one (:meth:`MLPStack.step_grads` plus :class:`StackedAdam`). Both are tested against torch.optim.
"""

from __future__ import annotations

import math
import time
from types import ModuleType
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.cmi import class_centroids, cmi_and_ll
from mcmi.kernels import mlp_stack
from mcmi.provenance import provenance, write_json_atomic

TARGETS = ("GroundTruth", "MCMI_KD", "MLL_KD", "OneHot")

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
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, used by both kernels

_CRITERIA = ("val_pdist", "val_nll")
_CHOICES = {"noise_param": ("std", "variance"), "optimizer": ("adam", "sgd"), "lr_schedule": ("constant", "cosine"),
            "model_selection": ("last", "best_val_acc"), "pdist_split": ("test", "train"), "kernel": KERNELS,
            "lambda_criterion": _CRITERIA}


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
    gen = torch.Generator().manual_seed(seed + 1)
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


# ---------------------------------------------------------------------------------------------- model
def make_mlp(dim: int, hidden: int, num_classes: int) -> nn.Sequential:
    """The 3-layer MLP (dim -> hidden -> hidden -> classes, ReLU)."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


def seeded_mlp(seed: int, dim: int, hidden: int, num_classes: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``make_mlp`` initialised after ``torch.manual_seed(seed)``, without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_mlp(dim, hidden, num_classes).to(dtype)


class MLPStack:
    """M independent 3-layer MLPs as one flat parameter buffer with (M, in, out) weight views.

    Forward and backward are written out (no autograd): the MLP is small enough, and it removes the
    graph overhead that dominates a CPU step at batch 32."""

    def __init__(self, weights: list[torch.Tensor]) -> None:
        """From stacked (M, in, out) weights and (M, 1, out) biases, layer by layer."""
        self.size = weights[0].shape[0]
        shapes = [tuple(w.shape[1:]) for w in weights]
        self.flat = torch.empty(sum(w.numel() for w in weights), dtype=weights[0].dtype)
        self.grad_flat = torch.zeros_like(self.flat)
        self.params, self.grads = self._views(self.flat, shapes), self._views(self.grad_flat, shapes)
        for view, weight in zip(self.params, weights):
            view.copy_(weight)

    @classmethod
    def from_models(cls, models: list[nn.Sequential]) -> "MLPStack":
        """Stack the Linear layers of ``models`` (member m = models[m])."""
        weights = []
        for layers in zip(*[[m for m in model if isinstance(m, nn.Linear)] for model in models]):
            weights.append(torch.stack([layer.weight.detach().t() for layer in layers]))
            weights.append(torch.stack([layer.bias.detach().unsqueeze(0) for layer in layers]))
        return cls(weights)

    def repeat(self, times: int) -> "MLPStack":
        """A new stack holding ``times`` copies of this one (copy-major: member c * M + m)."""
        return MLPStack([view.repeat(times, 1, 1) for view in self.params])

    def zeros_like_params(self) -> list[torch.Tensor]:
        """Zero tensors shaped like ``params`` (views of one new flat buffer), e.g. optimizer state."""
        return self.views_of(torch.zeros_like(self.flat))

    def views_of(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """(M, in, out) views of ``buffer`` (laid out like ``flat``), one per parameter tensor."""
        return self._views(buffer, [tuple(view.shape[1:]) for view in self.params])

    def _views(self, buffer: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
        views, offset = [], 0
        for rows, cols in shapes:
            count = self.size * rows * cols
            views.append(buffer[offset : offset + count].view(self.size, rows, cols))
            offset += count
        return views

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (M, N, K) for inputs x of shape (N, D) (shared) or (M, N, D)."""
        w1, b1, w2, b2, w3, b3 = self.params
        h = torch.relu(torch.matmul(x, w1) + b1)
        h = torch.relu(torch.baddbmm(b2, h, w2))
        return torch.baddbmm(b3, h, w3)

    @torch.no_grad()
    def probs(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Softmax outputs (M, N, K), float32, computed in chunks of the shared inputs x (N, D)."""
        return torch.cat([torch.softmax(self.logits(part), dim=-1) for part in x.split(chunk)], dim=1)

    def step_grads(
        self, x: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor | None, log_q: torch.Tensor | None
    ) -> torch.Tensor:
        """Write the gradients of the per-member mean loss on batch x (M, B, D) into ``grads``; return
        the per-member losses (M,). Loss: CE(targets, softmax(z)) - lam * KL(softmax(z) || q)."""
        w1, b1, w2, b2, w3, b3 = self.params
        g1, gb1, g2, gb2, g3, gb3 = self.grads
        h1 = torch.baddbmm(b1, x, w1).relu_()
        h2 = torch.baddbmm(b2, h1, w2).relu_()
        z = torch.baddbmm(b3, h2, w3)
        log_p = torch.log_softmax(z, dim=-1)
        p = log_p.exp()
        loss = -(targets * log_p).sum(-1).mean(-1)
        dz = p - targets
        if lam is not None:
            diff = log_p - log_q
            kl = (p * diff).sum(-1, keepdim=True)
            dz.sub_(lam * p * (diff - kl))
            loss = loss - lam.view(-1) * kl.mean((1, 2))
        dz.div_(x.shape[1])
        torch.bmm(h2.transpose(1, 2), dz, out=g3)
        torch.sum(dz, 1, keepdim=True, out=gb3)
        dh2 = torch.ops.aten.threshold_backward(torch.bmm(dz, w3.transpose(1, 2)), h2, 0)
        torch.bmm(h1.transpose(1, 2), dh2, out=g2)
        torch.sum(dh2, 1, keepdim=True, out=gb2)
        dh1 = torch.ops.aten.threshold_backward(torch.bmm(dh2, w2.transpose(1, 2)), h1, 0)
        torch.bmm(x.transpose(1, 2), dh1, out=g1)
        torch.sum(dh1, 1, keepdim=True, out=gb1)
        return loss


# ------------------------------------------------------------------------------------------ optimizers
class StackedAdam:
    """torch.optim.Adam(fused=True) (no weight decay, no amsgrad) on the flat buffer: one fused pass
    per step over all members, the same kernel torch.optim runs for each model's tensors."""

    def __init__(self, params: torch.Tensor, grads: torch.Tensor, betas: tuple[float, float] = ADAM_BETAS,
                 eps: float = ADAM_EPS) -> None:
        self.params, self.grads, self.betas, self.eps = [params], [grads], betas, eps
        self.exp_avg, self.exp_avg_sq = [torch.zeros_like(params)], [torch.zeros_like(params)]
        self.steps = [torch.zeros((), dtype=torch.float32)]

    def step(self, lr: float) -> None:
        self.steps[0] += 1
        torch._fused_adam_(self.params, self.grads, self.exp_avg, self.exp_avg_sq, [], self.steps, lr=lr,
                           beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
                           amsgrad=False, maximize=False)


class StackedSGD:
    """torch.optim.SGD (momentum, no dampening/nesterov/weight decay) on a flat buffer."""

    def __init__(self, params: torch.Tensor, grads: torch.Tensor, momentum: float) -> None:
        self.params, self.grads, self.momentum = params, grads, momentum
        self.buffer: torch.Tensor | None = None

    def step(self, lr: float) -> None:
        update = self.grads
        if self.momentum:
            if self.buffer is None:
                self.buffer = self.grads.clone()
            else:
                self.buffer.mul_(self.momentum).add_(self.grads)
            update = self.buffer
        self.params.add_(update, alpha=-lr)


def make_optimizer(stack: MLPStack, name: str, momentum: float) -> StackedAdam | StackedSGD:
    """The stacked optimizer called ``name`` ("adam" or "sgd")."""
    if name == "adam":
        return StackedAdam(stack.flat, stack.grad_flat)
    if name == "sgd":
        return StackedSGD(stack.flat, stack.grad_flat, momentum)
    raise ValueError(f"unknown optimizer {name!r}; expected 'adam' or 'sgd'")


# ------------------------------------------------------------------------------------------- training
def epoch_lr(lr: float, epoch: int, epochs: int, schedule: str) -> float:
    """Learning rate of 0-based ``epoch``: constant, or cosine annealed per epoch to 0."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def train_stack(
    stack: MLPStack,
    x: torch.Tensor,
    targets: torch.Tensor,
    order_seeds: list[int],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adam",
    momentum: float = 0.9,
    schedule: str = "constant",
    lam: torch.Tensor | None = None,
    log_centroids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    kernel: ModuleType | None = None,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    stage: str = "train",
    log_every: int = 10,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every member of ``stack`` on shared inputs x (N, D) against its soft targets (M, N, K).

    Member m visits the data in ``randperm`` order from a generator seeded ``order_seeds[m]`` (members
    with the same seed share the order); batches of ``batch_size``, the last one partial. With ``lam``
    (M,), ``log_centroids`` (M, K, K) and ``labels`` (N,) the loss is the MCMI objective CE - lam * KL(P_x
    || Q_y). ``kernel`` (from :func:`mcmi.kernels.mlp_stack`) runs each epoch in fused C++; None runs the
    batched torch steps. With ``val_data`` (x_val (V, D), y_val (V,)) every member's validation accuracy is
    measured after each epoch and each member ends with the weights of its epoch of best validation accuracy
    (the first such epoch, as a strict ``>`` keeps it); the history's epochs then carry ``val_acc`` per member
    and the last one ``best_epochs``. Raises RuntimeError on a non-finite loss or validation output. Returns
    one summary dict per epoch."""
    run_epoch = _epoch_runner(stack, x, targets, batch_size, optimizer, momentum, lam, log_centroids, labels, kernel)
    generators = {seed: torch.Generator().manual_seed(seed) for seed in dict.fromkeys(order_seeds)}
    history, start, num = [], time.perf_counter(), x.shape[0]
    best = None if val_data is None else BestValidation(stack)
    for epoch in range(epochs):
        perms_by_seed = {seed: torch.randperm(num, generator=gen) for seed, gen in generators.items()}
        perms = torch.stack([perms_by_seed[seed] for seed in order_seeds])
        rate = epoch_lr(lr, epoch, epochs, schedule)
        mean_loss = run_epoch(perms, rate) / num
        if not torch.isfinite(mean_loss).all():
            raise RuntimeError(f"non-finite loss in stage {stage!r} at epoch {epoch + 1}: {mean_loss.tolist()}")
        elapsed = time.perf_counter() - start
        entry = {"stage": stage, "epoch": epoch + 1, "lr": rate, "loss_mean": float(mean_loss.mean()),
                 "loss_min": float(mean_loss.min()), "loss_max": float(mean_loss.max()),
                 "elapsed_s": round(elapsed, 2)}
        if best is not None:
            entry["val_acc"] = best.update(epoch + 1, *val_data)
        history.append(entry)
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            log(f"[{stage}] epoch {epoch + 1}/{epochs} members={stack.size} "
                f"loss={float(mean_loss.mean()):.4f} elapsed={elapsed:.1f}s")
    if best is not None and history:
        history[-1]["best_epochs"] = best.restore()
    return history


class BestValidation:
    """Per-member copy of the weights of the epoch of best validation accuracy (``>``: the first best).

    The copy is one flat buffer like the stack's; after an epoch only the members that improved are
    copied (a masked copy per layer view), so it costs far less than the epoch itself."""

    def __init__(self, stack: MLPStack) -> None:
        self.stack = stack
        self.best_flat = stack.flat.clone()
        self.best_views = stack.views_of(self.best_flat)
        self.best_acc = torch.full((stack.size,), -math.inf, dtype=torch.float64)
        self.best_epoch = torch.zeros(stack.size, dtype=torch.long)

    @torch.no_grad()
    def update(self, epoch: int, x_val: torch.Tensor, y_val: torch.Tensor) -> list[float]:
        """Measure every member on the validation split; keep the weights of those that improved."""
        logits = torch.cat([self.stack.logits(part) for part in x_val.split(8192)], dim=1)
        if not torch.isfinite(logits).all():
            raise RuntimeError(f"non-finite validation output at epoch {epoch}")
        acc = 100.0 * (logits.argmax(-1) == y_val).to(torch.float64).mean(-1)
        improved = acc > self.best_acc
        if improved.any():
            for best_view, view in zip(self.best_views, self.stack.params):
                best_view[improved] = view[improved]
            self.best_acc[improved] = acc[improved]
            self.best_epoch[improved] = epoch
        return [round(float(a), 4) for a in acc]

    def restore(self) -> list[int]:
        """Put the best weights into the stack; return each member's best epoch (1-based)."""
        self.stack.flat.copy_(self.best_flat)
        return self.best_epoch.tolist()


def _epoch_runner(
    stack: MLPStack, x: torch.Tensor, targets: torch.Tensor, batch_size: int, optimizer: str, momentum: float,
    lam: torch.Tensor | None, log_centroids: torch.Tensor | None, labels: torch.Tensor | None,
    kernel: ModuleType | None,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """A function (perms (M, N), lr) -> per-member loss sums (M,) float64 that trains one epoch."""
    num, dtype = x.shape[0], stack.flat.dtype
    if kernel is not None:
        exp_avg, exp_avg_sq = stack.zeros_like_params(), stack.zeros_like_params()  # SGD uses the first only
        x, targets = x.contiguous(), targets.to(dtype)
        if lam is None:
            extras = (torch.empty(0, dtype=dtype), torch.empty(0, dtype=dtype), torch.empty(0, dtype=torch.long))
        else:
            extras = (lam.to(dtype).contiguous(), log_centroids.to(dtype).contiguous(), labels.contiguous())
        steps_done = [0]

        def kernel_epoch(perms: torch.Tensor, rate: float) -> torch.Tensor:
            losses = kernel.train_epoch(x, targets, perms.contiguous(), stack.params, exp_avg, exp_avg_sq,
                                        steps_done[0], rate, optimizer == "adam", *ADAM_BETAS, ADAM_EPS, momentum,
                                        batch_size, *extras)
            steps_done[0] += math.ceil(num / batch_size)
            return losses

        return kernel_epoch

    opt = make_optimizer(stack, optimizer, momentum)
    members = torch.arange(stack.size).unsqueeze(1)
    lam_view = None if lam is None else lam.to(dtype).view(-1, 1, 1)

    def torch_epoch(perms: torch.Tensor, rate: float) -> torch.Tensor:
        x_epoch = x[perms]
        t_epoch = targets[members, perms]
        q_epoch = None if lam is None else log_centroids[members, labels[perms]]
        loss_sum = torch.zeros(stack.size, dtype=torch.float64)
        for begin in range(0, num, batch_size):
            end = begin + batch_size
            q_batch = None if q_epoch is None else q_epoch[:, begin:end]
            loss = stack.step_grads(x_epoch[:, begin:end], t_epoch[:, begin:end], lam_view, q_batch)
            loss_sum.add_(loss, alpha=min(end, num) - begin)
            opt.step(rate)
        return loss_sum

    return torch_epoch


def train_reference(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    order_seed: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adam",
    momentum: float = 0.9,
    max_steps: int | None = None,
) -> None:
    """One model trained the plain way (autograd + torch.optim, soft-target CE); the semantics that
    :func:`train_stack` reproduces per member. Used by the tests and the benchmark."""
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, foreach=False)
    gen, steps = torch.Generator().manual_seed(order_seed), 0
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for batch in perm.split(batch_size):
            if max_steps is not None and steps == max_steps:
                return
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[batch]), targets[batch]).backward()
            opt.step()
            steps += 1


# ------------------------------------------------------------------------------------------- metrics
def pdist(reference: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(Frobenius norm of reference - target over all rows, mean per-row L2 norm)."""
    diff = reference.to(torch.float64) - target.to(torch.float64)
    return float(torch.linalg.norm(diff)), float(diff.norm(dim=-1).mean())


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((probs.argmax(-1) == labels).to(torch.float64).mean())


def _teacher_record(seed: int, variant: str, probs: torch.Tensor, labels: torch.Tensor, p_star: torch.Tensor,
                    num_classes: int) -> dict[str, Any]:
    cmi, ll = cmi_and_ll(probs, labels, num_classes)
    l2, mean = pdist(p_star, probs)
    return {"seed": seed, "variant": variant, "test_acc": accuracy(probs, labels), "test_cmi": cmi,
            "test_ll": ll, "pdist_l2": l2, "pdist_mean": mean}


# ---------------------------------------------------------------------------------------------- entry
def resolve_config(config: dict[str, Any], preset: str = DEFAULT_PRESET) -> dict[str, Any]:
    """``config`` over the ``preset``'s keys over :data:`DEFAULTS`; unknown keys, an unknown preset and bad
    choices raise ValueError naming the key."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic config keys: {sorted(unknown)}")
    cfg = {**DEFAULTS, **PRESETS[preset], **config}
    for key, choices in _CHOICES.items():
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


def select_kernel(choice: str, log: Callable[[str], None] = print) -> ModuleType | None:
    """The compiled epoch kernel for ``choice`` ("cpp": required, "auto": if it builds, "torch": none)."""
    if choice == "torch":
        return None
    try:
        return mlp_stack()
    except RuntimeError as error:
        if choice == "cpp":
            raise
        log(f"[synthetic] {error}; using the batched torch steps instead")
        return None


def run_synthetic(config: dict[str, Any], delta_mu: float, out_path: str,
                  preset: str = DEFAULT_PRESET) -> dict[str, Any]:
    """Run Table 5 for one ``delta_mu`` under ``preset`` (:data:`PRESETS`) end to end and write the metrics
    JSON to ``out_path``.

    Config keys (paper values as defaults, see :data:`DEFAULTS`; a preset sets the convention keys):
      num_points (1e5), num_classes (10), dim (30), sigma (4.0), split ([0.9, 0.05, 0.05]): the task;
      noise_param ("std": x = mu + sigma * eps; "variance": x = mu + sqrt(sigma) * eps, P* alike);
      hidden (128): MLP width; epochs (100), batch_size (32), lr (5e-4): MLL teachers and students;
      optimizer ("adam"; the paper does not say; lr 5e-4 is an Adam-scale rate), momentum (0.9, SGD only);
      lr_schedule ("constant" or "cosine", per epoch): MLL teachers and students;
      model_selection ("last", or "best_val_acc": each student keeps its epoch of best validation
        accuracy; the MLL teacher stays the last-epoch model, as the KD teacher of Ren et al.'s code);
      pdist_split ("test" or "train"): the points over which Pdist (Frobenius) is taken;
      mcmi_epochs (10), mcmi_lr (1e-4 = lr/5, cosine annealed, as the paper's CIFAR fine-tuning):
        MCMI fine-tuning from the MLL teacher with Q_y fixed from the MLL teacher on the train split;
      lambda_grid ([0.05 .. 0.25]) and lambda_criterion ("val_pdist": Frobenius distance of the MCMI
        teacher to P* on the validation split, mean over seeds; or "val_nll": validation label NLL);
        one lambda is chosen for all seeds;
      seeds ([0..4]): initialisation and data-order seeds; task_seed (0): means and data;
      log_every (10): epochs between progress lines; threads (2): torch.set_num_threads (use 1 on a
        CPU shared with other jobs: two spinning OpenMP threads then slow a step down ~15x);
      kernel ("auto"): "cpp" trains each epoch in the fused C++ kernel (mcmi/kernels, built on first use),
        "torch" in batched torch steps, "auto" uses C++ when it builds. Both compute the same updates
        (tested against torch.optim to 1e-10 in float64).
    Students (same MLP, from scratch) learn by soft-target CE from P* (GroundTruth), the MCMI teacher,
    the MLL teacher and one-hot labels; the four students of a seed share initialisation and data order."""
    cfg = resolve_config(config, preset)
    torch.set_num_threads(cfg["threads"])
    torch.set_flush_denormal(True)   # near-one-hot outputs (large delta_mu) otherwise make steps ~2x slower
    started = time.perf_counter()
    kernel = select_kernel(cfg["kernel"])
    print(f"[synthetic dmu={delta_mu}] training with the {'C++' if kernel else 'torch'} kernel "
          f"(ready after {time.perf_counter() - started:.1f}s)")
    prov = provenance(cfg, seed=None)
    num_classes, seeds = cfg["num_classes"], list(cfg["seeds"])
    train_kw = {"batch_size": cfg["batch_size"], "optimizer": cfg["optimizer"], "momentum": cfg["momentum"],
                "log_every": cfg["log_every"], "kernel": kernel}
    std = noise_std(cfg["sigma"], cfg["noise_param"])

    means = task_means(num_classes, cfg["dim"], delta_mu, cfg["task_seed"])
    x, y = sample_gaussian(means, std, cfg["num_points"], cfg["task_seed"])
    n_train, n_val, _ = split_sizes(cfg["num_points"], cfg["split"])
    x_tr, x_va, x_te = x[:n_train], x[n_train : n_train + n_val], x[n_train + n_val :]
    y_tr, y_va, y_te = y[:n_train], y[n_train : n_train + n_val], y[n_train + n_val :]
    p_star = {name: bayes_posterior(part, means, std) for name, part in
              (("train", x_tr), ("val", x_va), ("test", x_te))}
    onehot = F.one_hot(y_tr, num_classes).to(torch.float32)

    def new_stack(init_seeds: list[int]) -> MLPStack:
        return MLPStack.from_models([seeded_mlp(s, cfg["dim"], cfg["hidden"], num_classes) for s in init_seeds])

    # MLL teachers
    teachers = new_stack([1000 * s + 1 for s in seeds])
    history = train_stack(teachers, x_tr, onehot.expand(len(seeds), -1, -1), [1000 * s + 3 for s in seeds],
                          epochs=cfg["epochs"], lr=cfg["lr"], schedule=cfg["lr_schedule"],
                          stage=f"mll dmu={delta_mu}", **train_kw)
    mll_train, mll_val, mll_test = (teachers.probs(part) for part in (x_tr, x_va, x_te))

    # MCMI fine-tuning over the lambda grid (members ordered lambda-major)
    grid = [float(lam) for lam in cfg["lambda_grid"]]
    mcmi = teachers.repeat(len(grid))
    log_q = torch.stack([class_centroids(mll_train[i], y_tr, num_classes).log().to(torch.float32)
                         for i in range(len(seeds))]).repeat(len(grid), 1, 1)
    lam = torch.tensor(grid).repeat_interleave(len(seeds))
    history += train_stack(mcmi, x_tr, onehot.expand(mcmi.size, -1, -1), [1000 * s + 5 for s in seeds] * len(grid),
                           epochs=cfg["mcmi_epochs"], lr=cfg["mcmi_lr"], schedule="cosine", lam=lam,
                           log_centroids=log_q, labels=y_tr, stage=f"mcmi dmu={delta_mu}", **train_kw)
    mcmi_val = mcmi.probs(x_va)
    scores: dict[str, dict[str, Any]] = {}
    for g, value in enumerate(grid):
        block = mcmi_val[g * len(seeds) : (g + 1) * len(seeds)]
        val_pdist = [pdist(p_star["val"], probs)[0] for probs in block]
        val_nll = [-cmi_and_ll(probs, y_va, num_classes)[1] for probs in block]
        scores[str(value)] = {"val_pdist": sum(val_pdist) / len(seeds), "val_nll": sum(val_nll) / len(seeds),
                              "val_acc": sum(accuracy(p, y_va) for p in block) / len(seeds),
                              "val_pdist_per_seed": val_pdist, "val_nll_per_seed": val_nll}
    chosen = min(range(len(grid)), key=lambda g: scores[str(grid[g])][cfg["lambda_criterion"]])
    rows = slice(chosen * len(seeds), (chosen + 1) * len(seeds))
    mcmi_train, mcmi_test = mcmi.probs(x_tr)[rows], mcmi.probs(x_te)[rows]
    mll_scores = [pdist(p_star["val"], probs)[0] for probs in mll_val]
    print(f"[mcmi dmu={delta_mu}] lambda scores ({cfg['lambda_criterion']}): "
          + ", ".join(f"{lam_}: {scores[str(lam_)][cfg['lambda_criterion']]:.4f}" for lam_ in grid)
          + f"; MLL val_pdist {sum(mll_scores) / len(seeds):.4f}; selected {grid[chosen]}")

    # students: targets-major stack, the four students of a seed share init and data order
    train_targets = {"GroundTruth": p_star["train"].to(torch.float32).expand(len(seeds), -1, -1),
                     "MCMI_KD": mcmi_train, "MLL_KD": mll_train,
                     "OneHot": onehot.expand(len(seeds), -1, -1)}
    test_targets = {"GroundTruth": p_star["test"].expand(len(seeds), -1, -1), "MCMI_KD": mcmi_test,
                    "MLL_KD": mll_test, "OneHot": F.one_hot(y_te, num_classes).expand(len(seeds), -1, -1)}
    students = new_stack([1000 * s + 2 for s in seeds] * len(TARGETS))
    history += train_stack(students, x_tr, torch.cat([train_targets[t] for t in TARGETS]),
                           [1000 * s + 4 for s in seeds] * len(TARGETS), epochs=cfg["epochs"], lr=cfg["lr"],
                           schedule=cfg["lr_schedule"], stage=f"students dmu={delta_mu}",
                           val_data=(x_va, y_va) if cfg["model_selection"] == "best_val_acc" else None, **train_kw)
    student_test = students.probs(x_te)
    best_epochs = history[-1].get("best_epochs")
    pdist_split = cfg["pdist_split"]
    pdist_targets = test_targets if pdist_split == "test" else {
        **train_targets, "GroundTruth": p_star["train"].expand(len(seeds), -1, -1)}  # float64: exactly 0

    records = []
    for t_index, target in enumerate(TARGETS):
        for s_index, seed in enumerate(seeds):
            member = t_index * len(seeds) + s_index
            probs = student_test[member]
            l2, mean = pdist(p_star[pdist_split], pdist_targets[target][s_index])
            record = {"seed": seed, "target": target, "test_acc": accuracy(probs, y_te), "pdist_l2": l2,
                      "pdist_mean": mean, "student_pdist_l2": pdist(p_star["test"], probs)[0]}
            if best_epochs is not None:
                record["best_epoch"] = best_epochs[member]
            records.append(record)
    teacher_records = [_teacher_record(seed, "MLL", mll_test[i], y_te, p_star["test"], num_classes)
                       for i, seed in enumerate(seeds)]
    teacher_records += [_teacher_record(seed, "MCMI", mcmi_test[i], y_te, p_star["test"], num_classes)
                        for i, seed in enumerate(seeds)]
    elapsed = time.perf_counter() - started
    result = {
        "run": {"stage": "synthetic", "delta_mu": delta_mu, "preset": preset, "scale": scale_of(cfg)},
        "final": {
            "lambda_grid": grid, "lambda_criterion": cfg["lambda_criterion"], "lambda_scores": scores,
            "lambda_selected": grid[chosen], "pdist_norm": f"frobenius over the {pdist_split} set",
            "split_sizes": {"train": n_train, "val": n_val, "test": len(y_te)}, "noise_std": std,
            "model_selection": cfg["model_selection"],
            "bayes_test_acc": accuracy(p_star["test"], y_te),
            "bayes_expected_acc": 100.0 * float(p_star["test"].max(-1).values.mean()),
            "records": records, "teachers": teacher_records, "wall_time_s": round(elapsed, 1),
            "kernel": "cpp" if kernel else "torch",
        },
        "history": history,
        "provenance": {**prov, "device": "cpu"},
    }
    write_json_atomic(out_path, result)
    print(f"[synthetic dmu={delta_mu}] done in {elapsed:.1f}s -> {out_path}")
    return result
