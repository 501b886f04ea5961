"""Eigen-CAM maps (Bany Muhammad & Yeasin, 2021) of a classifier, for Figures 3 and 10-13 (§6.1, A.10),
computed with the ``grad-cam`` package's ``EigenCAM`` and one correction: the SVD's sign.

Eigen-CAM projects a layer's activations (positions x channels, centred over positions by the package)
onto their first principal component. The SVD defines that component only up to sign (A = U S Vᵀ =
(−U) S (−V)ᵀ), and ``EigenCAM`` keeps whichever sign LAPACK returns; since the package then clips
the projection at 0 and rescales it to [0, 1], a flipped component shows the complement of the map --
the background lit, the object dark. **Rule used here:** the component is oriented so that its
projection has a non-negative covariance, over the positions, with the mean activation over channels
at each position (``orient_projection``); otherwise it is negated. After ReLU the mean activation is
what the layer responds to, so an oriented map never lights what the layer responds to least. (The
package's own ``get_2d_projection_with_sign_correction``, which flips when |min| > |max|, is not used:
it inverts maps whose object covers more than half of the image.)

Layer: ``cam_target_layer`` -- the last block of the last stage (``layer4[-1]`` of the ImageNet ResNets,
its output being the last convolutional feature map, before pooling), as Eigen-CAM's paper uses the
last convolutional layer; the paper does not state its layer. The package reads the layer through a
forward hook, so the model is run through torchvision's own ``forward`` (``native_forward``): the zoo's
``extract`` runs each stage's last block piece by piece (to return its pre-activation), which would
never call ``layer4[-1]`` as a module. The logits are the same.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def orient_projection(projection: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """``projection`` (B, H, W) negated per sample where its covariance over positions with the
    channel-mean of ``activations`` (B, C, H, W) is negative; unchanged otherwise (ties kept)."""
    mean_activation = activations.mean(axis=1)
    centred_p = projection - projection.mean(axis=(1, 2), keepdims=True)
    centred_m = mean_activation - mean_activation.mean(axis=(1, 2), keepdims=True)
    covariance = (centred_p * centred_m).sum(axis=(1, 2))
    signs = np.where(covariance < 0, -1.0, 1.0).astype(projection.dtype)
    return projection * signs[:, None, None]


def _oriented_eigen_cam_class() -> type:
    from pytorch_grad_cam import EigenCAM   # imported here: the package pulls in OpenCV

    class OrientedEigenCAM(EigenCAM):
        """``EigenCAM`` whose first principal component is oriented by ``orient_projection``."""

        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
            projection = super().get_cam_image(input_tensor, target_layer, target_category, activations, grads,
                                               eigen_smooth)
            return orient_projection(projection, np.nan_to_num(np.asarray(activations, dtype=np.float32)))

    return OrientedEigenCAM


def eigen_cam(model: nn.Module, images: torch.Tensor, target_layer: nn.Module | None = None,
              orient: bool = True) -> np.ndarray:
    """Eigen-CAM maps of ``model`` for ``images`` (B, 3, H, W; normalised as the model expects):
    (B, H, W) float32 in [0, 1], resized to the input. ``target_layer`` defaults to
    ``cam_target_layer(model)``; ``orient=False`` gives the package's ``EigenCAM`` unchanged (sign as
    the SVD returned it). The model is evaluated in eval mode without gradients; its mode is restored."""
    if images.dim() != 4:
        raise ValueError(f"eigen_cam needs a batch of images (B, C, H, W), got shape {tuple(images.shape)}")
    layer = cam_target_layer(model) if target_layer is None else target_layer
    runner = native_forward(model)
    if orient:
        cam_class = _oriented_eigen_cam_class()
    else:
        from pytorch_grad_cam import EigenCAM as cam_class
    was_training = model.training
    cam = cam_class(model=runner, target_layers=[layer])   # its constructor puts the model in eval mode
    try:
        with torch.no_grad():
            try:
                maps = cam(input_tensor=images, targets=None)
            except Exception as error:   # the package fails obscurely when its hook never fired
                if not cam.activations_and_grads.activations:
                    raise ValueError(f"Eigen-CAM: the target layer {type(layer).__name__} was not called by "
                                     f"the forward pass") from error
                raise
    finally:
        cam.activations_and_grads.release()   # not ``with cam``: its __exit__ swallows IndexError
        model.train(was_training)
    if not np.isfinite(maps).all():
        raise ValueError("Eigen-CAM produced non-finite maps (NaN or inf activations in the target layer)")
    return maps


class _TorchvisionForward(nn.Module):
    """A zoo ImageNet model run by its torchvision class's ``forward`` (every block a module call)."""

    def __init__(self, model: nn.Module, forward: object) -> None:
        super().__init__()
        self.model, self._forward = model, forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.model, x)


def native_forward(model: nn.Module) -> nn.Module:
    """``model`` wrapped to run torchvision's ``forward`` when it is a zoo ImageNet model (same logits
    as the zoo's ``forward``, but with ``layer4[-1]`` called as a module); any other model unchanged."""
    from torchvision.models import mobilenetv2 as tv_mobilenetv2
    from torchvision.models import resnet as tv_resnet

    from mcmi.models.imagenet import TorchvisionMobileNetV2, TorchvisionResNet

    if isinstance(model, TorchvisionResNet):
        return _TorchvisionForward(model, tv_resnet.ResNet.forward)
    if isinstance(model, TorchvisionMobileNetV2):
        return _TorchvisionForward(model, tv_mobilenetv2.MobileNetV2.forward)
    return model


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Eigen-CAM reads for a zoo ImageNet model: the last block of the last stage of a
    torchvision ResNet (``layer4[-1]``), the final 1x1 conv block of MobileNetV2 (``features[-1]``)."""
    from mcmi.models.imagenet import TorchvisionMobileNetV2, TorchvisionResNet

    if isinstance(model, TorchvisionResNet):
        return model.layer4[-1]
    if isinstance(model, TorchvisionMobileNetV2):
        return model.features[-1]
    raise ValueError(f"no Eigen-CAM target layer is defined for {type(model).__name__}; pass target_layer")
