"""The registry of model names: ``create_model(name, num_classes)``."""

from __future__ import annotations

from collections.abc import Callable

from mcmi.models import (
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from mcmi.models.base import ZooModel

_CIFAR_BUILDERS: dict[str, Callable[..., ZooModel]] = {
    **resnet.BUILDERS,
    **wrn.BUILDERS,
    **vgg.BUILDERS,
    **mobilenetv2.BUILDERS,
    **shufflenetv1.BUILDERS,
    **shufflenetv2.BUILDERS,
    **resnetv2.BUILDERS,
}
# torchvision takes seconds to import: its models are imported only when one is built.
IMAGENET_MODEL_NAMES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
CIFAR_MODEL_NAMES: tuple[str, ...] = tuple(_CIFAR_BUILDERS)
MODEL_NAMES: tuple[str, ...] = CIFAR_MODEL_NAMES + IMAGENET_MODEL_NAMES


def _builder(name: str) -> Callable[..., ZooModel]:
    if name in _CIFAR_BUILDERS:
        return _CIFAR_BUILDERS[name]
    from mcmi.models import imagenet

    return imagenet.BUILDERS[name]


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")


def create_model(name: str, num_classes: int) -> ZooModel:
    """Build the named model (freshly initialised) with a ``num_classes``-way classifier."""
    _check_name(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return _builder(name)(num_classes=num_classes)


def is_imagenet_model(name: str) -> bool:
    """True for torchvision's ImageNet models (any input >= 32 px); False for the 32x32 CIFAR zoo."""
    _check_name(name)
    return name in IMAGENET_MODEL_NAMES
