"""t-SNE of a network's output vectors (appendix A.4.1, Figure 6), with scikit-learn's ``TSNE``.

The paper maps the 10-dimensional output *probabilities* of a low-CMI and a high-CMI CIFAR-10 network
to 2-D; the authors' ``ZeroShot/TSNE.py`` fed the *logits* (``Prob = output``, no softmax) to
``TSNE(random_state=0, perplexity=15)``. Both are offered: ``input='probs'`` (the paper) or
``'logits'`` (the code). The other t-SNE settings are scikit-learn's defaults, which changed in 1.2
(``init`` 'random' -> 'pca', ``learning_rate`` 200 -> 'auto'); ``init`` is exposed, and which version
the authors ran is not known.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

EMBEDDING_INPUTS = ("probs", "logits")


def tsne_of_outputs(logits: torch.Tensor, *, input: Literal["probs", "logits"] = "probs",
                    perplexity: float = 15.0, seed: int = 0, init: Literal["pca", "random"] = "pca") -> np.ndarray:
    """2-D t-SNE embedding (N, 2) of the rows of ``logits`` (N, K) -- of softmax(logits) when
    ``input`` is 'probs', of the logits themselves when 'logits'; float32, as scikit-learn returns it.
    The input is computed in float64. Deterministic for a given ``seed`` and input order."""
    if input not in EMBEDDING_INPUTS:
        raise ValueError(f"t-SNE input must be one of {EMBEDDING_INPUTS}, got {input!r}")
    if logits.dim() != 2 or logits.shape[0] < 2:
        raise ValueError(f"t-SNE needs an (N, K) matrix of N >= 2 output vectors, got shape {tuple(logits.shape)}")
    n = logits.shape[0]
    if not 0 < perplexity < n:
        raise ValueError(f"t-SNE perplexity must be in (0, {n}) for {n} points, got {perplexity}")
    if not torch.isfinite(logits).all():
        raise ValueError("t-SNE input holds NaN or inf outputs")
    from sklearn.manifold import TSNE   # imported here: scikit-learn takes seconds to import

    values = torch.softmax(logits.double(), dim=1) if input == "probs" else logits.double()
    tsne = TSNE(n_components=2, perplexity=float(perplexity), random_state=int(seed), init=init)
    return tsne.fit_transform(values.cpu().numpy())
