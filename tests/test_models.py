"""The model zoo: parameter counts, feature shapes, RepDistiller checkpoints, torchvision models."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mcmi.models import (
    CIFAR_MODEL_NAMES,
    IMAGENET_MODEL_NAMES,
    MODEL_NAMES,
    ZooModel,
    create_model,
    is_imagenet_model,
    load_repdistiller_checkpoint,
    probe_shapes,
)

# RepDistiller / CRD parameter counts at 100 classes.
PARAMETER_COUNTS = {
    "resnet56": 861_620,
    "resnet20": 278_324,
    "resnet32x4": 7_433_860,
    "resnet8x4": 1_233_540,
    "wrn_40_2": 2_255_156,
    "wrn_16_2": 703_284,
    "vgg13": 9_462_180,
    "vgg8": 3_965_028,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "ResNet50": 23_705_252,
    # Derived by hand (no published value): 3-stage basic-block ResNet of n blocks a stage, widths
    # 16/32/64, 100 classes = 464 (stem) + 4,672 n + (14,528 + 18,560 (n - 1)) + (57,728 + 73,984 (n - 1))
    # + 6,500 (fc); n = 3 gives resnet20's 278,324 above, n = 18 resnet110, n = 25 resnet152.
    "resnet110": 1_736_564,
    "resnet152": 2_417_076,
    # RepDistiller's resnetv2 ResNet18 (kuangliu/pytorch-cifar's): 11,173,962 at 10 classes (below),
    # + 46,170 for the 90 extra rows of the 512-wide classifier.
    "ResNet18": 11_220_132,
}
# one small model per architecture family
FAMILY_REPRESENTATIVES = ("resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2")


@cache
def cifar100_model(name: str) -> ZooModel:
    """A shared, never-mutated 100-class model per name (building is the slow part)."""
    torch.manual_seed(0)
    return create_model(name, 100).eval()


def classifier_in_features(model: nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].in_features


def test_names() -> None:
    assert len(set(MODEL_NAMES)) == len(MODEL_NAMES) == 28
    assert set(MODEL_NAMES) == set(CIFAR_MODEL_NAMES) | set(IMAGENET_MODEL_NAMES)
    assert set(PARAMETER_COUNTS) <= set(CIFAR_MODEL_NAMES)
    assert is_imagenet_model("resnet50") and not is_imagenet_model("ResNet50")


@pytest.mark.parametrize("name", PARAMETER_COUNTS)
def test_parameter_count(name: str) -> None:
    model = cifar100_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", CIFAR_MODEL_NAMES)
def test_feature_shapes(name: str) -> None:
    model = cifar100_model(name)
    shapes = probe_shapes(model, (3, 32, 32))
    assert len(shapes.stages) == len(shapes.preact_stages) >= 4
    assert [s[1:] for s in shapes.stages] == [s[1:] for s in shapes.preact_stages]
    sizes = [s[1] for s in shapes.stages]
    assert sizes == sorted(sizes, reverse=True)
    assert shapes.pooled_dim == classifier_in_features(model)
    assert shapes.num_classes == 100
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 100)


def test_cifar10_resnet18_is_repdistillers_resnetv2_resnet18() -> None:
    """Figure 9's student: RepDistiller's ``resnetv2.ResNet18`` for CIFAR-10 (3x3 stem, no max-pool,
    blocks [2, 2, 2, 2] of 64..512 planes, ``shortcut``/``linear`` names), 11,173,962 parameters --
    not torchvision's ImageNet ``resnet18`` (7x7 stem, max-pool, 11,181,642 at 10 classes)."""
    model = create_model("ResNet18", 10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert sum(p.numel() for p in create_model("resnet18", 10).parameters()) == 11_181_642
    names = set(model.state_dict())
    assert {"conv1.weight", "layer4.1.bn2.running_var", "layer2.0.shortcut.0.weight", "linear.weight"} <= names
    assert model.conv1.kernel_size == (3, 3) and not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    shapes = probe_shapes(model, (3, 32, 32))
    assert [s[1:] for s in shapes.stages] == [(32, 32), (32, 32), (16, 16), (8, 8), (4, 4)]
    assert [s[0] for s in shapes.stages] == [64, 64, 128, 256, 512] and shapes.pooled_dim == 512


def test_resnet152_is_the_authors_basic_block_resnet_of_25_blocks_a_stage() -> None:
    """The MCMI authors' CIFAR resnet152 (Figure 5's largest teacher): depth 6n+2 with n = 25 basic
    blocks a stage -- 1 stem conv + 150 block convs + fc = 152 weighted layers (1x1 projections aside)."""
    model = cifar100_model("resnet152")
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [25, 25, 25]
    convs = [m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in name]
    assert len(convs) + 1 == 152
    assert {"layer3.24.bn2.weight", "layer2.0.downsample.0.weight", "fc.weight"} <= set(model.state_dict())


def test_resnet_preact_is_before_the_last_relu() -> None:
    features = cifar100_model("resnet8").extract(torch.randn(2, 3, 32, 32))
    assert features.preact_stages[0] is features.stages[0]
    for stage, preact in zip(features.stages[1:], features.preact_stages[1:]):
        assert preact.min() < 0
        torch.testing.assert_close(F.relu(preact), stage)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_train_mode_extract_has_gradients(name: str) -> None:
    model = create_model(name, 10).train()
    features = model.extract(torch.randn(2, 3, 32, 32))
    (features.logits.sum() + sum(f.mean() for f in features.preact_stages)).backward()
    assert all(p.grad is not None for p in model.parameters())


def _save_repdistiller(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"model": state_dict, "epoch": 240, "accuracy": 72.3}, path)
    return path


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_repdistiller_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = create_model(name, 100)
    with torch.no_grad():  # non-trivial BN statistics, so that buffers matter too
        for module in source.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    path = _save_repdistiller(source.state_dict(), tmp_path / f"{name}.pth")

    loaded = load_repdistiller_checkpoint(create_model(name, 100), path).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source.eval()(x), rtol=0, atol=0)


def test_checkpoint_variants_load(tmp_path: Path) -> None:
    source = create_model("resnet8", 10)
    bare = tmp_path / "bare.pth"
    torch.save(source.state_dict(), bare)
    data_parallel_state = {f"module.{key}": value for key, value in source.state_dict().items()}
    parallel = _save_repdistiller(data_parallel_state, tmp_path / "dp.pth")
    for path in (bare, parallel):
        loaded = load_repdistiller_checkpoint(create_model("resnet8", 10), path)
        torch.testing.assert_close(loaded.state_dict(), source.state_dict())


@pytest.mark.parametrize("defect", ["renamed key", "wrong shape", "missing key"])
def test_mismatched_checkpoint_names_the_file(defect: str, tmp_path: Path) -> None:
    state_dict = create_model("resnet8", 100).state_dict()
    if defect == "renamed key":
        state_dict["fc.kernel"] = state_dict.pop("fc.weight")
    elif defect == "wrong shape":
        state_dict["fc.weight"] = torch.zeros(10, 64)
    else:
        del state_dict["layer1.0.bn1.running_mean"]
    path = _save_repdistiller(state_dict, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="broken.pth"):
        load_repdistiller_checkpoint(create_model("resnet8", 100), path)


class _Pickled:
    """An object weights-only loading refuses (its class would be imported by the unpickler)."""


@pytest.mark.parametrize("content", [b"not a checkpoint", b"hello\n", b"", bytes(range(256)) * 4, "truncated",
                                     "pickled code"], ids=["garbage", "text", "empty", "bytes", "truncated", "code"])
def test_unreadable_checkpoint_names_the_file(tmp_path: Path, content) -> None:
    """Any file torch cannot read is one ValueError naming it (torch itself raises IndexError,
    KeyError, EOFError, RuntimeError or UnpicklingError, depending on the bytes)."""
    path = tmp_path / "garbage.pth"
    if content == "truncated":
        whole = _save_repdistiller(create_model("resnet8", 10).state_dict(), tmp_path / "whole.pth").read_bytes()
        content = whole[: len(whole) // 2]
    elif content == "pickled code":
        torch.save({"model": _Pickled()}, path)
    if isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ValueError, match="garbage.pth: cannot be read as a weights-only torch checkpoint") as error:
        load_repdistiller_checkpoint(create_model("resnet8", 10), path)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_missing_checkpoint_or_a_folder_is_not_found(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.pth", tmp_path):
        with pytest.raises(FileNotFoundError, match=str(path)):
            load_repdistiller_checkpoint(create_model("resnet8", 10), path)


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="resnet9000") as error:
        create_model("resnet9000", 100)
    assert "resnet56" in str(error.value) and "wrn_40_2" in str(error.value)


@pytest.mark.parametrize("name", IMAGENET_MODEL_NAMES)
def test_torchvision_models(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 7).eval()
    reference = getattr(torchvision.models, name)(num_classes=7)
    assert list(model.state_dict()) == list(reference.state_dict())

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.extract(x)
        torchvision_logits = type(reference).forward(model, x)  # torchvision's own forward pass
    torch.testing.assert_close(features.logits, torchvision_logits)
    assert len(features.stages) == len(features.preact_stages) == 5
    assert [f.shape[-1] for f in features.stages] == [32, 16, 8, 4, 2]
    assert features.pooled.shape == (2, classifier_in_features(model))
    assert features.logits.shape == (2, 7)
