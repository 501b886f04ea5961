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


# ---------------------------------------------------------------- Eigen-CAM

from torch import nn  # noqa: E402

from mcmi.analysis.cam import cam_target_layer, eigen_cam, native_forward, orient_projection  # noqa: E402
from mcmi.models import create_model  # noqa: E402


class _FixedActivation(nn.Module):
    """A 'layer' whose output is a given activation (C, H, W), repeated over the batch."""

    def __init__(self, activation: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("activation", activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation.expand(x.shape[0], *self.activation.shape).clone()


class _Probe(nn.Module):
    """Classifier on a constructed activation map: pooled activation -> linear."""

    def __init__(self, activation: torch.Tensor) -> None:
        super().__init__()
        self.features = _FixedActivation(activation)
        self.fc = nn.Linear(activation.shape[0], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def object_activation(side: int, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Post-ReLU-like activations (6 channels, size x size): a side x side object in the centre
    responds strongly in the first channels, the background weakly; and the object's mask."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, size, dtype=torch.bool)
    start = (size - side) // 2
    mask[start:start + side, start:start + side] = True
    on = torch.tensor([3.0, 2.5, 2.0, 0.5, 0.2, 0.1])[:, None, None]
    off = torch.tensor([0.2, 0.1, 0.3, 0.1, 0.2, 0.1])[:, None, None]
    activation = torch.where(mask, on, off) + 0.05 * torch.rand(6, size, size, generator=gen)
    return activation, mask.numpy()


def inside_minus_outside(cam: np.ndarray, mask: np.ndarray) -> float:
    return float(cam[mask].mean() - cam[~mask].mean())


def flip_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's SVD returning the other, equally valid, signs: (-U) S (-V)ᵀ."""
    svd = np.linalg.svd

    def flipped(a, *args, **kwargs):
        u, s, vt = svd(a, *args, **kwargs)
        return -u, s, -vt

    monkeypatch.setattr(np.linalg, "svd", flipped)


def test_orient_projection_by_hand() -> None:
    # mean activation rises left to right; a projection falling left to right is negated, a rising one kept
    activations = np.array([[[[0.0, 1.0, 2.0]], [[0.0, 3.0, 4.0]]]])          # (1, 2, 1, 3)
    falling = np.array([[[1.0, 0.0, -1.0]]])
    np.testing.assert_array_equal(orient_projection(falling, activations), -falling)
    np.testing.assert_array_equal(orient_projection(-falling, activations), -falling)
    flat = np.zeros((1, 1, 3))                                                   # no covariance: kept
    np.testing.assert_array_equal(orient_projection(flat + 1.0, activations * 0 + 1.0), flat + 1.0)


@pytest.mark.parametrize("side", [4, 6], ids=["object 1/4 of the image", "object > 1/2 of the image"])
def test_eigen_cam_is_never_inverted_whatever_sign_the_svd_returns(side: int, monkeypatch) -> None:
    activation, mask = object_activation(side)
    model = _Probe(activation)
    images = torch.zeros(2, 3, 8, 8)
    layer = model.features
    oriented, raw = eigen_cam(model, images, layer), eigen_cam(model, images, layer, orient=False)
    flip_svd(monkeypatch)
    oriented_flipped, raw_flipped = eigen_cam(model, images, layer), eigen_cam(model, images, layer, orient=False)

    assert oriented.shape == (2, 8, 8) and oriented.dtype == np.float32
    assert oriented.min() >= 0.0 and oriented.max() <= 1.0
    np.testing.assert_allclose(oriented_flipped, oriented, atol=1e-6)
    assert inside_minus_outside(oriented[0], mask) > 0.5                  # the object is lit
    # the package alone: one of the two SVD signs shows the inverted map (background lit)
    contrasts = sorted(inside_minus_outside(m[0], mask) for m in (raw, raw_flipped))
    assert contrasts[0] < -0.5 and contrasts[1] > 0.5


def test_the_packages_min_max_sign_rule_inverts_a_large_object() -> None:
    """Why its get_2d_projection_with_sign_correction (flip when |min| > |max|) is not used: with the
    object over 36 of 64 positions, the centred projection's largest magnitude is the background's."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    activation, mask = object_activation(6)
    projection = get_2d_projection_with_sign_correction(activation[None].numpy())[0]
    assert projection[mask].mean() < 0 < projection[~mask].mean()
    oriented = orient_projection(projection[None], activation[None].numpy())[0]
    assert oriented[mask].mean() > 0 > oriented[~mask].mean()


def test_cam_target_layer_of_the_imagenet_zoo_and_a_map_of_resnet18() -> None:
    torch.manual_seed(0)
    resnet18 = create_model("resnet18", 1000).train()
    assert cam_target_layer(resnet18) is resnet18.layer4[-1]
    resnet50 = create_model("resnet50", 10)
    assert cam_target_layer(resnet50) is resnet50.layer4[-1]
    mobilenet = create_model("mobilenet_v2", 10)
    assert cam_target_layer(mobilenet) is mobilenet.features[-1]
    with pytest.raises(ValueError, match="no Eigen-CAM target layer is defined for CifarResNet"):
        cam_target_layer(create_model("resnet8", 10))

    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():   # torchvision's forward (module calls) gives the zoo's logits
        torch.testing.assert_close(native_forward(resnet18.eval())(images), resnet18(images), rtol=0, atol=0)
        torch.testing.assert_close(native_forward(mobilenet.eval())(images), mobilenet(images), rtol=0, atol=0)
    resnet18.train()
    maps = eigen_cam(resnet18, images)
    assert maps.shape == (2, 64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0
    assert resnet18.training                                               # its mode is restored
    np.testing.assert_array_equal(maps, eigen_cam(resnet18, images))
    with pytest.raises(ValueError, match="batch of images"):
        eigen_cam(resnet18, images[0])
    with pytest.raises(ValueError, match="was not called by the forward pass"):
        eigen_cam(resnet18, images, target_layer=nn.Conv2d(3, 3, 1))
