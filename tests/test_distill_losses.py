"""Loss-level tests of the feature/logit distillation methods, on hand-made shapes and random features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mcmi.data.batch import Batch
from mcmi.distill import DistillMethod, PairContext, build_method, registry
from mcmi.distill._common import kd_loss
from mcmi.models.base import Features, FeatureShapes

NUM_CLASSES = 10
BATCH = 8
METHODS = ["vanilla", "KD", "FitNet", "AT", "PKT", "SP", "CC", "RKD", "VID", "DKD"]

# Which student features each method reads (so their gradient must be non-zero).
USES = {
    "KD": ["logits"],
    "DKD": ["logits"],
    "FitNet": ["stage2"],
    "AT": ["stage1", "stage2", "stage3"],
    "VID": ["stage1", "stage2", "stage3"],
    "SP": ["stage3"],
    "CC": ["pooled"],
    "RKD": ["pooled"],
    "PKT": ["pooled"],
}

STUDENT_STAGES = ((16, 16, 16), (16, 16, 16), (32, 8, 8), (64, 4, 4))
# Different channels everywhere, different spatial sizes at every stage but the first, one more stage.
TEACHER_MISMATCHED = ((32, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2), (256, 1, 1))


def shapes(stages: tuple[tuple[int, int, int], ...], pooled_dim: int) -> FeatureShapes:
    return FeatureShapes(stages=stages, preact_stages=stages, pooled_dim=pooled_dim, num_classes=NUM_CLASSES)


def context(student: FeatureShapes, teacher: FeatureShapes) -> PairContext:
    return PairContext(
        student=student,
        teacher=teacher,
        num_classes=NUM_CLASSES,
        num_train=100,
        train_labels=torch.arange(100) % NUM_CLASSES,
        epochs=240,
        input_shape=(3, 32, 32),
    )


def features(fs: FeatureShapes, requires_grad: bool, generator: torch.Generator) -> Features:
    def make(*shape: int) -> torch.Tensor:
        return torch.randn(BATCH, *shape, generator=generator).requires_grad_(requires_grad)

    stages = [make(*s) for s in fs.stages]
    return Features(stages=stages, preact_stages=stages, pooled=make(fs.pooled_dim), logits=make(fs.num_classes))


def clone(f: Features, requires_grad: bool) -> Features:
    stages = [x.detach().clone().requires_grad_(requires_grad) for x in f.stages]
    return Features(
        stages=stages,
        preact_stages=stages,
        pooled=f.pooled.detach().clone().requires_grad_(requires_grad),
        logits=f.logits.detach().clone().requires_grad_(requires_grad),
    )


def batch(generator: torch.Generator) -> Batch:
    return Batch(
        x=torch.zeros(BATCH, 3, 32, 32),
        y=torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator),
        index=torch.arange(BATCH),
    )


def named_student_tensors(f: Features) -> dict[str, torch.Tensor]:
    return {"logits": f.logits, "pooled": f.pooled, **{f"stage{i}": x for i, x in enumerate(f.stages)}}


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(terms.values())).sum()


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_all_methods_registered() -> None:
    known = registry()
    for name in METHODS:
        assert issubclass(known[name], DistillMethod)
        assert "ce_weight" in known[name].defaults


def test_vanilla_adds_no_terms(gen: torch.Generator) -> None:
    fs = shapes(STUDENT_STAGES, 64)
    method = build_method("vanilla", context(fs, fs))
    assert method.distill(features(fs, True, gen), features(fs, False, gen), batch(gen), 1) == {}


def test_kd_matches_closed_form(gen: torch.Generator) -> None:
    fs = shapes(STUDENT_STAGES, 64)
    method = build_method("KD", context(fs, fs), {"T": 3.0, "alpha": 0.7})
    s, t = features(fs, True, gen), features(fs, False, gen)
    got = method.distill(s, t, batch(gen), 1)["kd"]

    z_s, z_t = s.logits.detach().double() / 3.0, t.logits.double() / 3.0
    p_t = z_t.exp() / z_t.exp().sum(1, keepdim=True)
    p_s = z_s.exp() / z_s.exp().sum(1, keepdim=True)
    expected = 0.7 * 9.0 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert method.defaults["ce_weight"] == 0.1 and method.defaults["alpha"] == 0.9 and method.defaults["T"] == 4


def test_kd_with_one_temperature_is_bit_for_bit_todays_loss(gen: torch.Generator) -> None:
    """T_t = T_s = T (unset, or set equal) gives exactly ``kd_loss`` (the loss before the two
    temperatures existed) under every scale but ``none``; the unset temperatures resolve to T."""
    fs = shapes(STUDENT_STAGES, 64)
    s, t, b = features(fs, True, gen), features(fs, False, gen), batch(gen)
    expected = 0.9 * kd_loss(s.logits, t.logits, 4.0)
    default = build_method("KD", context(fs, fs), {"T": 4})
    assert default.hparams["T_teacher"] == default.hparams["T_student"] == 4 and default.hparams["scale"] == "ts2"
    assert torch.equal(default.distill(s, t, b, 1)["kd"], expected)
    for scale in ("ts2", "tt_ts", "tt2"):
        method = build_method("KD", context(fs, fs), {"T_teacher": 4.0, "T_student": 4.0, "scale": scale})
        assert torch.equal(method.distill(s, t, b, 1)["kd"], expected), scale


@pytest.mark.parametrize("scale, factor", [("ts2", 4.0), ("tt_ts", 6.0), ("tt2", 9.0), ("none", 1.0)])
def test_kd_with_teacher_and_student_temperatures(gen: torch.Generator, scale: str, factor: float) -> None:
    """T_t = 3, T_s = 2: alpha · s(T_t, T_s) · mean_batch KL(softmax(z_t/3) || softmax(z_s/2)), computed
    directly in float64; s = T_s², T_t·T_s, T_t² or 1."""
    fs = shapes(STUDENT_STAGES, 64)
    method = build_method("KD", context(fs, fs), {"T_teacher": 3, "T_student": 2.0, "scale": scale, "alpha": 0.5})
    s, t = features(fs, True, gen), features(fs, False, gen)
    got = method.distill(s, t, batch(gen), 1)["kd"]
    p_t = torch.softmax(t.logits.double() / 3.0, dim=1)
    p_s = torch.softmax(s.logits.detach().double() / 2.0, dim=1)
    expected = 0.5 * factor * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # T_t alone set: the student keeps T
    only_teacher = build_method("KD", context(fs, fs), {"T": 2.0, "T_teacher": 3.0, "scale": scale, "alpha": 0.5})
    assert only_teacher.hparams["T_student"] == 2.0
    assert only_teacher.distill(s, t, batch(gen), 1)["kd"].item() == pytest.approx(got.item(), rel=1e-6)


@pytest.mark.parametrize("hparams, problem", [
    ({"scale": "T2"}, "scale: expected one of ['none', 'ts2', 'tt2', 'tt_ts'], got 'T2'"),
    ({"T_teacher": 0}, "T_teacher: must be > 0, got 0"),
    ({"T_student": "4"}, "T_student: expected a number or null (default None), got '4'"),
])
def test_kd_temperature_settings_are_checked(hparams: dict, problem: str) -> None:
    from mcmi.distill.kd import KD

    assert KD.check_hparams(hparams) == [problem]
    assert KD.check_hparams({"T_teacher": None, "T_student": 2, "scale": "none"}) == []


def test_kd_loss_equals_both_reference_reductions(gen: torch.Generator) -> None:
    """``kd_loss`` is RepDistiller's DistillKL (summed KL / batch size · T²) and, bit for bit,
    winycg/HSAKD's KLDivLoss(reduction="batchmean") · T²."""
    z_s = torch.randn(BATCH, NUM_CLASSES, generator=gen)
    z_t = torch.randn(BATCH, NUM_CLASSES, generator=gen)
    log_p_s, p_t = F.log_softmax(z_s / 3.0, dim=1), F.softmax(z_t / 3.0, dim=1)
    got = kd_loss(z_s, z_t, 3.0)
    assert got.dim() == 0
    assert torch.equal(got, F.kl_div(log_p_s, p_t, reduction="sum") / BATCH * 9.0)
    assert torch.equal(got, torch.nn.KLDivLoss(reduction="batchmean")(log_p_s, p_t) * 9.0)


def test_dkd_decoupling_identity(gen: torch.Generator) -> None:
    """Per sample: KD = TCKD + (1 − b_t^gt) · NCKD, with alpha = beta = 1 after the warm-up."""
    fs = shapes(STUDENT_STAGES, 64)
    ctx = context(fs, fs)
    temperature = 2.0
    dkd = build_method("DKD", ctx, {"alpha": 1.0, "beta": 1.0, "T": temperature})
    kd = build_method("KD", ctx, {"alpha": 1.0, "T": temperature})
    s, t, b = features(fs, True, gen), features(fs, False, gen), batch(gen)
    for i in range(BATCH):
        s_i = Features([], [], s.pooled[i : i + 1], s.logits[i : i + 1])
        t_i = Features([], [], t.pooled[i : i + 1], t.logits[i : i + 1])
        b_i = Batch(b.x[i : i + 1], b.y[i : i + 1], b.index[i : i + 1])
        terms = dkd.distill(s_i, t_i, b_i, epoch=30)
        teacher_gt = F.softmax(t.logits[i] / temperature, dim=0)[b.y[i]]
        recombined = terms["tckd"] + (1 - teacher_gt) * terms["nckd"]
        assert recombined.item() == pytest.approx(kd.distill(s_i, t_i, b_i, 30)["kd"].item(), rel=1e-4)


def test_dkd_warmup_factor(gen: torch.Generator) -> None:
    fs = shapes(STUDENT_STAGES, 64)
    method = build_method("DKD", context(fs, fs))
    s, t, b = features(fs, True, gen), features(fs, False, gen), batch(gen)
    full = total(method.distill(s, t, b, epoch=30))
    for epoch, factor in [(1, 1 / 20), (10, 0.5), (20, 1.0), (30, 1.0)]:
        assert method.warmup_factor(epoch) == pytest.approx(factor)
        assert total(method.distill(s, t, b, epoch)).item() == pytest.approx(factor * full.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["AT", "SP", "RKD", "PKT"])
def test_zero_when_student_equals_teacher(name: str, gen: torch.Generator) -> None:
    fs = shapes(STUDENT_STAGES, 64)
    method = build_method(name, context(fs, fs))
    t = features(fs, False, gen)
    for term in method.distill(clone(t, True), t, batch(gen), 1).values():
        assert term.item() == pytest.approx(0.0, abs=1e-6)


def test_fitnet_is_mse_of_regressed_student(gen: torch.Generator) -> None:
    student, teacher = shapes(STUDENT_STAGES, 64), shapes(TEACHER_MISMATCHED, 256)
    method = build_method("FitNet", context(student, teacher), {"weight": 3.0})
    s, t, b = features(student, True, gen), features(teacher, False, gen), batch(gen)
    method.eval()  # BatchNorm on running statistics: the regressor is a fixed function here
    regressed = method.regressor(s.stages[2]).detach()
    assert regressed.shape[1:] == TEACHER_MISMATCHED[2]
    expected = 3.0 * ((regressed - t.stages[2]) ** 2).mean()
    assert method.distill(s, t, b, 1)["hint"].item() == pytest.approx(expected.item(), rel=1e-6)
    t.stages[2] = regressed
    assert method.distill(s, t, b, 1)["hint"].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("s_map", "t_map"),
    [((16, 8, 8), (32, 8, 8)), ((16, 16, 16), (32, 8, 8)), ((16, 4, 4), (32, 8, 8)),
     ((16, 10, 10), (32, 8, 8)), ((16, 2, 2), (32, 8, 8))],
)
def test_fitnet_regressor_matches_teacher_shape(s_map: tuple, t_map: tuple, gen: torch.Generator) -> None:
    student = shapes(((8, 8, 8), (8, 8, 8), s_map), 64)
    teacher = shapes(((8, 8, 8), (8, 8, 8), t_map), 64)
    method = build_method("FitNet", context(student, teacher))
    assert method.regressor(torch.randn(2, *s_map, generator=gen)).shape[1:] == t_map


@pytest.mark.parametrize("form", ["reference", "taylor_rbf"])
def test_cc_finite_and_positive(form: str, gen: torch.Generator) -> None:
    fs = shapes(STUDENT_STAGES, 64)
    method = build_method("CC", context(fs, fs), {"form": form})
    loss = method.distill(features(fs, True, gen), features(fs, False, gen), batch(gen), 1)["cc"]
    assert math.isfinite(loss.item()) and loss.item() > 0


def test_vid_initial_variance_and_loss(gen: torch.Generator) -> None:
    student, teacher = shapes(STUDENT_STAGES, 64), shapes(TEACHER_MISMATCHED, 256)
    method = build_method("VID", context(student, teacher))
    assert len(method.regressors) == 3
    for regressor in method.regressors:
        assert torch.allclose(regressor.variance(), torch.full_like(regressor.variance(), 5.0), atol=1e-5)
    loss = method.distill(features(student, True, gen), features(teacher, False, gen), batch(gen), 1)["vid"]
    assert math.isfinite(loss.item()) and loss.item() > 0


@pytest.mark.parametrize("teacher_stages", [STUDENT_STAGES, TEACHER_MISMATCHED], ids=["matched", "mismatched"])
@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_student_and_method_only(name: str, teacher_stages: tuple, gen: torch.Generator) -> None:
    student = shapes(STUDENT_STAGES, 64)
    teacher = shapes(teacher_stages, 64 if teacher_stages is STUDENT_STAGES else 256)
    method = build_method(name, context(student, teacher))
    s, t, b = features(student, True, gen), features(teacher, False, gen), batch(gen)
    terms = method.distill(s, t, b, epoch=5)
    if name == "vanilla":
        assert terms == {}
        return
    loss = total(terms)
    assert loss.requires_grad and math.isfinite(loss.item())
    loss.backward()
    student_tensors = named_student_tensors(s)
    for key in USES[name]:
        grad = student_tensors[key].grad
        assert grad is not None and grad.abs().sum() > 0, key
    for key in set(student_tensors) - set(USES[name]):
        assert student_tensors[key].grad is None, key
    for param_name, param in method.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    for x in [*t.stages, t.pooled, t.logits]:
        assert not x.requires_grad and x.grad is None


def test_methods_with_own_modules_have_parameters() -> None:
    student, teacher = shapes(STUDENT_STAGES, 64), shapes(TEACHER_MISMATCHED, 256)
    ctx = context(student, teacher)
    for name in ["FitNet", "CC", "VID"]:
        assert sum(p.numel() for p in build_method(name, ctx).parameters()) > 0, name
    for name in ["vanilla", "KD", "AT", "PKT", "SP", "RKD", "DKD"]:
        assert list(build_method(name, ctx).parameters()) == [], name


def test_unknown_hyperparameter_is_named() -> None:
    fs = shapes(STUDENT_STAGES, 64)
    with pytest.raises(ValueError, match="nope"):
        build_method("KD", context(fs, fs), {"nope": 1})


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose logits for the batch are given (trainable for the student)."""

    def __init__(self, logits: torch.Tensor, trainable: bool) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone(), requires_grad=trainable)

    def extract(self, x: torch.Tensor) -> Features:
        return Features(stages=[], preact_stages=[], pooled=self.logits, logits=self.logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def _semi_context(num_train: int, num_classes: int) -> PairContext:
    fs = FeatureShapes(stages=((4, 2, 2),), preact_stages=((4, 2, 2),), pooled_dim=4, num_classes=num_classes)
    return PairContext(student=fs, teacher=fs, num_classes=num_classes, num_train=num_train,
                       train_labels=torch.arange(num_train) % num_classes, epochs=10, input_shape=(3, 2, 2))


def test_semi_supervised_kd_is_cross_entropy_with_the_teachers_soft_labels() -> None:
    """Teacher P^T = (1/4, 1/2, 1/4) and uniform; student uniform and (1/4, 1/2, 1/4).
    -Σ P^T log P^S: sample 0 -> ln 3 (uniform student), sample 1 -> -(1/3)(ln 1/4 + ln 1/2 + ln 1/4) = (5/3) ln 2.
    No labelled term by default, and no CE on any label."""
    ln2 = math.log(2.0)
    teacher = _FixedLogits(torch.tensor([[0.0, ln2, 0.0], [0.0, 0.0, 0.0]]), trainable=False)
    student = _FixedLogits(torch.tensor([[0.0, 0.0, 0.0], [0.0, ln2, 0.0]]), trainable=True)
    b = Batch(x=torch.zeros(2, 3, 2, 2), y=torch.tensor([2, 0]), index=torch.tensor([0, 1]))
    method = build_method("SemiKD", _semi_context(6, 3))
    out = method.step(student, teacher, b, epoch=1)
    assert set(out.terms) == {"soft_ce"}
    assert out.terms["soft_ce"].item() == pytest.approx((math.log(3.0) + 5 / 3 * ln2) / 2, abs=1e-6)

    # tau = 2 against a direct float64 computation
    tau_method = build_method("SemiKD", _semi_context(6, 3), {"tau": 2.0, "distill_weight": 0.5})
    got = tau_method.step(student, teacher, b, epoch=1).terms["soft_ce"]
    p_t = torch.softmax(teacher.logits.detach().double() / 2, 1)
    log_p_s = torch.log_softmax(student.logits.detach().double() / 2, 1)
    assert got.item() == pytest.approx(0.5 * float(-(p_t * log_p_s).sum(1).mean()), rel=1e-6)


def test_semi_supervised_kd_labelled_cross_entropy_only_on_the_labelled_images() -> None:
    """12 training images of 3 classes, 3 labelled (one a class, drawn as the teachers' subset): the
    CE term is the sum of the labelled samples' CE over the batch size, whatever the others' labels."""
    ctx = _semi_context(12, 3)
    method = build_method("SemiKD", ctx, {"labeled_ce_weight": 0.3, "labeled_count": 3, "labeled_seed": 5})
    from mcmi.data.subsets import labelled_indices

    chosen = labelled_indices(ctx.train_labels, 3, 5, 3)
    assert method.labelled.nonzero().flatten().tolist() == chosen.tolist()
    others = [i for i in range(12) if i not in chosen.tolist()][:2]
    index = torch.tensor([int(chosen[0]), others[0], int(chosen[1]), others[1]])
    gen = torch.Generator().manual_seed(3)
    student = _FixedLogits(torch.randn(4, 3, generator=gen), trainable=True)
    teacher = _FixedLogits(torch.randn(4, 3, generator=gen), trainable=False)
    labels = ctx.train_labels[index]
    b = Batch(x=torch.zeros(4, 3, 2, 2), y=labels, index=index)
    got = method.step(student, teacher, b, epoch=1).terms["labeled_ce"]
    ce = F.cross_entropy(student.logits.detach(), labels, reduction="none")
    assert got.item() == pytest.approx(0.3 * float(ce[0] + ce[2]) / 4, rel=1e-6)
    flipped = Batch(x=b.x, y=torch.stack([labels[0], (labels[1] + 1) % 3, labels[2], (labels[3] + 1) % 3]), index=index)
    assert method.step(student, teacher, flipped, epoch=1).terms["labeled_ce"].item() == pytest.approx(got.item())
    with pytest.raises(ValueError, match="labeled_ce_weight > 0 needs labeled_count > 0"):
        build_method("SemiKD", ctx, {"labeled_ce_weight": 0.3})
