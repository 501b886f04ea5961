"""CMI and LL against hand-worked examples; the MCMI loss terms."""

import math

import pytest
import torch

from mcmi.cmi import class_centroids, cmi_and_ll, kl_to_centroids, mcmi_loss


def test_cmi_is_zero_when_every_prediction_equals_its_class_centroid():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 0, 2, 2])
    cmi, ll = cmi_and_ll(probs, labels, num_classes=3)
    assert cmi == pytest.approx(0.0, abs=1e-7)
    assert ll == pytest.approx((2 * math.log(0.6) + 2 * math.log(0.6)) / 4)


def test_two_class_example_worked_by_hand():
    # class 0: P = (0.9, 0.1), (0.7, 0.3) -> Q_0 = (0.8, 0.2); class 1: one sample (0.2, 0.8) = Q_1.
    # KL((.9,.1)||(.8,.2)) = .9 ln(9/8) + .1 ln(1/2) = 0.036690
    # KL((.7,.3)||(.8,.2)) = .7 ln(7/8) + .3 ln(3/2) = 0.028168
    # CMI = (0.036690 + 0.028168 + 0) / 3 = 0.021619;  LL = (ln .9 + ln .7 + ln .8) / 3 = -0.228393
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1])
    cmi, ll = cmi_and_ll(probs, labels, num_classes=2)
    assert cmi == pytest.approx(0.021619, abs=2e-6)
    assert ll == pytest.approx(-0.228393, abs=2e-6)
    q = class_centroids(probs, labels, 2)
    assert torch.allclose(q, torch.tensor([[0.8, 0.2], [0.2, 0.8]], dtype=q.dtype))


def test_centroids_of_empty_class_are_uniform_and_rows_sum_to_one():
    probs = torch.softmax(torch.randn(10, 4), dim=1)
    labels = torch.tensor([0, 1, 1, 0, 0, 1, 1, 0, 1, 0])
    q = class_centroids(probs, labels, 4)
    assert torch.allclose(q.sum(dim=1), torch.ones(4, dtype=q.dtype))
    assert torch.allclose(q[2], torch.full((4,), 0.25, dtype=q.dtype))


def test_zero_probabilities_contribute_nothing():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([0, 0])
    kl = kl_to_centroids(probs, labels, class_centroids(probs, labels, 2))
    # Q = (0.75, 0.25): KL((1,0)||Q) = ln(4/3); KL((.5,.5)||Q) = .5 ln(2/3) + .5 ln 2
    assert kl[0].item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    assert kl[1].item() == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2), abs=1e-6)


def test_mcmi_loss_is_ce_minus_lambda_kl_and_q_gets_no_gradient():
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    q = class_centroids(torch.softmax(logits.detach(), 1), labels, 3).float().requires_grad_(True)
    terms = mcmi_loss(logits, labels, q, lam=0.25)
    probs = torch.softmax(logits, 1)
    expected_kl = kl_to_centroids(probs.double(), labels, q.detach().double()).mean()
    assert terms["cmi"].item() == pytest.approx(-0.25 * expected_kl.item(), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    (terms["ce"] + terms["cmi"]).backward()
    assert logits.grad is not None and q.grad is None


def test_entropy_by_hand_with_zero_probabilities():
    from mcmi.cmi import entropy

    probs = torch.tensor([[0.25, 0.5, 0.25], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    got = entropy(probs)
    expected = torch.tensor([1.5 * math.log(2), 0.0, math.log(3)])
    torch.testing.assert_close(got, expected)


def test_per_class_cmi_by_hand_and_against_a_direct_computation():
    from mcmi.cmi import per_class_cmi

    # The two-class example above: class 0's two KLs 0.036690 and 0.028168 -> mean 0.032429; class 1
    # has one sample equal to its centroid -> 0; class 2 has no sample -> NaN.
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.7, 0.3, 0.0], [0.2, 0.8, 0.0]])
    labels = torch.tensor([0, 0, 1])
    got = per_class_cmi(probs, labels, num_classes=3)
    assert got[0].item() == pytest.approx((0.036690 + 0.028168) / 2, abs=2e-6)
    assert got[1].item() == pytest.approx(0.0, abs=1e-7) and math.isnan(got[2].item())

    # Random predictions: every class against an explicit double loop, and the N_y/N-weighted sum is the CMI.
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(40, 5, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 5, (40,), generator=gen)
    got = per_class_cmi(probs, labels, num_classes=5)
    for y in range(5):
        members = [p for p, label in zip(probs, labels) if label == y]
        q = sum(members) / len(members)
        direct = sum(sum(p[k] * math.log(p[k] / q[k]) for k in range(5)) for p in members) / len(members)
        assert got[y].item() == pytest.approx(float(direct), rel=1e-12)
    counts = torch.bincount(labels, minlength=5).double()
    cmi, _ = cmi_and_ll(probs, labels, num_classes=5)
    assert float((counts / 40 * got).sum()) == pytest.approx(cmi, rel=1e-12)

    # Only the classes of interest (Table 8's four out of 1000): the same values.
    keep = (labels == 1) | (labels == 3)
    subset = per_class_cmi(probs[keep], labels[keep], num_classes=5)
    torch.testing.assert_close(subset[[1, 3]], got[[1, 3]])
