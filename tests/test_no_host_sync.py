"""No host synchronisation per training step: every method's and objective's step, the batches
(indexing, crop/flip, normalisation) and the trainer's loop read no device tensor on the host, except
a fixed number of times per epoch. Counted on the CPU by :class:`host_syncs.HostSyncCounter`, which
records every read of a tensor that would live on the GPU; the CUDA tests check the same with
``torch.cuda.set_sync_debug_mode`` on a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from every_member import BATCH, FirstSteps, random_images, student_group, teacher_objective_members
from host_syncs import HostSyncCounter, Sync, device_tensors_of
from mcmi import train as trainer
from mcmi.distill import SharedTeacher
from mcmi.distill.crd import CRD
from mcmi.train import Member, fit_members

NUM_TRAIN = 64


def _members(train: FirstSteps, folder: Path, epochs: int = 1) -> tuple[list[Member], SharedTeacher]:
    """A member per registered method (one group, sharing the teacher) and one per teacher objective."""
    members, teacher = student_group(train, folder, epochs=epochs)
    return members + teacher_objective_members(epochs), teacher


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops: a second thread only adds waiting (tenfold on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The trainer's own reads of a member's device tensors per epoch, whatever its number of steps: the
# non-finite check (``_StepSums.failure``) and the epoch's means (``_StepSums.means``), one each.
READS_PER_MEMBER_AND_EPOCH = 2


def syncs_in_training(steps: int, folder: Path, epochs: int = 1) -> tuple[list[Sync], int]:
    """The host reads of device tensors while every member trains ``epochs`` epochs of ``steps`` steps
    each, and the number of members. Counted: the epoch loop (batches, steps, optimiser, sums) and the
    epoch's means; not the evaluation and checkpoint of :func:`mcmi.train._end_epoch`, which read
    results once per epoch anyway (:func:`test_evaluation_reads_the_device_once`)."""
    train = FirstSteps(random_images(NUM_TRAIN), steps)
    members, teacher = _members(train, folder, epochs)
    found: list[Sync] = []
    original = trainer._train_epoch

    def start(cohort: list[Member]) -> list[torch.Tensor]:
        return device_tensors_of(train.data.images, train.data.labels, teacher,
                                 *(m.model for m in cohort), *(m.objective for m in cohort))

    def counted(cohort: list[Member], *args: Any) -> None:
        with HostSyncCounter(start(cohort)) as counter:
            original(cohort, *args)
        found.extend(counter.syncs)

    def end_epoch(member: Member, epoch: int, *rest: Any) -> None:
        sums = member.sums
        with HostSyncCounter(start([member]) + [sums.loss, sums.correct, *sums.terms.values()]) as counter:
            sums.means()
        found.extend(counter.syncs)
        member.epochs_done = epoch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "_train_epoch", counted)
        patch.setattr(trainer, "_end_epoch", end_epoch)
        fit_members(members, train, None, device=torch.device("cpu"), teacher_cache=teacher)
    assert all(m.epochs_done == epochs for m in members)
    return found, len(members)


def syncs_in_one_epoch(steps: int, folder: Path) -> list[Sync]:
    return syncs_in_training(steps, folder)[0]


def _outside_trainer(syncs: list[Sync]) -> list[str]:
    """Reads whose innermost frame of the package is not the trainer's loop: a method's, an objective's
    or the data's step code."""
    return [str(s) for s in syncs if not s.where or not s.where[-1].startswith("train.py")]


def test_no_step_of_any_method_or_objective_reads_a_device_tensor(tmp_path):
    """Every registered method in one group sharing its teacher, and every teacher objective: no read
    in any step; the trainer reads each member's sums a fixed number of times per epoch (2 steps or
    5, 1 epoch or 2)."""
    short, members = syncs_in_training(2, tmp_path / "short")
    long, _ = syncs_in_training(5, tmp_path / "long", epochs=2)
    assert _outside_trainer(short + long) == []
    assert len(short) == READS_PER_MEMBER_AND_EPOCH * members, [str(s) for s in short]
    assert len(long) == 2 * READS_PER_MEMBER_AND_EPOCH * members, [str(s) for s in long]
    assert {s.op for s in short + long} == {"Tensor.tolist"}      # one stacked read each, no .item() per value


def test_evaluation_reads_the_device_once(tmp_path):
    """``evaluate`` and ``confusion_matrix`` sum on the device and read the sums once per call, however
    many batches the test set has."""
    from mcmi.train import confusion_matrix, evaluate

    model = teacher_objective_members()[0].model
    reads = []
    for count in (16, 80):                       # 2 and 10 batches of 8
        data = random_images(count)
        with HostSyncCounter(device_tensors_of(model, data.images, data.labels)) as counter:
            result = evaluate(model, data, BATCH, torch.device("cpu"))
            matrix = confusion_matrix(model, data, torch.device("cpu"))
        reads.append(len(counter.syncs))
        assert sum(map(sum, matrix)) == count and 0.0 <= result["acc"] <= 100.0
    assert reads == [2, 2], reads


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
