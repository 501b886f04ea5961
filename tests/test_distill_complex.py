"""CRD, CRD+KD, ReviewKD and HSAKD on hand-made features and a tiny two-stage model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcmi.data.batch import Batch
from mcmi.distill._common import kd_loss
from mcmi.distill.base import _REGISTRY, Distillation, PairContext, SharedTeacher, build_method
from mcmi.distill.crd import CRD
from mcmi.distill.crd_kd import CRDKD
from mcmi.distill.hsakd import (
    HSAKD,
    AuxiliaryHeads,
    HSAKDTeacherHeads,
    joint_labels,
    load_teacher_heads,
    rotate_batch,
    save_teacher_heads,
)
from mcmi.distill.reviewkd import ReviewKD, hierarchical_context_loss
from mcmi.models.base import Features, FeatureShapes, ZooModel, probe_shapes

NUM_CLASSES = 5


def random_features(shapes: FeatureShapes, batch: int, requires_grad: bool = False) -> Features:
    stages = [torch.randn(batch, *s, requires_grad=requires_grad) for s in shapes.stages]
    preact = [torch.randn(batch, *s, requires_grad=requires_grad) for s in shapes.preact_stages]
    pooled = torch.randn(batch, shapes.pooled_dim, requires_grad=requires_grad)
    logits = torch.randn(batch, shapes.num_classes, requires_grad=requires_grad)
    return Features(stages, preact, pooled, logits)


def make_shapes(stages: list[tuple[int, ...]], pooled_dim: int) -> FeatureShapes:
    return FeatureShapes(tuple(stages), tuple(stages), pooled_dim, NUM_CLASSES)


STUDENT = make_shapes([(4, 16, 16), (8, 16, 16), (16, 8, 8), (32, 4, 4)], 32)
TEACHER = make_shapes([(8, 32, 32), (16, 32, 32), (24, 32, 32), (32, 16, 16), (64, 8, 8)], 48)


def context(
    student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER, num_train: int = 40, **extra: str
) -> PairContext:
    labels = torch.arange(num_train) % NUM_CLASSES
    return PairContext(
        student=student, teacher=teacher, num_classes=NUM_CLASSES, num_train=num_train,
        train_labels=labels, epochs=240, input_shape=(3, 8, 8), extra=dict(extra),
    )


def batch_of(index: torch.Tensor, x: torch.Tensor | None = None) -> Batch:
    x = torch.randn(len(index), 3, 8, 8) if x is None else x
    return Batch(x=x, y=index % NUM_CLASSES, index=index)


class TinyNet(ZooModel):
    """Stem + two conv stages on 8×8 inputs; pre-activations taken before each stage's ReLU."""

    def __init__(self, width: int = 4, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width))
        self.stage2 = nn.Sequential(
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width)
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def extract(self, x: torch.Tensor) -> Features:
        f0 = self.stem(x)
        p1 = self.stage1(f0)
        f1 = F.relu(p1)
        p2 = self.stage2(f1)
        f2 = F.relu(p2)
        pooled = f2.mean(dim=(2, 3))
        return Features([f0, f1, f2], [f0, p1, p2], pooled, self.fc(pooled))


# ----------------------------------------------------------------------------------------- CRD


def test_crd_registered_names() -> None:
    assert _REGISTRY["CRD"] is CRD and _REGISTRY["CRD+KD"] is CRDKD
    assert CRD.defaults["weight"] == 0.8 and CRD.defaults["nce_k"] == 16384
    assert CRDKD.defaults["kd_weight"] == 1.0 and CRDKD.defaults["T"] == 4.0


def test_crd_memory_momentum_update() -> None:
    torch.manual_seed(0)
    method = CRD(context(), nce_k=8)
    index = torch.tensor([3, 7, 11, 20])
    s, t = random_features(STUDENT, 4), random_features(TEACHER, 4)
    old_s, old_t = method.memory_s[index].clone(), method.memory_t[index].clone()
    untouched = method.memory_s[0].clone()
    with torch.no_grad():
        v_s, v_t = method.embed_s(s.pooled), method.embed_t(t.pooled)
    method.distill(s, t, batch_of(index), epoch=1)
    assert torch.allclose(method.memory_s[index], F.normalize(0.5 * old_s + 0.5 * v_s, dim=1), atol=1e-6)
    assert torch.allclose(method.memory_t[index], F.normalize(0.5 * old_t + 0.5 * v_t, dim=1), atol=1e-6)
    assert torch.equal(method.memory_s[0], untouched)


def test_crd_normalising_constant_fixed_on_first_batch() -> None:
    torch.manual_seed(0)
    method = CRD(context(), nce_k=8)
    assert method.z_s.item() < 0 and method.z_t.item() < 0
    method.distill(random_features(STUDENT, 4), random_features(TEACHER, 4), batch_of(torch.arange(4)), 1)
    z_s, z_t = method.z_s.item(), method.z_t.item()
    assert z_s > 0 and z_t > 0
    for _ in range(3):
        s, t = random_features(STUDENT, 4), random_features(TEACHER, 4)
        method.distill(s, t, batch_of(torch.arange(4, 8)), epoch=1)
    assert method.z_s.item() == z_s and method.z_t.item() == z_t


@pytest.mark.parametrize("nce_k", [10, 100])  # 32 other-class samples: without / with replacement
def test_crd_negatives_from_other_classes(nce_k: int) -> None:
    method = CRD(context(num_train=40), nce_k=nce_k)
    index = torch.tensor([0, 6, 13, 39])
    rows = method.sample_contrast_indices(index)
    assert rows.shape == (4, 1 + nce_k)
    assert torch.equal(rows[:, 0], index)
    labels = method.train_labels
    assert (labels[rows[:, 1:]] != labels[index].unsqueeze(1)).all()
    if nce_k <= 32:
        assert all(len(set(r.tolist())) == nce_k for r in rows[:, 1:])


def test_crd_single_class_still_samples() -> None:
    ctx = context(num_train=12)
    ctx.train_labels = torch.zeros(12, dtype=torch.long)
    rows = CRD(ctx, nce_k=20).sample_contrast_indices(torch.tensor([1, 2]))
    assert rows.shape == (2, 21) and int(rows.max()) < 12


def test_crd_finite_loss_and_gradients() -> None:
    torch.manual_seed(0)
    method = CRD(context(), nce_k=16)
    s = random_features(STUDENT, 6, requires_grad=True)
    t = random_features(TEACHER, 6, requires_grad=True)
    terms = method.distill(s, t, batch_of(torch.arange(6)), epoch=1)
    assert set(terms) == {"crd"} and torch.isfinite(terms["crd"])
    terms["crd"].backward()
    assert method.embed_s.linear.weight.grad is not None and method.embed_s.linear.weight.grad.abs().sum() > 0
    assert method.embed_t.linear.weight.grad is not None
    assert s.pooled.grad is not None and s.pooled.grad.abs().sum() > 0
    assert t.pooled.grad is None
    assert method.memory_s.grad is None and not method.memory_s.requires_grad


def test_crd_kd_has_both_terms() -> None:
    torch.manual_seed(0)
    method = CRDKD(context(), nce_k=8)
    s, t = random_features(STUDENT, 4), random_features(TEACHER, 4)
    terms = method.distill(s, t, batch_of(torch.arange(4)), epoch=1)
    assert set(terms) == {"crd", "kd"}
    assert torch.equal(terms["kd"], kd_loss(s.logits, t.logits, 4.0))
    assert torch.isfinite(terms["crd"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_crd_runs_on_gpu() -> None:
    method = CRD(context(), nce_k=8).cuda()
    s = random_features(STUDENT, 4)
    t = random_features(TEACHER, 4)
    s.pooled, t.pooled = s.pooled.cuda(), t.pooled.cuda()
    terms = method.distill(s, t, batch_of(torch.arange(4)), epoch=1)
    assert terms["crd"].is_cuda and torch.isfinite(terms["crd"])


# ------------------------------------------------------------------------------------ ReviewKD


def test_reviewkd_mismatched_channels_and_sizes() -> None:
    torch.manual_seed(0)
    method = ReviewKD(context())
    assert method.in_channels == [8, 16, 32, 32] and method.out_channels == [24, 32, 64, 48]
    assert method.out_shapes == [(32, 32), (16, 16), (8, 8), (1, 1)]
    s = random_features(STUDENT, 3, requires_grad=True)
    fused = method.review(s)
    assert [tuple(f.shape[1:]) for f in fused] == [(24, 32, 32), (32, 16, 16), (64, 8, 8), (48, 1, 1)]
    loss = method.distill(s, random_features(TEACHER, 3), batch_of(torch.arange(3)), epoch=40)["reviewkd"]
    assert torch.isfinite(loss)
    loss.backward()
    assert s.stages[1].grad is not None and s.pooled.grad is not None
    assert s.stages[0].grad is None  # the stem is not reviewed


def test_reviewkd_student_larger_than_teacher() -> None:
    torch.manual_seed(0)
    small_teacher = make_shapes([(4, 8, 8), (6, 8, 8), (12, 4, 4), (20, 2, 2)], 20)
    method = ReviewKD(context(teacher=small_teacher))
    fused = method.review(random_features(STUDENT, 2))
    assert [tuple(f.shape[1:]) for f in fused] == [(6, 8, 8), (12, 4, 4), (20, 2, 2), (20, 1, 1)]


def test_reviewkd_warmup_factor() -> None:
    torch.manual_seed(0)
    method = ReviewKD(context()).eval()
    assert method.warmup_factor(1) == pytest.approx(1 / 20)
    assert method.warmup_factor(10) == pytest.approx(0.5)
    assert method.warmup_factor(20) == 1.0 and method.warmup_factor(200) == 1.0
    s, t, batch = random_features(STUDENT, 2), random_features(TEACHER, 2), batch_of(torch.arange(2))
    half = method.distill(s, t, batch, epoch=10)["reviewkd"]
    full = method.distill(s, t, batch, epoch=30)["reviewkd"]
    assert torch.allclose(half, 0.5 * full)


def test_hierarchical_context_loss_weights() -> None:
    torch.manual_seed(0)
    fs, ft = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    expected = F.mse_loss(fs, ft)
    for size, w in [(4, 0.5), (2, 0.25), (1, 0.125)]:
        expected = expected + w * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
    assert torch.allclose(hierarchical_context_loss([fs], [ft]), expected / 1.875)
    gs, gt = torch.randn(2, 3, 1, 1), torch.randn(2, 3, 1, 1)
    assert torch.allclose(hierarchical_context_loss([gs], [gt]), F.mse_loss(gs, gt))


# --------------------------------------------------------------------------------------- HSAKD


def test_rotations_and_joint_labels() -> None:
    x = torch.randn(2, 3, 8, 8)
    rotated = rotate_batch(x)
    assert rotated.shape == (8, 3, 8, 8)
    assert torch.equal(rotated[0::4], x)
    assert torch.equal(rotated[5], torch.rot90(x[1], 1, dims=(1, 2)))
    assert joint_labels(torch.tensor([2, 0])).tolist() == [8, 9, 10, 11, 0, 1, 2, 3]


def test_auxiliary_heads_output_joint_classes() -> None:
    heads = AuxiliaryHeads(STUDENT, NUM_CLASSES)
    outputs = heads(random_features(STUDENT, 3).stages)
    assert len(outputs) == 3
    assert all(o.shape == (3, 4 * NUM_CLASSES) for o in outputs)
    assert len(AuxiliaryHeads(TEACHER, NUM_CLASSES, num_heads=2)(random_features(TEACHER, 1).stages)) == 2


def train_teacher_heads(teacher: TinyNet, path: Path) -> None:
    objective = HSAKDTeacherHeads(probe_shapes(teacher, (3, 8, 8)), NUM_CLASSES)
    backbone_before = copy.deepcopy(teacher.state_dict())
    heads_before = copy.deepcopy(objective.heads.state_dict())
    params = list(teacher.parameters()) + list(objective.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    teacher.train()
    out = objective.step(teacher, batch_of(torch.arange(4)), epoch=1)
    assert set(out.terms) == {"ce_heads"} and out.logits.shape == (4, NUM_CLASSES)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in backbone_before.items())
    assert any(not torch.equal(v, objective.heads.state_dict()[k]) for k, v in heads_before.items())
    save_teacher_heads(objective.heads, path)


def test_teacher_heads_objective_trains_only_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = TinyNet(width=6)
    train_teacher_heads(teacher, tmp_path / "heads.pt")
    loaded = load_teacher_heads(tmp_path / "heads.pt", probe_shapes(teacher, (3, 8, 8)), NUM_CLASSES)
    assert len(loaded.heads) == 2


def test_hsakd_step_on_tiny_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher, student = TinyNet(width=6), TinyNet(width=4)
    train_teacher_heads(teacher, tmp_path / "heads.pt")
    ctx = context(
        student=probe_shapes(student, (3, 8, 8)), teacher=probe_shapes(teacher, (3, 8, 8)),
        hsakd_teacher_heads=str(tmp_path / "heads.pt"),
    )
    objective = Distillation(HSAKD(ctx), teacher)
    objective.train()
    assert not objective.method.teacher_heads.training and objective.method.student_heads.training
    out = objective.step(student, batch_of(torch.arange(4)), epoch=1)
    assert set(out.terms) == {"ce", "kd_heads", "kd_logits"}
    assert out.logits.shape == (4, NUM_CLASSES)
    assert all(torch.isfinite(v) for v in out.terms.values())
    out.loss.backward()
    assert student.stage1[0].weight.grad is not None
    assert all(p.grad is not None for p in objective.method.student_heads.parameters())
    assert all(p.grad is None for p in objective.method.teacher_heads.parameters())
    assert all(p.grad is None for p in teacher.parameters())


# One pass over 4B samples and four passes over B run the same layers on other shapes, so the kernels
# may split their sums differently: on an AMD EPYC with 2 threads the heads differ by 1.5e-8 (values
# ~0.08, one or two float32 ulps). Bit-identity holds only by construction (same code, same shapes:
# a member alone vs in a group, tested in test_student_groups.py); here a tight tolerance applies.
ROTATION_PASSES_RTOL, ROTATION_PASSES_ATOL = 1e-5, 1e-7


def test_hsakd_teacher_outputs_per_rotation_match_one_pass_over_the_rotated_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher, student = TinyNet(width=6), TinyNet(width=4)
    train_teacher_heads(teacher, tmp_path / "heads.pt")
    ctx = context(student=probe_shapes(student, (3, 8, 8)), teacher=probe_shapes(teacher, (3, 8, 8)),
                  hsakd_teacher_heads=str(tmp_path / "heads.pt"))
    method = HSAKD(ctx)
    teacher.eval()
    batch = batch_of(torch.arange(6))
    with torch.no_grad():
        logits, heads = method.teacher_outputs(teacher, batch)
        whole = teacher.extract(rotate_batch(batch.x))
        expected_heads = method.teacher_heads(whole.stages)
    close = dict(rtol=ROTATION_PASSES_RTOL, atol=ROTATION_PASSES_ATOL)
    torch.testing.assert_close(logits, whole.logits, **close)
    assert len(heads) == len(expected_heads)
    for got, expected in zip(heads, expected_heads):
        torch.testing.assert_close(got, expected, **close)


def test_students_of_a_shared_teacher_share_its_hsakd_work(tmp_path: Path) -> None:
    """In a group, the teacher runs once on the batch (for KD) and once per rotation, and its frozen
    heads once per rotation, for any number of HSAKD students."""
    torch.manual_seed(0)
    teacher = TinyNet(width=6)
    train_teacher_heads(teacher, tmp_path / "heads.pt")
    students = [TinyNet(width=4), TinyNet(width=5)]
    shared = SharedTeacher(teacher)
    objectives = [Distillation(HSAKD(context(student=probe_shapes(s, (3, 8, 8)), teacher=probe_shapes(teacher, (3, 8, 8)),
                                             hsakd_teacher_heads=str(tmp_path / "heads.pt"))), shared)
                  for s in students]
    kd_student = TinyNet(width=4)
    kd = Distillation(build_method("KD", context(student=probe_shapes(kd_student, (3, 8, 8)))), shared)
    calls = {"teacher": 0, "heads": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1
        return hook

    extract = teacher.extract
    teacher.extract = lambda x: (count("teacher")(), extract(x))[1]
    for objective in objectives:
        objective.method.teacher_heads.register_forward_hook(count("heads"))
    batch = batch_of(torch.arange(4))
    kd.step(kd_student, batch, epoch=1)
    outs = [objective.step(student, batch, epoch=1) for objective, student in zip(objectives, students)]
    assert calls == {"teacher": 5, "heads": 4}
    alone = Distillation(HSAKD(context(student=probe_shapes(students[1], (3, 8, 8)), teacher=probe_shapes(teacher, (3, 8, 8)),
                                       hsakd_teacher_heads=str(tmp_path / "heads.pt"))), teacher)
    alone.load_state_dict(objectives[1].state_dict())
    expected = alone.step(students[1], batch_of(torch.arange(4), batch.x.clone()), epoch=1)
    for name, value in expected.terms.items():
        assert torch.equal(value, outs[1].terms[name]), name
    before = dict(calls)
    shared.clear()
    objectives[0].step(students[0], batch, epoch=1)
    assert calls["teacher"] - before["teacher"] == 4 and calls["heads"] - before["heads"] == 4   # cleared per batch


def test_hsakd_missing_teacher_heads_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hsakd_teacher_heads"):
        HSAKD(context())
    with pytest.raises(FileNotFoundError, match="teacher heads"):
        HSAKD(context(hsakd_teacher_heads=str(tmp_path / "absent.pt")))
