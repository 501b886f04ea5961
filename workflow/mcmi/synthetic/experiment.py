"""Table 5 end to end for one dmu: MLL teachers, MCMI fine-tuning over the lambda grid, lambda selection,
the four students of every seed, and the metrics JSON.

All models of a step (the seeds' teachers; lambda grid x seeds MCMI teachers; targets x seeds students)
train in one process as one :class:`~mcmi.synthetic.stack.MLPStack`. The run seeds change only
initialisation and data order; the data set is fixed by ``task_seed`` (:mod:`mcmi.synthetic.task`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from mcmi.cmi import class_centroids, cmi_and_ll
from mcmi.identity import Identity, sealed
from mcmi.provenance import provenance, write_json_atomic
from mcmi.synthetic.stack import MLPStack
from mcmi.synthetic.task import (DEFAULT_PRESET, SPLITS, TARGETS, TaskData, accuracy, pdist, resolve_config,
                                 scale_of)
from mcmi.synthetic.training import select_kernel, train_stack

# Run seed s seeds each random stream of its models with SEED_STRIDE * s + an offset below (all offsets
# < SEED_STRIDE, so no two streams of any two run seeds share a seed). Changing a value changes every
# number of every run.
SEED_STRIDE = 1000
TEACHER_INIT = 1    # initial weights of the MLL teacher of seed s (the MCMI teachers start from it)
STUDENT_INIT = 2    # initial weights of the students of seed s (the same for all four targets)
TEACHER_ORDER = 3   # data order (per-epoch randperm) of the MLL teacher of seed s
STUDENT_ORDER = 4   # data order of the students of seed s (the same for all four targets)
MCMI_ORDER = 5      # data order of the MCMI fine-tuning of seed s (the same at every lambda)


def stream_seeds(seeds: list[int], offset: int) -> list[int]:
    """The seeds of one random stream (an offset above) for each run seed."""
    return [SEED_STRIDE * seed + offset for seed in seeds]


@dataclass
class Run:
    """What every step of one run shares: the resolved config, dmu, the data and the epoch kernel."""

    cfg: dict[str, Any]
    delta_mu: float
    data: TaskData
    kernel: ModuleType | None

    @property
    def seeds(self) -> list[int]:
        """The run seeds (initialisation and data order; see the offsets above)."""
        return list(self.cfg["seeds"])

    @cached_property
    def onehot_train(self) -> torch.Tensor:
        """One-hot training labels (N, K), float32."""
        return F.one_hot(self.data.y["train"], self.cfg["num_classes"]).to(torch.float32)

    def new_stack(self, init_seeds: list[int]) -> MLPStack:
        """A stack of this run's MLP shape, member m initialised from ``init_seeds[m]``."""
        return MLPStack.seeded(init_seeds, self.cfg["dim"], self.cfg["hidden"], self.cfg["num_classes"])

    def train(self, stack: MLPStack, targets: torch.Tensor, order_seeds: list[int], step: str,
              **kwargs: Any) -> list[dict[str, Any]]:
        """:func:`train_stack` on the training split with this run's batch size, optimizer and kernel."""
        cfg = self.cfg
        return train_stack(stack, self.data.x["train"], targets, order_seeds, batch_size=cfg["batch_size"],
                           optimizer=cfg["optimizer"], momentum=cfg["momentum"], log_every=cfg["log_every"],
                           kernel=self.kernel, stage=f"{step} dmu={self.delta_mu}", **kwargs)


def train_mll_teachers(run: Run) -> tuple[MLPStack, list[dict[str, Any]]]:
    """One MLL (plain cross-entropy) teacher per seed; returns the stack (member = seed) and its history."""
    cfg, seeds = run.cfg, run.seeds
    teachers = run.new_stack(stream_seeds(seeds, TEACHER_INIT))
    history = run.train(teachers, run.onehot_train.expand(len(seeds), -1, -1), stream_seeds(seeds, TEACHER_ORDER),
                        "mll", epochs=cfg["epochs"], lr=cfg["lr"], schedule=cfg["lr_schedule"])
    return teachers, history


def fine_tune_mcmi(run: Run, teachers: MLPStack, mll_train: torch.Tensor,
                   grid: list[float]) -> tuple[MLPStack, list[dict[str, Any]]]:
    """MCMI fine-tuning of every MLL teacher at every lambda of ``grid``, Q_y fixed from the MLL teacher's
    outputs ``mll_train`` on the training split; members are lambda-major (member g * seeds + s)."""
    cfg, seeds, y_train = run.cfg, run.seeds, run.data.y["train"]
    mcmi = teachers.repeat(len(grid))
    log_q = torch.stack([class_centroids(mll_train[i], y_train, cfg["num_classes"]).log().to(torch.float32)
                         for i in range(len(seeds))]).repeat(len(grid), 1, 1)
    lam = torch.tensor(grid).repeat_interleave(len(seeds))
    history = run.train(mcmi, run.onehot_train.expand(mcmi.size, -1, -1), stream_seeds(seeds, MCMI_ORDER) * len(grid),
                        "mcmi", epochs=cfg["mcmi_epochs"], lr=cfg["mcmi_lr"], schedule="cosine", lam=lam,
                        log_centroids=log_q, labels=y_train)
    return mcmi, history


def score_lambdas(run: Run, mcmi_val: torch.Tensor, grid: list[float]) -> dict[str, dict[str, Any]]:
    """Validation scores of each lambda (keyed by str(lambda)), means over seeds and per seed, from the
    lambda-major MCMI outputs ``mcmi_val`` on the validation split."""
    num_seeds, y_val, p_star_val = len(run.seeds), run.data.y["val"], run.data.p_star["val"]
    scores: dict[str, dict[str, Any]] = {}
    for g, value in enumerate(grid):
        block = mcmi_val[g * num_seeds : (g + 1) * num_seeds]
        val_pdist = [pdist(p_star_val, probs)[0] for probs in block]
        val_nll = [-cmi_and_ll(probs, y_val, run.cfg["num_classes"])[1] for probs in block]
        scores[str(value)] = {"val_pdist": sum(val_pdist) / num_seeds, "val_nll": sum(val_nll) / num_seeds,
                              "val_acc": sum(accuracy(p, y_val) for p in block) / num_seeds,
                              "val_pdist_per_seed": val_pdist, "val_nll_per_seed": val_nll}
    return scores


def select_lambda(scores: dict[str, dict[str, Any]], grid: list[float], criterion: str) -> int:
    """Index in ``grid`` of the lambda with the lowest ``criterion`` score (the first on a tie)."""
    return min(range(len(grid)), key=lambda g: scores[str(grid[g])][criterion])


def student_targets(run: Run, mll: dict[str, torch.Tensor], mcmi: dict[str, torch.Tensor]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per target (seeds, n, K): what the students learn from on the training split, and what Pdist
    measures against P* on the preset's ``pdist_split``. ``mll``/``mcmi``: the teachers' outputs by split."""
    data, num_seeds = run.data, len(run.seeds)
    train_targets = {"GroundTruth": data.p_star["train"].to(torch.float32).expand(num_seeds, -1, -1),
                     "MCMI_KD": mcmi["train"], "MLL_KD": mll["train"],
                     "OneHot": run.onehot_train.expand(num_seeds, -1, -1)}
    if run.cfg["pdist_split"] == "test":
        onehot_test = F.one_hot(data.y["test"], run.cfg["num_classes"])
        pdist_targets = {"GroundTruth": data.p_star["test"].expand(num_seeds, -1, -1), "MCMI_KD": mcmi["test"],
                         "MLL_KD": mll["test"], "OneHot": onehot_test.expand(num_seeds, -1, -1)}
    else:  # the float64 P* itself, so GroundTruth's Pdist is exactly 0
        pdist_targets = {**train_targets, "GroundTruth": data.p_star["train"].expand(num_seeds, -1, -1)}
    return train_targets, pdist_targets


def train_students(run: Run, train_targets: dict[str, torch.Tensor]) -> tuple[MLPStack, list[dict[str, Any]]]:
    """The students of every target and seed, targets-major (member t * seeds + s); the students of a seed
    share initialisation and data order. ``best_val_acc`` selection keeps each one's best epoch."""
    cfg, seeds = run.cfg, run.seeds
    students = run.new_stack(stream_seeds(seeds, STUDENT_INIT) * len(TARGETS))
    val_data = (run.data.x["val"], run.data.y["val"]) if cfg["model_selection"] == "best_val_acc" else None
    history = run.train(students, torch.cat([train_targets[t] for t in TARGETS]),
                        stream_seeds(seeds, STUDENT_ORDER) * len(TARGETS), "students", epochs=cfg["epochs"],
                        lr=cfg["lr"], schedule=cfg["lr_schedule"], val_data=val_data)
    return students, history


def student_records(run: Run, student_test: torch.Tensor, pdist_targets: dict[str, torch.Tensor],
                    best_epochs: list[int] | None) -> list[dict[str, Any]]:
    """One record per (target, seed): the student's test accuracy and Pdist of the target it learnt from
    (over the preset's ``pdist_split``) and of the student itself (over the test split)."""
    data, seeds, split = run.data, run.seeds, run.cfg["pdist_split"]
    records = []
    for t_index, target in enumerate(TARGETS):
        for s_index, seed in enumerate(seeds):
            member = t_index * len(seeds) + s_index
            probs = student_test[member]
            l2, mean = pdist(data.p_star[split], pdist_targets[target][s_index])
            record = {"seed": seed, "target": target, "test_acc": accuracy(probs, data.y["test"]), "pdist_l2": l2,
                      "pdist_mean": mean, "student_pdist_l2": pdist(data.p_star["test"], probs)[0]}
            if best_epochs is not None:
                record["best_epoch"] = best_epochs[member]
            records.append(record)
    return records


def teacher_records(run: Run, variant: str, test_probs: torch.Tensor) -> list[dict[str, Any]]:
    """One record per seed for the ``variant`` ("MLL" or "MCMI") teachers' outputs on the test split."""
    y_test, p_star_test, records = run.data.y["test"], run.data.p_star["test"], []
    for i, seed in enumerate(run.seeds):
        cmi, ll = cmi_and_ll(test_probs[i], y_test, run.cfg["num_classes"])
        l2, mean = pdist(p_star_test, test_probs[i])
        records.append({"seed": seed, "variant": variant, "test_acc": accuracy(test_probs[i], y_test),
                        "test_cmi": cmi, "test_ll": ll, "pdist_l2": l2, "pdist_mean": mean})
    return records


def _log_lambda_choice(run: Run, scores: dict[str, dict[str, Any]], grid: list[float], chosen: int,
                       mll_val: torch.Tensor) -> None:
    """Print each lambda's score, the MLL teachers' validation Pdist for comparison, and the choice."""
    criterion = run.cfg["lambda_criterion"]
    mll_scores = [pdist(run.data.p_star["val"], probs)[0] for probs in mll_val]
    print(f"[mcmi dmu={run.delta_mu}] lambda scores ({criterion}): "
          + ", ".join(f"{lam}: {scores[str(lam)][criterion]:.4f}" for lam in grid)
          + f"; MLL val_pdist {sum(mll_scores) / len(run.seeds):.4f}; selected {grid[chosen]}")


def run_synthetic(config: dict[str, Any], delta_mu: float, out_path: str,
                  preset: str = DEFAULT_PRESET, identity: Identity | None = None) -> dict[str, Any]:
    """Run Table 5 for one ``delta_mu`` under ``preset`` (:data:`~mcmi.synthetic.task.PRESETS`) end to end
    and write the metrics JSON to ``out_path`` (recording the job's ``identity`` when given).

    Config keys (paper values as defaults, see :data:`~mcmi.synthetic.task.DEFAULTS`; a preset sets the
    convention keys):
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
    run = Run(cfg, delta_mu, TaskData.generate(cfg, delta_mu), kernel)
    data = run.data

    teachers, history = train_mll_teachers(run)
    mll = {split: teachers.probs(data.x[split]) for split in SPLITS}
    grid = [float(lam) for lam in cfg["lambda_grid"]]
    mcmi_stack, mcmi_history = fine_tune_mcmi(run, teachers, mll["train"], grid)
    history += mcmi_history
    scores = score_lambdas(run, mcmi_stack.probs(data.x["val"]), grid)
    chosen = select_lambda(scores, grid, cfg["lambda_criterion"])
    rows = slice(chosen * len(run.seeds), (chosen + 1) * len(run.seeds))  # the chosen lambda's members
    mcmi = {split: mcmi_stack.probs(data.x[split])[rows] for split in ("train", "test")}
    _log_lambda_choice(run, scores, grid, chosen, mll["val"])

    train_targets, pdist_targets = student_targets(run, mll, mcmi)
    students, student_history = train_students(run, train_targets)
    history += student_history
    records = student_records(run, students.probs(data.x["test"]), pdist_targets, history[-1].get("best_epochs"))
    teachers_out = teacher_records(run, "MLL", mll["test"]) + teacher_records(run, "MCMI", mcmi["test"])

    elapsed = time.perf_counter() - started
    p_star_test, y_test = data.p_star["test"], data.y["test"]
    result = {
        "run": {"stage": "synthetic", "delta_mu": delta_mu, "preset": preset, "scale": scale_of(cfg)},
        "final": {
            "lambda_grid": grid, "lambda_criterion": cfg["lambda_criterion"], "lambda_scores": scores,
            "lambda_selected": grid[chosen], "pdist_norm": f"frobenius over the {cfg['pdist_split']} set",
            "split_sizes": {split: data.size(split) for split in SPLITS},
            "noise_std": data.noise_std, "model_selection": cfg["model_selection"],
            "bayes_test_acc": accuracy(p_star_test, y_test),
            "bayes_expected_acc": 100.0 * float(p_star_test.max(-1).values.mean()),
            "records": records, "teachers": teachers_out, "wall_time_s": round(elapsed, 1),
            "kernel": "cpp" if kernel else "torch",
        },
        "history": history,
        "provenance": {**prov, "device": "cpu"},
    }
    if identity is not None:
        result["provenance"].update(spec_fingerprint=identity.spec, identity=identity.to_dict(),
                                    identity_key=identity.key)
    write_json_atomic(out_path, sealed(result))
    print(f"[synthetic dmu={delta_mu}] done in {elapsed:.1f}s -> {out_path}")
    return result
