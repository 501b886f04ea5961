"""No host synchronisation per training step: every method's and objective's step, the batches
(indexing, crop/flip, normalisation) and the trainer's loop read no device tensor on the host, except
a fixed number of times per epoch. Counted on the CPU by :class:`host_syncs.HostSyncCounter`, which
records every read of a tensor that would live on the GPU; the CUDA tests check the same with
``torch.cuda.set_sync_debug_mode`` on a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from host_syncs import HostSyncCounter, Sync, device_tensors_of
from mcmi import train as trainer
from mcmi.data.tensors import TensorImageDataset
from mcmi.distill import SharedTeacher, registry
from mcmi.distill.crd import CRD
from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads
from mcmi.models import create_model, probe_shapes
from mcmi.objectives import (CrossEntropy, EntropyRegularized, LabelSmoothing, LabelSmoothingReverseKL,
                             MCMIObjective)
from mcmi.pipeline.specs import StudentSpec
from mcmi.stages import student_members
from mcmi.train import Member, Precision, Recipe, fit_members

NUM_CLASSES, NUM_TRAIN, BATCH = 10, 64, 8
RECIPE = {"epochs": 1, "lr": 0.01, "batch_size": BATCH, "milestones": []}


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


def _dataset() -> TensorImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (NUM_TRAIN, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(NUM_TRAIN) % NUM_CLASSES
    return TensorImageDataset(images, labels, NUM_CLASSES, (0.5,) * 3, (0.25,) * 3, "random", crop_padding=2)


def _members(train: FirstSteps, folder: Path) -> tuple[list[Member], SharedTeacher]:
    """A member per registered method (one group, sharing the teacher) and one per teacher objective."""
    torch.manual_seed(0)
    teacher_model = create_model("resnet14", NUM_CLASSES)
    heads = folder / "heads.pt"
    save_teacher_heads(HSAKDTeacherHeads(probe_shapes(teacher_model, (3, 8, 8)), NUM_CLASSES).heads, heads)
    teacher = SharedTeacher(teacher_model, "resnet14")
    specs = [StudentSpec(student="resnet8", teacher="resnet14", teacher_checkpoint="(in memory)", method=method,
                         seed=0, recipe=RECIPE, extra={"hsakd_teacher_heads": str(heads)},
                         hparams={"nce_k": 8} if method in ("CRD", "CRD+KD", "MIMKD") else {},
                         dataset={"kind": "random"}, out_metrics=str(folder / f"{method}.json"),
                         out_model=str(folder / f"{method}.pt"))
             for method in sorted(registry())]
    members = student_members(specs, train, teacher, torch.device("cpu"), Precision())
    centroids = torch.softmax(torch.randn(NUM_CLASSES, NUM_CLASSES), dim=1)
    objectives = {"CE": CrossEntropy(), "MCMI": MCMIObjective(centroids, 0.1), "entropy": EntropyRegularized(0.1),
                  "label smoothing": LabelSmoothing(0.1), "label smoothing rev-KL": LabelSmoothingReverseKL(0.1, 1.0)}
    for name, objective in objectives.items():
        members.append(Member(create_model("resnet8", NUM_CLASSES), objective, Recipe(**RECIPE), seed=0,
                              device=torch.device("cpu"), label=name))
    frozen = create_model("resnet14", NUM_CLASSES)
    for p in frozen.parameters():
        p.requires_grad_(False)
    members.append(Member(frozen, HSAKDTeacherHeads(probe_shapes(frozen, (3, 8, 8)), NUM_CLASSES), Recipe(**RECIPE),
                          seed=0, device=torch.device("cpu"), label="HSAKD teacher heads"))
    return members, teacher


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops: a second thread only adds waiting (tenfold on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def syncs_in_one_epoch(steps: int, folder: Path) -> list[Sync]:
    """The host reads of device tensors during one training epoch of ``steps`` steps of every member
    (the epoch's evaluation and checkpoint are not counted: they read results once per epoch anyway)."""
    train = FirstSteps(_dataset(), steps)
    members, teacher = _members(train, folder)
    for member in members:
        member.model.train()
    found: list[Sync] = []
    original = trainer._train_epoch

    def counted(cohort: list[Member], *args: Any) -> None:
        start = device_tensors_of(train.data.images, train.data.labels, teacher,
                                  *(m.model for m in cohort), *(m.objective for m in cohort))
        with HostSyncCounter(start) as counter:
            original(cohort, *args)
        found.extend(counter.syncs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "_train_epoch", counted)
        patch.setattr(trainer, "_end_epoch", lambda member, epoch, *rest: setattr(member, "epochs_done", epoch))
        fit_members(members, train, None, device=torch.device("cpu"), teacher_cache=teacher)
    return found


def _outside_trainer(syncs: list[Sync]) -> list[str]:
    """Reads whose innermost frame of the package is not the trainer's loop: a method's, an objective's
    or the data's step code."""
    return [str(s) for s in syncs if not s.where or not s.where[-1].startswith("train.py")]


def test_no_step_of_any_method_or_objective_reads_a_device_tensor(tmp_path):
    short = syncs_in_one_epoch(2, tmp_path / "short")
    long = syncs_in_one_epoch(5, tmp_path / "long")
    assert _outside_trainer(short + long) == []
    # the trainer's own reads are per epoch (its non-finite check), not per step: 3 more steps add none
    assert len(long) == len(short), [str(s) for s in long]


def test_the_counter_sees_a_read_per_step(tmp_path, monkeypatch):
    """The check above can fail: CRD's former first-batch check (``if z < 0: z = mean.item() * N``) reads Z
    on every step, and a label set where only some classes have K negatives reads a mask per step."""

    def former_normaliser(z: torch.Tensor, scores: torch.Tensor, num_train: int) -> None:
        if z < 0:
            z.fill_(scores.detach().mean().item() * num_train)

    with monkeypatch.context() as patch:
        patch.setattr(CRD, "_fix_normaliser", staticmethod(former_normaliser))
        syncs = syncs_in_one_epoch(3, tmp_path / "former")
    reads = [s for s in _outside_trainer(syncs) if "crd.py" in s]
    # per step: CRD, CRD+KD and MIMKD each read z_s and z_t (bool), and .item() on the first step
    assert len(reads) == 3 * (2 * 3 + 2), reads

    original_init = CRD.__init__

    def mixed(self: CRD, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.without_replacement = None

    monkeypatch.setattr(CRD, "__init__", mixed)
    syncs = syncs_in_one_epoch(3, tmp_path / "mixed")
    assert len([s for s in _outside_trainer(syncs) if "sample_contrast_indices" in s]) == 3 * 3


def test_crd_knows_without_replacement_from_the_labels_once():
    """The per-batch choice between drawing negatives without replacement (top-k of random scores) and
    with replacement (multinomial) is a property of each sample's label, decided at construction."""
    from mcmi.distill import PairContext
    from mcmi.models.base import FeatureShapes

    def crd(labels: list[int], nce_k: int) -> CRD:
        shapes = FeatureShapes(((4, 2, 2),), ((4, 2, 2),), 4, 3)
        ctx = PairContext(student=shapes, teacher=shapes, num_classes=3, num_train=len(labels),
                          train_labels=torch.tensor(labels), epochs=1, input_shape=(3, 2, 2))
        return CRD(ctx, nce_k=nce_k, feat_dim=4)

    labels = [0] * 6 + [1] * 3 + [2] * 3          # others: 6 for class 0, 9 for classes 1 and 2
    assert crd(labels, 6).without_replacement is True
    assert crd(labels, 10).without_replacement is False
    method = crd(labels, 8)
    assert method.without_replacement is None          # decided per batch, by its samples' labels
    assert method.enough_negatives.tolist() == [False] * 6 + [True] * 6
    torch.manual_seed(0)
    rows = method.sample_contrast_indices(torch.tensor([6, 9]))        # class 1 and 2: without replacement
    assert all(len(set(r)) == 8 for r in rows[:, 1:].tolist())
