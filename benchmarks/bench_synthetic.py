"""Throughput of the synthetic Gaussian (Table 5) training: plain torch.nn + torch.optim vs the batched stack.

Prints model-epochs per second (one model-epoch = one pass over the 90,000 training points at batch 32,
2,813 steps) for one plain model and for stacks of M members trained by the batched torch steps and by
the fused C++ kernel, and projects the wall time of the full table (4 dmu x (5 MLL teachers + 5 x
|lambda grid| MCMI fine-tunings + 20 students) x 5 seeds) from them, for one job at a time.
With --run it also runs run_synthetic at full scale for one dmu or all four and reports the measured time.

    python benchmarks/bench_synthetic.py --threads 2 --steps 400
    python benchmarks/bench_synthetic.py --run 0.5            # one dmu end to end
    python benchmarks/bench_synthetic.py --run all --out results/synthetic
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mcmi.synthetic import (
    DEFAULTS,
    MLPStack,
    run_synthetic,
    sample_gaussian,
    seeded_mlp,
    select_kernel,
    split_sizes,
    task_means,
    train_stack,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic_oracle import train_reference  # noqa: E402  the plain one-model loop, the baseline here

DELTA_MUS = (0.5, 1.0, 2.0, 4.0)


def _data(steps: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    means = task_means(DEFAULTS["num_classes"], DEFAULTS["dim"], 1.0, 0)
    x, y = sample_gaussian(means, DEFAULTS["sigma"], steps * batch_size, 0)
    return x, F.one_hot(y, DEFAULTS["num_classes"]).to(torch.float32)


def plain_steps_per_s(x: torch.Tensor, targets: torch.Tensor, steps: int) -> float:
    """Steps per second of one nn.Sequential MLP with torch.optim.Adam (autograd, fused Adam)."""
    model = seeded_mlp(0, DEFAULTS["dim"], DEFAULTS["hidden"], DEFAULTS["num_classes"])
    kwargs = {"epochs": 1, "batch_size": DEFAULTS["batch_size"], "lr": DEFAULTS["lr"]}
    train_reference(model, x, targets, 0, max_steps=20, **kwargs)  # warm-up
    start = time.perf_counter()
    train_reference(model, x, targets, 1, max_steps=steps, **kwargs)
    return steps / (time.perf_counter() - start)


def batched_steps_per_s(x: torch.Tensor, targets: torch.Tensor, members: int, kernel) -> float:
    """Steps per second of a stack of ``members`` MLPs (one epoch over x) with ``kernel`` (None: torch)."""
    stack = MLPStack.from_models([seeded_mlp(s, DEFAULTS["dim"], DEFAULTS["hidden"], DEFAULTS["num_classes"])
                                  for s in range(members)])
    kwargs = {"batch_size": DEFAULTS["batch_size"], "lr": DEFAULTS["lr"], "log": lambda _: None, "kernel": kernel}
    train_stack(stack, x[:640], targets[:640].expand(members, -1, -1), list(range(members)), epochs=1, **kwargs)
    start = time.perf_counter()
    train_stack(stack, x, targets.expand(members, -1, -1), list(range(members)), epochs=1, **kwargs)
    return math.ceil(x.shape[0] / DEFAULTS["batch_size"]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps timed per measurement")
    parser.add_argument("--run", choices=[*map(str, DELTA_MUS), "all"], help="also run the full table for one dmu or all")
    parser.add_argument("--out", default="results/synthetic", help="folder for the --run metrics JSON files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    n_train = split_sizes(DEFAULTS["num_points"], DEFAULTS["split"])[0]
    steps_per_epoch = math.ceil(n_train / DEFAULTS["batch_size"])
    x, targets = _data(args.steps, DEFAULTS["batch_size"])
    seeds, grid = len(DEFAULTS["seeds"]), len(DEFAULTS["lambda_grid"])

    plain = plain_steps_per_s(x, targets, args.steps) / steps_per_epoch
    print(f"threads={args.threads} steps/epoch={steps_per_epoch}")
    print(f"plain   M=1   {plain:8.4f} model-epochs/s")
    epochs, mcmi_epochs = DEFAULTS["epochs"], DEFAULTS["mcmi_epochs"]
    for name, kernel in (("torch", None), ("C++", select_kernel("cpp"))):
        rates = {}
        for members in (seeds, 4 * seeds, grid * seeds):
            rates[members] = members * batched_steps_per_s(x, targets, members, kernel) / steps_per_epoch
            print(f"batched {name:5s} M={members:<3d} {rates[members]:8.4f} model-epochs/s  "
                  f"({rates[members] / plain:.1f}x plain)")
        per_dmu = (seeds * epochs / rates[seeds] + 4 * seeds * epochs / rates[4 * seeds]
                   + grid * seeds * mcmi_epochs / rates[grid * seeds])
        print(f"projected full table (4 dmu, one job at a time), {name}: {4 * per_dmu / 60:.1f} min "
              f"({per_dmu / 60:.1f} min per dmu)")
    per_dmu_plain = (seeds * epochs + 4 * seeds * epochs + grid * seeds * mcmi_epochs) / plain
    print(f"projected full table, plain loop: {4 * per_dmu_plain / 3600:.1f} h")

    if args.run:
        chosen = DELTA_MUS if args.run == "all" else (float(args.run),)
        start = time.perf_counter()
        for delta_mu in chosen:
            run_synthetic({"threads": args.threads}, delta_mu, str(Path(args.out) / f"synthetic_dmu{delta_mu}.json"))
        print(f"measured: {len(chosen)} dmu in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
