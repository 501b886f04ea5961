"""t-SNE of output vectors (Figure 6) and Eigen-CAM maps (Figures 3, 10-13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcmi.analysis.embedding import tsne_of_outputs


def clustered_logits(per_class: int = 20, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a confident classifier: class c's samples peak at c, with noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    logits = 6.0 * torch.nn.functional.one_hot(labels, classes).float() + torch.randn(len(labels), classes, generator=gen)
    return logits, labels


def nearest_neighbour_agreement(points: np.ndarray, labels: torch.Tensor) -> float:
    d = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((labels.numpy()[d.argmin(1)] == labels.numpy()).mean())


@pytest.mark.parametrize("input", ["probs", "logits"])
def test_tsne_is_deterministic_per_seed_and_keeps_classes_apart(input: str) -> None:
    logits, labels = clustered_logits()
    a = tsne_of_outputs(logits, input=input, perplexity=10, seed=0)
    assert a.shape == (80, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, tsne_of_outputs(logits, input=input, perplexity=10, seed=0))
    assert nearest_neighbour_agreement(a, labels) > 0.95


def test_tsne_of_probs_differs_from_tsne_of_logits() -> None:
    """Softmax is not an affine map: the two inputs give different embeddings (the paper's vs the code's)."""
    logits, _ = clustered_logits()
    probs = tsne_of_outputs(logits, input="probs", perplexity=10, seed=0)
    direct = tsne_of_outputs(torch.softmax(logits, 1).log(), input="logits", perplexity=10, seed=0)
    assert not np.allclose(probs, direct)
    # softmax of log-probabilities is the probabilities again: 'probs' of logits z == 'logits' of softmax(z)
    again = tsne_of_outputs(torch.softmax(logits.double(), 1), input="logits", perplexity=10, seed=0)
    np.testing.assert_allclose(again, probs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"input": "softmax"}, "input must be one of"),
    ({"perplexity": 80}, r"perplexity must be in \(0, 80\)"),
])
def test_tsne_bad_settings_are_named(kwargs: dict, message: str) -> None:
    logits, _ = clustered_logits()
    with pytest.raises(ValueError, match=message):
        tsne_of_outputs(logits, **kwargs)
    with pytest.raises(ValueError, match="NaN or inf"):
        tsne_of_outputs(torch.full((5, 3), float("nan")), perplexity=2)
