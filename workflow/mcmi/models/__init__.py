"""The model zoo: RepDistiller's CIFAR architectures and torchvision's ImageNet ones, one interface."""

from mcmi.models.base import Features, FeatureShapes, ZooModel, probe_shapes
from mcmi.models.checkpoint import load_repdistiller_checkpoint
from mcmi.models.zoo import (
    CIFAR_MODEL_NAMES,
    IMAGENET_MODEL_NAMES,
    MODEL_NAMES,
    create_model,
    is_imagenet_model,
)

__all__ = [
    "CIFAR_MODEL_NAMES",
    "IMAGENET_MODEL_NAMES",
    "MODEL_NAMES",
    "Features",
    "FeatureShapes",
    "ZooModel",
    "create_model",
    "is_imagenet_model",
    "load_repdistiller_checkpoint",
    "probe_shapes",
]
