"""M independent 3-layer MLPs held as one stack of parameters, and the optimizers that update the stack.

Each member keeps its own initialisation (``torch.manual_seed(init_seed)`` then ``nn.Linear`` defaults, as
a separate run would do; :func:`seeded_mlp`), so a stack of M members is M separate models trained at once.
"""

from __future__ import annotations

import torch
from torch import nn

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, used by both epoch kernels


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

    @classmethod
    def seeded(cls, init_seeds: list[int], dim: int, hidden: int, num_classes: int) -> "MLPStack":
        """A stack whose member m is :func:`seeded_mlp` with ``init_seeds[m]``."""
        return cls.from_models([seeded_mlp(seed, dim, hidden, num_classes) for seed in init_seeds])

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
