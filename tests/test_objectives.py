"""The teacher regularisers of Figure 7 (entropy, label smoothing in two forms) on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcmi.data.batch import Batch
from mcmi.objectives import EntropyRegularized, LabelSmoothing, LabelSmoothingReverseKL, Objective

LN2, LN3 = math.log(2.0), math.log(3.0)


def hand_batch(requires_grad: bool = False) -> Batch:
    """Two samples whose softmax is known: P_0 = (1/4, 1/2, 1/4) (logits ln 1, ln 2, ln 1), label 1;
    P_1 = (1/3, 1/3, 1/3) (logits 0), label 0. The model is the identity, so x are the logits."""
    x = torch.tensor([[0.0, LN2, 0.0], [0.0, 0.0, 0.0]], requires_grad=requires_grad)
    return Batch(x=x, y=torch.tensor([1, 0]), index=torch.arange(2))


def terms(objective: Objective, batch: Batch) -> dict[str, float]:
    return {k: float(v) for k, v in objective.step(nn.Identity(), batch, epoch=1).terms.items()}


def test_entropy_regulariser_is_ce_minus_beta_mean_entropy() -> None:
    # H(P_0) = 2 * (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2;  H(P_1) = ln 3.  CE: -ln(1/2) = ln 2 and ln 3.
    got = terms(EntropyRegularized(beta=0.2), hand_batch())
    assert got["ce"] == pytest.approx((LN2 + LN3) / 2, abs=1e-6)
    assert got["entropy"] == pytest.approx(-0.2 * (1.5 * LN2 + LN3) / 2, abs=1e-6)
    assert EntropyRegularized(0.2).describe() == {"objective": "entropy", "beta": 0.2}


def test_entropy_regulariser_raises_the_entropy_of_a_confident_output() -> None:
    """A gradient step on the entropy term alone moves a peaked output towards uniform (the sign that
    makes "high-entropy" teachers), and with beta = 0 the objective is plain cross-entropy."""
    batch = hand_batch(requires_grad=True)
    out = EntropyRegularized(beta=1.0).step(nn.Identity(), batch, epoch=1)
    out.terms["entropy"].backward()
    stepped = batch.x.detach() - 0.1 * batch.x.grad
    before, after = (-(F.softmax(z, 1) * F.log_softmax(z, 1)).sum(1)[0] for z in (batch.x.detach(), stepped))
    assert after > before
    assert terms(EntropyRegularized(0.0), hand_batch())["entropy"] == 0.0


def test_label_smoothing_is_cross_entropy_on_smoothed_targets() -> None:
    # eps = 0.1, C = 3: targets 0.9 + 0.1/3 on the label, 0.1/3 elsewhere.
    # sample 0: -(0.9333 ln(1/2) + 2 * 0.0333 ln(1/4)) = (0.9333 + 0.1333) ln 2 = (16/15) ln 2
    # sample 1: uniform output, any target summing to one gives ln 3.
    got = terms(LabelSmoothing(eps=0.1), hand_batch())
    assert got == {"ce_smoothed": pytest.approx((16 / 15 * LN2 + LN3) / 2, abs=1e-6)}
    assert terms(LabelSmoothing(eps=0.0), hand_batch())["ce_smoothed"] == pytest.approx((LN2 + LN3) / 2, abs=1e-6)


def test_reverse_kl_label_smoothing_is_the_authors_ls_term() -> None:
    # eps = 0.1, C = 3: q(y=1) = (0.05, 0.9, 0.05), q(y=0) = (0.9, 0.05, 0.05).
    # KL(P_0 || q) = 2 * (1/4) ln(0.25/0.05) + (1/2) ln(0.5/0.9) = 0.5 ln 5 + 0.5 ln(5/9)
    # KL(P_1 || q) = (1/3) ln((1/3)/0.9) + (2/3) ln((1/3)/0.05)
    kl0 = 0.5 * math.log(5) + 0.5 * math.log(5 / 9)
    kl1 = math.log((1 / 3) / 0.9) / 3 + 2 * math.log((1 / 3) / 0.05) / 3
    objective = LabelSmoothingReverseKL(eps=0.1, weight=0.5)
    got = terms(objective, hand_batch())
    assert got["ce"] == pytest.approx((LN2 + LN3) / 2, abs=1e-6)
    assert got["ls_kl"] == pytest.approx(0.5 * (kl0 + kl1) / 2, abs=1e-6)
    q = objective.smoothed_targets(torch.tensor([1, 0]), 3)
    torch.testing.assert_close(q, torch.tensor([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05]]))


@pytest.mark.parametrize("make, message", [
    (lambda: EntropyRegularized(-0.1), "beta must be >= 0"),
    (lambda: LabelSmoothing(1.0), r"eps must be in \[0, 1\)"),
    (lambda: LabelSmoothingReverseKL(0.0, 1.0), r"eps must be in \(0, 1\)"),
    (lambda: LabelSmoothingReverseKL(0.1, -1.0), "weight must be >= 0"),
])
def test_bad_regulariser_settings_fail_naming_the_setting(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
