"""The test oracle of the synthetic task's stacked trainer: one model trained the plain way.

:func:`mcmi.synthetic.training.train_stack` must reproduce, member by member, what
:func:`train_reference` does to one ``nn.Sequential`` MLP (autograd, torch.optim, soft-target CE, the
same ``randperm`` data order). Imported by tests/test_synthetic.py and, as its plain baseline, by
benchmarks/bench_synthetic.py; library code never uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    """Train ``model`` in place on x (N, D) against soft ``targets`` (N, K): epochs of ``randperm`` order
    from a generator seeded ``order_seed``, batches of ``batch_size`` (the last one partial), fused Adam
    or SGD with momentum; stop early after ``max_steps`` steps if given."""
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
