"""A training group of every registered method (sharing one teacher) and every teacher objective, on
tiny random 8x8 images: what the host-sync and compile tests train."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from mcmi.data.tensors import TensorImageDataset
from mcmi.distill import SharedTeacher, registry
from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads
from mcmi.models import create_model, probe_shapes
from mcmi.objectives import (CrossEntropy, EntropyRegularized, LabelSmoothing, LabelSmoothingReverseKL,
                             MCMIObjective)
from mcmi.pipeline.specs import StudentSpec
from mcmi.stages import student_members
from mcmi.train import Member, Precision, Recipe

NUM_CLASSES, BATCH = 10, 8
NCE_METHODS = ("CRD", "CRD+KD", "MIMKD")


class FirstSteps:
    """A training set whose epoch stops after ``steps`` batches."""

    def __init__(self, data: TensorImageDataset, steps: int) -> None:
        self.data, self.steps = data, steps
        self.labels, self.num_classes, self.input_shape = data.labels, data.num_classes, data.input_shape

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, batch_size: int, **kwargs: Any) -> Iterator[Any]:
        for step, batch in enumerate(self.data.batches(batch_size, **kwargs)):
            if step == self.steps:
                return
            yield batch


def random_images(count: int, labels: torch.Tensor | None = None) -> TensorImageDataset:
    """``count`` random 3x8x8 images; labels cycle through the classes unless given."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(count) % NUM_CLASSES if labels is None else labels
    return TensorImageDataset(images, labels, NUM_CLASSES, (0.5,) * 3, (0.25,) * 3, "random", crop_padding=2)


def recipe(epochs: int = 1) -> dict[str, Any]:
    return {"epochs": epochs, "lr": 0.01, "batch_size": BATCH, "milestones": []}


def student_group(train: Any, folder: Path, methods: list[str] | None = None, epochs: int = 1,
                  nce_k: int = 8, precision: Precision | None = None) -> tuple[list[Member], SharedTeacher]:
    """A member per method (default: every registered one), one group sharing a resnet14 teacher;
    ``nce_k`` negatives for CRD, CRD+KD and MIMKD."""
    torch.manual_seed(0)
    teacher_model = create_model("resnet14", NUM_CLASSES)
    heads = folder / "heads.pt"
    folder.mkdir(parents=True, exist_ok=True)
    save_teacher_heads(HSAKDTeacherHeads(probe_shapes(teacher_model, (3, 8, 8)), NUM_CLASSES).heads, heads)
    teacher = SharedTeacher(teacher_model, "resnet14")
    specs = [StudentSpec(student="resnet8", teacher="resnet14", teacher_checkpoint="(in memory)", method=method,
                         seed=0, recipe=recipe(epochs), extra={"hsakd_teacher_heads": str(heads)},
                         hparams={"nce_k": nce_k} if method in NCE_METHODS else {},
                         dataset={"kind": "random"}, out_metrics=str(folder / f"{method}.json"),
                         out_model=str(folder / f"{method}.pt"))
             for method in (methods or sorted(registry()))]
    return student_members(specs, train, teacher, torch.device("cpu"), precision or Precision()), teacher


def teacher_objective_members(epochs: int = 1) -> list[Member]:
    """A member per teacher objective: MLL, MCMI, the Figure 7 regularisers and HSAKD's heads."""
    torch.manual_seed(0)
    centroids = torch.softmax(torch.randn(NUM_CLASSES, NUM_CLASSES), dim=1)
    objectives = {"CE": CrossEntropy(), "MCMI": MCMIObjective(centroids, 0.1), "entropy": EntropyRegularized(0.1),
                  "label smoothing": LabelSmoothing(0.1), "label smoothing rev-KL": LabelSmoothingReverseKL(0.1, 1.0)}
    members = [Member(create_model("resnet8", NUM_CLASSES), objective, Recipe(**recipe(epochs)), seed=0,
                      device=torch.device("cpu"), label=name) for name, objective in objectives.items()]
    frozen = create_model("resnet14", NUM_CLASSES)
    for p in frozen.parameters():
        p.requires_grad_(False)
    members.append(Member(frozen, HSAKDTeacherHeads(probe_shapes(frozen, (3, 8, 8)), NUM_CLASSES),
                          Recipe(**recipe(epochs)), seed=0, device=torch.device("cpu"), label="HSAKD teacher heads"))
    return members
