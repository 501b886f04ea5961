"""MIMKD and ITRD: each loss against a hand-worked closed form on small tensors, the methods' terms
against those losses, and gradient flow into the student and the methods' own modules only."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mcmi.data.batch import Batch
from mcmi.distill import PairContext, build_method
from mcmi.distill.crd import CRD
from mcmi.distill.itrd import correlation_loss, gram, mutual_information_loss
from mcmi.distill.mimkd import MIMKD, ConvCritic, jsd_mi_bound, shuffled
from mcmi.models.base import Features, FeatureShapes

NUM_CLASSES = 10
STUDENT = ((16, 16, 16), (16, 16, 16), (32, 8, 8), (64, 4, 4))
TEACHER = ((32, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2), (256, 1, 1))  # one more stage, all sizes differ


def shapes(stages: tuple[tuple[int, int, int], ...], pooled_dim: int) -> FeatureShapes:
    return FeatureShapes(stages=stages, preact_stages=stages, pooled_dim=pooled_dim, num_classes=NUM_CLASSES)


def context(student: FeatureShapes, teacher: FeatureShapes, num_train: int = 100) -> PairContext:
    return PairContext(student=student, teacher=teacher, num_classes=NUM_CLASSES, num_train=num_train,
                       train_labels=torch.arange(num_train) % NUM_CLASSES, epochs=240, input_shape=(3, 32, 32))


def features(fs: FeatureShapes, batch: int, requires_grad: bool, gen: torch.Generator) -> Features:
    def make(*shape: int) -> torch.Tensor:
        return torch.randn(batch, *shape, generator=gen).requires_grad_(requires_grad)

    stages = [make(*s) for s in fs.stages]
    return Features(stages=stages, preact_stages=stages, pooled=make(fs.pooled_dim), logits=make(fs.num_classes))


def make_batch(n: int) -> Batch:
    return Batch(x=torch.zeros(n, 3, 32, 32), y=torch.arange(n) % NUM_CLASSES, index=torch.arange(n))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ------------------------------------------------------------------------------------------- MIMKD
def test_jsd_bound_closed_form() -> None:
    zeros = torch.zeros(3)
    assert jsd_mi_bound(zeros, zeros).item() == pytest.approx(-2 * math.log(2))
    pos, neg = torch.tensor([1.0, -2.0]), torch.tensor([0.5])
    expected = -(math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2 - math.log1p(math.exp(0.5))
    assert jsd_mi_bound(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    # a perfect critic (joint +inf, marginal −inf) reaches the bound's supremum 0; a wrong one is very negative
    assert jsd_mi_bound(torch.full((4,), 40.0), torch.full((4,), -40.0)).item() == pytest.approx(0.0, abs=1e-12)
    assert jsd_mi_bound(torch.full((4,), -40.0), torch.full((4,), 40.0)).item() == pytest.approx(-80.0, rel=1e-6)


def test_shuffled_pairs_every_row_with_another_sample() -> None:
    x = torch.arange(6).float().unsqueeze(1)
    for _ in range(20):
        y = shuffled(x)
        assert sorted(y.squeeze(1).tolist()) == list(range(6))
        assert (y != x).all()
    two = torch.tensor([[1.0], [2.0]])
    assert torch.equal(shuffled(two), two.flip(0))
    assert torch.equal(shuffled(two[:1]), two[:1])


def _constant_critics(method: nn.Module, score: float) -> None:
    """Make every ConvCritic output ``score`` everywhere (last conv: zero weights, bias = score)."""
    for module in method.modules():
        if isinstance(module, ConvCritic):
            last = module.net[-1]
            nn.init.zeros_(last.weight)
            nn.init.constant_(last.bias, score)


@pytest.mark.parametrize("score", [0.0, 1.5])
def test_mimkd_terms_with_constant_critics(score: float, gen: torch.Generator) -> None:
    student, teacher = shapes(STUDENT, 64), shapes(TEACHER, 256)
    method = build_method("MIMKD", context(student, teacher), {"global_bound": "jsd"})
    _constant_critics(method, score)
    terms = method.distill(features(student, 4, True, gen), features(teacher, 4, False, gen), make_batch(4), 1)
    per_term = math.log1p(math.exp(-score)) + math.log1p(math.exp(score))   # −Î_JSD with every score = c
    assert method.feature_pairs == [(1, 2), (2, 3)]  # student stages 1..2 with the teacher's deepest intermediates
    assert terms["mimkd_global"].item() == pytest.approx(1.0 * per_term, rel=1e-6)
    assert terms["mimkd_local"].item() == pytest.approx(0.75 * per_term, rel=1e-6)
    assert terms["mimkd_feature"].item() == pytest.approx(1.0 * 2 * per_term, rel=1e-6)


def test_mimkd_local_term_equals_hand_built_critic_pairs(gen: torch.Generator) -> None:
    """With a batch of two the shuffle is the swap, so the local term can be rebuilt by hand."""
    student, teacher = shapes(STUDENT, 64), shapes(TEACHER, 256)
    method = build_method("MIMKD", context(student, teacher), {"global_bound": "jsd", "lambda_l": 1.0})
    s, t = features(student, 2, True, gen), features(teacher, 2, False, gen)
    last = s.stages[-1]
    t_map = t.pooled[:, :, None, None].expand(-1, -1, 4, 4)
    pos = method.local_critic(torch.cat([last, t_map], dim=1))
    neg = method.local_critic(torch.cat([last, t_map.flip(0)], dim=1))
    assert pos.shape == (2, 1, 4, 4)  # one score per location of the student's last map
    expected = (nn.functional.softplus(-pos).mean() + nn.functional.softplus(neg).mean()).item()
    terms = method.distill(s, t, make_batch(2), 1)
    assert terms["mimkd_local"].item() == pytest.approx(expected, rel=1e-5)


def test_mimkd_critic_has_the_papers_layers() -> None:
    critic = ConvCritic(48, 512)
    convs = [m for m in critic.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (48, 512, (1, 1)), (512, 512, (1, 1)), (512, 1, (1, 1))]
    assert sum(isinstance(m, nn.ReLU) for m in critic.modules()) == 2


def test_mimkd_global_nce_is_crds_contrast(gen: torch.Generator) -> None:
    student, teacher = shapes(STUDENT, 64), shapes(TEACHER, 256)
    ctx = context(student, teacher)
    s, t = features(student, 4, True, gen), features(teacher, 4, False, gen)
    torch.manual_seed(3)
    method = build_method("MIMKD", ctx)
    assert isinstance(method.global_nce, CRD) and method.global_nce.hparams["nce_k"] == 4096
    torch.manual_seed(3)
    crd = CRD(ctx, nce_k=4096)
    torch.manual_seed(4)
    got = method.distill(s, t, make_batch(4), 1)["mimkd_global"]
    torch.manual_seed(4)
    expected = crd.contrast(s.pooled, t.pooled, torch.arange(4))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("bound", ["nce", "jsd"])
def test_mimkd_gradients_reach_student_and_own_modules_only(bound: str, gen: torch.Generator) -> None:
    student, teacher = shapes(STUDENT, 64), shapes(TEACHER, 256)
    method = build_method("MIMKD", context(student, teacher), {"global_bound": bound, "nce_k": 16})
    s, t = features(student, 4, True, gen), features(teacher, 4, False, gen)
    terms = method.distill(s, t, make_batch(4), 1)
    assert set(terms) == {"mimkd_global", "mimkd_local", "mimkd_feature"}
    torch.stack(list(terms.values())).sum().backward()
    for name, x in [("pooled", s.pooled), ("stage1", s.stages[1]), ("stage2", s.stages[2]), ("stage3", s.stages[3])]:
        assert x.grad is not None and x.grad.abs().sum() > 0, name
    assert s.stages[0].grad is None and s.logits.grad is None
    for name, param in method.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for x in [*t.stages, t.pooled, t.logits]:
        assert x.grad is None


def test_mimkd_bad_bound_names_the_key() -> None:
    fs = shapes(STUDENT, 64)
    with pytest.raises(ValueError, match="methods.MIMKD.global_bound"):
        build_method("MIMKD", context(fs, fs), {"global_bound": "dv"})


# -------------------------------------------------------------------------------------------- ITRD
def test_itrd_correlation_closed_form() -> None:
    # column 0: s = [1, 2, 3], t = [2, 4, 6] -> both normalise to [-1, 0, 1]: C_00 = 2/3
    # column 1: s = [1, 0, -1] -> [1, 0, -1]; t = [0, 0, 3] -> [-1, -1, 2]/sqrt(3): C_11 = -1/sqrt(3)
    f_s = torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, -1.0]])
    f_t = torch.tensor([[2.0, 0.0], [4.0, 0.0], [6.0, 3.0]])
    for alpha in (1.0, 1.5):
        expected = math.log2(abs(1 - 2 / 3) ** (2 * alpha) + abs(1 + 1 / math.sqrt(3)) ** (2 * alpha))
        assert correlation_loss(f_s, f_t, alpha, eps=0.0).item() == pytest.approx(expected, rel=1e-6)
    # eps keeps a constant (dead) dimension finite; the reference (eps = 0) gives NaN there
    dead = torch.cat([f_t[:, :1], torch.zeros(3, 1)], dim=1)
    assert math.isnan(correlation_loss(f_s, dead, 1.0, eps=0.0).item())
    assert math.isfinite(correlation_loss(f_s, dead, 1.0).item())


def test_itrd_mutual_information_closed_form() -> None:
    # s rows normalise to (1, 0) and (1/√2, 1/√2): G_s = [[1, 1/√2], [1/√2, 1]], A_s = G_s / 2, Σ A_s² = 3/4
    # t rows orthogonal: G_t = I, so G_s ∘ G_t = I, A_st = I / 2, Σ A_st² = 1/2
    f_s = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    f_t = torch.tensor([[3.0, 0.0], [0.0, 5.0]])
    assert mutual_information_loss(f_s, f_t).item() == pytest.approx(0.25, rel=1e-6)
    assert mutual_information_loss(f_s, f_t, log2=True).item() == pytest.approx(math.log2(1.5), rel=1e-6)
    # a teacher whose samples are identical carries no pairwise structure: A_st = A_s, loss 0
    same = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    assert mutual_information_loss(f_s, same).item() == pytest.approx(0.0, abs=1e-7)
    # RBF Gram: exp(−‖a − b‖² / 2σ²) of the normalised rows; (1,0) vs (1/√2,1/√2): ‖·‖² = 2 − √2
    g = gram(f_s, "rbf", sigma=0.5)
    assert g[0, 1].item() == pytest.approx(math.exp(-(2 - math.sqrt(2)) / 0.5), rel=1e-6)
    assert torch.allclose(torch.diagonal(g), torch.ones(2))


def test_itrd_terms_use_the_embedding_as_the_reference(gen: torch.Generator) -> None:
    student = shapes(STUDENT, 64)
    for t_dim in (64, 256):
        teacher = shapes(TEACHER, t_dim)
        method = build_method("ITRD", context(student, teacher), {"alpha_it": 1.5})
        assert (method.embed.in_features, method.embed.out_features) == (64, t_dim)
        s, t = features(student, 8, True, gen), features(teacher, 8, False, gen)
        terms = method.distill(s, t, make_batch(8), 1)
        embedded = method.embed(s.pooled)
        mi_input = s.pooled if t_dim == 64 else embedded   # same width: the raw student feature (reference)
        assert terms["itrd_corr"].item() == pytest.approx(2.0 * correlation_loss(embedded, t.pooled, 1.5).item(),
                                                          rel=1e-6)
        assert terms["itrd_mutual"].item() == pytest.approx(
            1.0 * mutual_information_loss(mi_input, t.pooled).item(), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("t_dim", [64, 256])
def test_itrd_gradients_reach_student_and_embedding_only(t_dim: int, gen: torch.Generator) -> None:
    student, teacher = shapes(STUDENT, 64), shapes(TEACHER, t_dim)
    method = build_method("ITRD", context(student, teacher))
    s, t = features(student, 8, True, gen), features(teacher, 8, False, gen)
    torch.stack(list(method.distill(s, t, make_batch(8), 1).values())).sum().backward()
    assert s.pooled.grad is not None and s.pooled.grad.abs().sum() > 0
    assert all(x.grad is None for x in [*s.stages, s.logits])
    for name, param in method.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(x.grad is None for x in [*t.stages, t.pooled, t.logits])


def test_itrd_defaults_follow_the_readme_and_bad_kernel_names_the_key() -> None:
    defaults = build_method("ITRD", context(shapes(STUDENT, 64), shapes(STUDENT, 64))).hparams
    assert (defaults["lambda_corr"], defaults["lambda_mutual"], defaults["alpha_it"]) == (2.0, 1.0, 1.01)
    assert defaults["weight"] == 1.0 and defaults["ce_weight"] == 1.0 and defaults["mi_log2"] is False
    with pytest.raises(ValueError, match="methods.ITRD.mi_kernel"):
        build_method("ITRD", context(shapes(STUDENT, 64), shapes(STUDENT, 64)), {"mi_kernel": "laplace"})
    assert MIMKD.defaults["lambda_l"] == 0.75 and MIMKD.defaults["nce_k"] == 4096
