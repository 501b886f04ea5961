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
from mcmi.distill.itrd import correlation_loss, gram, mutual_information_loss, silverman_sigma
from mcmi.distill.mimkd import (MIMKD, ConvCritic, ProjectDotCritic, jsd_mi_bound, negative_offset,
                                pairs_by_size, roll_batch)
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
# Small shapes for the set R: the student has a stem and a stage 1 of 16x16 (a pair of one size in one
# network), the teacher two 8x8 maps and a 2x2 map the student lacks.
R_STUDENT = ((8, 16, 16), (16, 16, 16), (32, 8, 8), (64, 4, 4))
R_TEACHER = ((8, 16, 16), (16, 8, 8), (24, 8, 8), (32, 4, 4), (48, 2, 2))


def test_jsd_bound_closed_form() -> None:
    zeros = torch.zeros(3)
    assert jsd_mi_bound(zeros, zeros).item() == pytest.approx(-2 * math.log(2))
    pos, neg = torch.tensor([1.0, -2.0]), torch.tensor([0.5])
    expected = -(math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2 - math.log1p(math.exp(0.5))
    assert jsd_mi_bound(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    # a perfect critic (joint +inf, marginal −inf) reaches the bound's supremum 0; a wrong one is very negative
    assert jsd_mi_bound(torch.full((4,), 40.0), torch.full((4,), -40.0)).item() == pytest.approx(0.0, abs=1e-12)
    assert jsd_mi_bound(torch.full((4,), -40.0), torch.full((4,), 40.0)).item() == pytest.approx(-80.0, rel=1e-6)


def test_negative_offset_pairs_every_row_with_another_sample() -> None:
    x = torch.arange(6).float().unsqueeze(1)
    for _ in range(20):
        offset = negative_offset(6)
        assert offset.shape == () and 1 <= int(offset) <= 5
        y = roll_batch(x, offset)
        assert sorted(y.squeeze(1).tolist()) == list(range(6)) and (y != x).all()
        assert torch.equal(y, torch.roll(x, int(offset), 0))
        assert y[int(offset)].item() == 0.0       # row b holds row b − offset
    assert int(negative_offset(2)) == 1 and negative_offset(1) is None
    two = torch.tensor([[1.0], [2.0]])
    assert torch.equal(roll_batch(two, torch.tensor(1)), two.flip(0)) and torch.equal(roll_batch(two, None), two)
    maps = torch.randn(6, 3, 2, 2).contiguous(memory_format=torch.channels_last)     # torch.roll's layout too
    for m in (maps, maps[:, :, :1, :1].expand(-1, -1, 2, 2), maps.contiguous()):
        rolled = roll_batch(m, torch.tensor(2))
        assert torch.equal(rolled, torch.roll(m, 2, 0)) and rolled.stride() == torch.roll(m, 2, 0).stride()
    # on a CPU the offset is the host generator's draw it always was
    torch.manual_seed(5)
    expected = torch.randint(1, 64, ()).item()
    torch.manual_seed(5)
    assert int(negative_offset(64)) == expected


@pytest.mark.parametrize("include_stem, same_size_map, expected", [
    (False, "deepest", [((8, 8), 2, 2), ((4, 4), 3, 3)]),
    (False, "shallowest", [((8, 8), 2, 1), ((4, 4), 3, 3)]),
    (True, "deepest", [((16, 16), 1, 0), ((8, 8), 2, 2), ((4, 4), 3, 3)]),
    (True, "shallowest", [((16, 16), 0, 0), ((8, 8), 2, 1), ((4, 4), 3, 3)]),
])
def test_mimkd_pairs_maps_of_the_same_size(include_stem: bool, same_size_map: str,
                                           expected: list[tuple[tuple[int, int], int, int]]) -> None:
    """R by hand: one pair per size both networks have (16x16 only with the stems, 2x2 never), the
    chosen map where a network has two of a size, ordered down to the deepest map."""
    student, teacher = shapes(R_STUDENT, 64), shapes(R_TEACHER, 48)
    method = build_method("MIMKD", context(student, teacher),
                          {"global_bound": "jsd", "include_stem": include_stem, "same_size_map": same_size_map})
    assert method.feature_pairs_with_sizes() == expected
    assert method.feature_pairs == pairs_by_size(student, teacher, include_stem, same_size_map)
    for _, i, j in expected:
        assert R_STUDENT[i][1:] == R_TEACHER[j][1:]
    assert [c.net[0].in_channels for c in method.feature_critics] == [R_TEACHER[j][0] + R_STUDENT[i][0]
                                                                      for _, i, j in expected]
    assert method.local_stage == 3     # the deepest pair's student map


def test_mimkd_deepest_map_belongs_to_R_and_carries_the_local_term() -> None:
    same = shapes(R_STUDENT, 64)
    method = build_method("MIMKD", context(same, same), {"global_bound": "jsd"})
    assert method.feature_pairs == [(1, 1), (2, 2), (3, 3)]      # stages[1:], the deepest map included
    assert method.local_stage == 3 and method.local_critic.net[0].in_channels == 64 + 64
    # a student whose deepest map (2x2) has no same-sized teacher map: f_s^(K) is its deepest map in R
    student = shapes(((8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 2, 2)), 64)
    teacher = shapes(((8, 16, 16), (16, 8, 8), (24, 4, 4)), 24)
    method = build_method("MIMKD", context(student, teacher), {"global_bound": "jsd"})
    assert method.feature_pairs_with_sizes() == [((8, 8), 1, 1), ((4, 4), 2, 2)]
    assert method.local_stage == 2 and method.local_critic.net[0].in_channels == 24 + 32


def _constant_critics(method: nn.Module, scores: list[float]) -> None:
    """Make the k-th ConvCritic (in module order) output ``scores[k]`` everywhere."""
    critics = [m for m in method.modules() if isinstance(m, ConvCritic)]
    assert len(critics) == len(scores)
    for critic, score in zip(critics, scores):
        last = critic.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, score)


def minus_jsd(score: float) -> float:
    """−Î_JSD when every positive and negative score equals ``score``."""
    return math.log1p(math.exp(-score)) + math.log1p(math.exp(score))


def test_mimkd_feature_term_is_the_mean_over_the_K_pairs(gen: torch.Generator) -> None:
    """Eq. (5): each pair's bound is a mean over its m_k² locations, then the K pairs are averaged with
    equal weight (not summed, and not weighted by their sizes); λ_f multiplies that mean."""
    student, teacher = shapes(R_STUDENT, 64), shapes(R_TEACHER, 48)
    method = build_method("MIMKD", context(student, teacher),
                          {"global_bound": "jsd", "include_stem": True, "lambda_f": 0.5})
    local_score, pair_scores = 0.3, [2.0, -1.0, 0.5]      # R: 16x16, 8x8, 4x4
    _constant_critics(method, [local_score, *pair_scores])
    terms = method.distill(features(student, 4, True, gen), features(teacher, 4, False, gen), make_batch(4), 1)
    per_pair = [minus_jsd(c) for c in pair_scores]
    assert terms["mimkd_feature"].item() == pytest.approx(0.5 * sum(per_pair) / 3, rel=1e-6)
    by_location = sum(p * m * m for p, m in zip(per_pair, (16, 8, 4))) / (16 * 16 + 8 * 8 + 4 * 4)
    assert abs(sum(per_pair) / 3 - by_location) > 0.1 and abs(sum(per_pair) / 3 - sum(per_pair)) > 1
    assert terms["mimkd_local"].item() == pytest.approx(0.75 * minus_jsd(local_score), rel=1e-6)


def _sum_critic(critic: ConvCritic, teacher_weight: float) -> None:
    """A one-unit critic whose score is teacher_weight · t + s for non-negative inputs [t, s]."""
    first, middle, last = (m for m in critic.net if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        first.weight.copy_(torch.tensor([teacher_weight, 1.0]).view(1, 2, 1, 1))
        for conv in (first, middle, last):
            conv.bias.zero_()
        middle.weight.fill_(1.0)
        last.weight.fill_(1.0)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_mimkd_local_and_feature_terms_by_hand() -> None:
    """One-channel maps, a batch of two (the negative x' of sample b is sample 1 − b) and critics whose
    score is w·t + s: the local term pairs f_t(x) -- the teacher's pooled vector, not its map -- with
    every location of the student's deepest map in R; the feature term pairs the teacher's map of the
    same size location by location; both are −Î_JSD of eq. (2) averaged over the locations."""
    student = shapes(((1, 4, 4), (1, 2, 2)), 1)
    teacher = shapes(((1, 4, 4), (1, 2, 2)), 1)
    method = build_method("MIMKD", context(student, teacher),
                          {"global_bound": "jsd", "critic_hidden": 1, "lambda_l": 1.0})
    assert method.feature_pairs == [(1, 1)] and method.local_stage == 1
    _sum_critic(method.local_critic, teacher_weight=1.0)
    _sum_critic(method.feature_critics[0], teacher_weight=2.0)   # [f_t, f_s]: the teacher's channel first
    s_map = [[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.5, 2.0]]         # per sample, the 2x2 locations row by row
    t_map = [[3.0, 0.0, 1.0, 0.5], [0.2, 0.4, 0.6, 0.8]]
    t_pooled = [0.5, 2.0]
    s = Features(stages=[torch.rand(2, 1, 4, 4), torch.tensor(s_map).view(2, 1, 2, 2)], preact_stages=[],
                 pooled=torch.zeros(2, 1), logits=torch.zeros(2, NUM_CLASSES))
    t = Features(stages=[torch.rand(2, 1, 4, 4), torch.tensor(t_map).view(2, 1, 2, 2)], preact_stages=[],
                 pooled=torch.tensor(t_pooled).view(2, 1), logits=torch.zeros(2, NUM_CLASSES))
    terms = method.distill(s, t, make_batch(2), 1)

    def minus_bound(positive: list[float], negative: list[float]) -> float:
        return (sum(_softplus(-p) for p in positive) / len(positive)
                + sum(_softplus(n) for n in negative) / len(negative))

    local_pos = [t_pooled[b] + v for b in range(2) for v in s_map[b]]
    local_neg = [t_pooled[1 - b] + v for b in range(2) for v in s_map[b]]
    assert terms["mimkd_local"].item() == pytest.approx(minus_bound(local_pos, local_neg), rel=1e-6)
    feat_pos = [2 * t_map[b][ij] + s_map[b][ij] for b in range(2) for ij in range(4)]
    feat_neg = [2 * t_map[1 - b][ij] + s_map[b][ij] for b in range(2) for ij in range(4)]
    assert terms["mimkd_feature"].item() == pytest.approx(minus_bound(feat_pos, feat_neg), rel=1e-6)


def test_mimkd_global_jsd_critic_projects_and_dots() -> None:
    """§3.6: each side projected by a network with a linear shortcut, the score their dot product. With
    the nonlinear branches zeroed and identity shortcuts the score is ⟨f_t, f_s⟩, checked by hand."""
    student, teacher = shapes(((1, 4, 4), (1, 2, 2)), 2), shapes(((1, 4, 4), (1, 2, 2)), 2)
    method = build_method("MIMKD", context(student, teacher), {"global_bound": "jsd", "global_proj_dim": 2})
    critic = method.global_critic
    assert isinstance(critic, ProjectDotCritic)
    for projection in (critic.project_t, critic.project_s):
        layers = [type(m).__name__ for m in projection.nonlinear]
        assert layers == ["Linear", "ReLU", "Linear"]
        assert torch.equal(torch.diagonal(projection.shortcut.weight.detach()), torch.ones(2))
        with torch.no_grad():
            nn.init.zeros_(projection.nonlinear[-1].weight)
            nn.init.zeros_(projection.nonlinear[-1].bias)
            projection.shortcut.weight.copy_(torch.eye(2))
            projection.shortcut.bias.zero_()
    f_s, f_t = [[1.0, 0.5], [-0.5, 2.0]], [[0.2, 1.0], [1.5, -1.0]]
    s = Features(stages=[torch.rand(2, 1, 4, 4), torch.rand(2, 1, 2, 2)], preact_stages=[],
                 pooled=torch.tensor(f_s), logits=torch.zeros(2, NUM_CLASSES))
    t = Features(stages=[torch.rand(2, 1, 4, 4), torch.rand(2, 1, 2, 2)], preact_stages=[],
                 pooled=torch.tensor(f_t), logits=torch.zeros(2, NUM_CLASSES))
    got = method.distill(s, t, make_batch(2), 1)["mimkd_global"].item()
    dot = [[sum(a * b for a, b in zip(f_t[i], f_s[j])) for j in range(2)] for i in range(2)]   # dot[t][s]
    positive, negative = [dot[0][0], dot[1][1]], [dot[1][0], dot[0][1]]
    expected = sum(_softplus(-p) for p in positive) / 2 + sum(_softplus(n) for n in negative) / 2
    assert got == pytest.approx(expected, rel=1e-6)


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
    negative_offset(4)     # distill draws the JSD terms' negative offset first
    expected = crd.contrast(s.pooled, t.pooled, torch.arange(4))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("bound", ["nce", "jsd"])
def test_mimkd_gradients_reach_student_and_own_modules_only(bound: str, gen: torch.Generator) -> None:
    student, teacher = shapes(R_STUDENT, 64), shapes(R_TEACHER, 48)
    method = build_method("MIMKD", context(student, teacher), {"global_bound": bound, "nce_k": 16})
    s, t = features(student, 4, True, gen), features(teacher, 4, False, gen)
    terms = method.distill(s, t, make_batch(4), 1)
    assert set(terms) == {"mimkd_global", "mimkd_local", "mimkd_feature"}
    torch.stack(list(terms.values())).sum().backward()
    for name, x in [("pooled", s.pooled), ("stage2", s.stages[2]), ("stage3", s.stages[3])]:
        assert x.grad is not None and x.grad.abs().sum() > 0, name
    assert s.stages[0].grad is None and s.stages[1].grad is None and s.logits.grad is None   # not in R
    for name, param in method.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for x in [*t.stages, t.pooled, t.logits]:
        assert x.grad is None


def test_mimkd_bad_choices_name_the_key() -> None:
    fs = shapes(STUDENT, 64)
    with pytest.raises(ValueError, match="methods.MIMKD.global_bound"):
        build_method("MIMKD", context(fs, fs), {"global_bound": "dv"})
    with pytest.raises(ValueError, match="methods.MIMKD.same_size_map"):
        build_method("MIMKD", context(fs, fs), {"same_size_map": "middle"})
    with pytest.raises(ValueError, match="include_stem"):
        build_method("MIMKD", context(fs, fs), {"include_stem": "yes"})
    with pytest.raises(ValueError, match="share no feature-map size"):
        build_method("MIMKD", context(fs, shapes(((8, 16, 16), (16, 3, 3)), 16)), {"global_bound": "jsd"})


def test_mimkd_defaults_are_the_papers() -> None:
    hp = build_method("MIMKD", context(shapes(STUDENT, 64), shapes(STUDENT, 64))).hparams
    assert (hp["ce_weight"], hp["lambda_g"], hp["lambda_l"], hp["lambda_f"]) == (1.0, 1.0, 0.75, 1.0)
    assert (hp["global_bound"], hp["nce_k"], hp["critic_hidden"]) == ("nce", 4096, 512)
    assert (hp["include_stem"], hp["same_size_map"], hp["global_proj_dim"]) == (False, "deepest", 2048)


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


def test_itrd_rbf_kernel_is_the_supplements_with_silvermans_width() -> None:
    """The supplement: κ(a, b) = exp(−‖a − b‖² / 2σ²) in place of the degree-2 polynomial kernel,
    σ = h · n^(−1/(4+d)). The loss squares ``gram``'s entries (for poly that squaring is the degree-2
    kernel), so for rbf G ∘ G must be κ itself -- not κ², an RBF of width σ/√2."""
    assert silverman_sigma(64, 1280, 5.0) == pytest.approx(5.0 * 64 ** (-1 / 1284), rel=1e-12)
    assert silverman_sigma(2, 2, 1.0) == pytest.approx(2 ** (-1 / 6), rel=1e-12)
    f_s = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # normalised rows (1, 0) and (1/√2, 1/√2): ‖·‖² = 2 − √2
    g = gram(f_s, "rbf", sigma=0.5)
    assert (g[0, 1] ** 2).item() == pytest.approx(math.exp(-(2 - math.sqrt(2)) / (2 * 0.25)), rel=1e-6)
    assert torch.allclose(torch.diagonal(g), torch.ones(2))
    # the whole term by hand: B = 2, D = 2, σ = h · 2^(−1/6) for both sides; Σ A² = Σ κ / B²
    f_t = torch.tensor([[3.0, 0.0], [0.0, 5.0]])                     # orthogonal rows: ‖·‖² = 2
    for h in (1.0, 5.0):
        sigma = h * 2 ** (-1 / 6)
        k_s = math.exp(-(2 - math.sqrt(2)) / (2 * sigma**2))
        k_t = math.exp(-2 / (2 * sigma**2))
        p_s, p_st = (2 + 2 * k_s) / 4, (2 + 2 * k_s * k_t) / 4
        got = mutual_information_loss(f_s, f_t, "rbf", rbf_h=h)
        assert got.item() == pytest.approx(p_s - p_st, rel=1e-5)
        got_log = mutual_information_loss(f_s, f_t, "rbf", rbf_h=h, log2=True)
        assert got_log.item() == pytest.approx(math.log2(p_s) - math.log2(p_st), rel=1e-5)


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
    assert defaults["mi_kernel"] == "poly" and defaults["rbf_h"] == 1.0
    with pytest.raises(ValueError, match="rbf_h"):
        build_method("ITRD", context(shapes(STUDENT, 64), shapes(STUDENT, 64)), {"rbf_h": 0.0})
    with pytest.raises(ValueError, match="methods.ITRD.mi_kernel"):
        build_method("ITRD", context(shapes(STUDENT, 64), shapes(STUDENT, 64)), {"mi_kernel": "laplace"})
    assert MIMKD.defaults["lambda_l"] == 0.75 and MIMKD.defaults["nce_k"] == 4096
