"""HSAKD's auxiliary heads as its reference (winycg/HSAKD ``models/*.py``) defines them: layer-for-layer
parameter counts, heads kinds in files and metrics, and one step with reference heads."""

from __future__ import annotations

import os
import time
import stat

import pytest
import torch

from mcmi.data.batch import Batch
from mcmi.distill import Distillation, PairContext, build_method
from mcmi.distill.hsakd import (AuxiliaryHeads, HSAKDTeacherHeads, build_heads, load_teacher_heads,
                                resolve_head_kind, save_teacher_heads)
from mcmi.distill.hsakd_reference import REFERENCE_HEADS
from mcmi.models import create_model, probe_shapes

C = 100
OUT = 4 * C  # joint (class, rotation) labels


# Parameter counts written out from the reference's layer definitions (not from our modules).
def _res_block(cin: int, cout: int, stride: int) -> int:
    """models/resnet.py BasicBlock: conv3x3-BN-conv3x3-BN, 1x1 conv + BN shortcut when shape changes."""
    shortcut = cin * cout + 2 * cout if stride != 1 or cin != cout else 0
    return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout + shortcut


def _res_layer(cin: int, cout: int, n: int, stride: int) -> int:
    return _res_block(cin, cout, stride) + (n - 1) * _res_block(cout, cout, 1)


def reference_resnet_count(depth: int, widths: tuple[int, int, int, int]) -> int:
    n, (_, c1, c2, c3) = (depth - 2) // 6, widths
    extractors = _res_layer(c1, c2, n, 2) + _res_layer(c2, c3, n, 2) + _res_layer(c2, c3, n, 2) + _res_layer(c3, c3, n, 1)
    return extractors + 3 * (c3 * OUT + OUT)


def _wide_block(cin: int, cout: int) -> int:
    """models/wrn.py BasicBlock: BN-conv3x3-BN-conv3x3, a 1x1 conv shortcut when cin != cout."""
    return 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout + (cin * cout if cin != cout else 0)


def _network_block(n: int, cin: int, cout: int) -> int:
    return _wide_block(cin, cout) + (n - 1) * _wide_block(cout, cout)


def reference_wrn_count(depth: int, widen: int) -> int:
    n, c1, c2, c3 = (depth - 4) // 6, 16 * widen, 32 * widen, 64 * widen
    extractors = _network_block(n, c1, c2) + _network_block(n, c2, c3) + _network_block(n, c2, c3) \
        + _network_block(n, c3, c3)
    return extractors + 3 * 2 * c3 + 3 * (c3 * OUT + OUT)   # bn1..bn3, fc1..fc3


def _vgg_layers(cin: int, widths: list[int]) -> int:
    """models/vgg.py _make_layers with batch_norm: conv3x3 (with bias) + BN per width."""
    total = 0
    for w in widths:
        total += 9 * cin * w + w + 2 * w
        cin = w
    return total


def reference_vgg_count(cfg: list[list[int]]) -> int:
    b = [_vgg_layers(cfg[k - 1][-1], cfg[k]) if k else 0 for k in range(5)]
    extractors = (b[1] + b[2] + b[3] + b[4]) + (b[2] + b[3] + b[4]) + (b[3] + b[4]) \
        + _vgg_layers(cfg[4][-1], cfg[3]) + _vgg_layers(cfg[3][-1], cfg[4])
    return extractors + 4 * (512 * OUT + OUT)


def _shuffle1_unit(cin: int, cout: int, groups: int = 3) -> int:
    """models/ShuffleNetv1.py Bottleneck: grouped 1x1 (groups 1 after the 24-channel stem), depthwise 3x3,
    grouped 1x1, three BNs."""
    mid, g = cout // 4, 1 if cin == 24 else groups
    return cin * mid // g + 2 * mid + 9 * mid + 2 * mid + mid * cout // groups + 2 * cout


def reference_shufflev1_count() -> int:
    def layer(cin: int, width: int, n: int) -> int:   # first unit concatenates: its branch gives width − cin
        return _shuffle1_unit(cin, width - cin) + (n - 1) * _shuffle1_unit(width, width)

    extractors = layer(240, 480, 8) + layer(480, 960, 4) + layer(480, 960, 4) + 4 * _shuffle1_unit(960, 960)
    return extractors + 3 * (960 * OUT + OUT)


def _shuffle2_down(cin: int, cout: int) -> int:
    """models/ShuffleNetv2.py DownBlock: five convs (two depthwise), five BNs."""
    mid = cout // 2
    return 9 * cin + 2 * cin + cin * mid + 2 * mid + cin * mid + 2 * mid + 9 * mid + 2 * mid + mid * mid + 2 * mid


def _shuffle2_basic(c: int) -> int:
    h = c // 2
    return h * h + 2 * h + 9 * h + 2 * h + h * h + 2 * h


def reference_shufflev2_count() -> int:
    def layer(cin: int, cout: int, n: int) -> int:
        return _shuffle2_down(cin, cout) + n * _shuffle2_basic(cout)

    tail = 464 * 1024 + 2 * 1024          # conv 1x1 to 1024 + BN, per head
    extractors = layer(116, 232, 7) + layer(232, 464, 3) + layer(232, 464, 3) + layer(464, 464, 3)
    return extractors + 3 * tail + 3 * (1024 * OUT + OUT)


def _inverted_residual(cin: int, cout: int, t: int = 6) -> int:
    hidden = cin * t
    return cin * hidden + 2 * hidden + 9 * hidden + 2 * hidden + hidden * cout + 2 * cout


def reference_mobilenetv2_count() -> int:
    """models/mobilenetv2.py Auxiliary_Classifier with T 6, width 0.5 (channels already halved)."""
    def groups(cin: int, setting: list[tuple[int, int]]) -> int:
        total = 0
        for cout, n in setting:
            total += _inverted_residual(cin, cout) + (n - 1) * _inverted_residual(cout, cout)
            cin = cout
        return total

    extractors = (groups(12, [(16, 3), (32, 4), (48, 3), (80, 3), (160, 1)])
                  + groups(16, [(32, 4), (48, 3), (80, 3), (160, 1)])
                  + groups(48, [(80, 3), (160, 1)]) + groups(160, [(80, 3), (160, 1)]))
    return extractors + 4 * (160 * 1280 + 2 * 1280) + 4 * (1280 * OUT + OUT)


def _bottleneck(cin: int, planes: int, stride: int) -> int:
    """models/resnetv2.py Bottleneck: 1x1, 3x3, 1x1 (x4), three BNs, projection when the shape changes."""
    cout = 4 * planes
    shortcut = cin * cout + 2 * cout if stride != 1 or cin != cout else 0
    return cin * planes + 2 * planes + 9 * planes * planes + 2 * planes + planes * cout + 2 * cout + shortcut


def reference_resnet50_count() -> int:
    def layer(cin: int, planes: int, n: int, stride: int) -> int:
        return _bottleneck(cin, planes, stride) + (n - 1) * _bottleneck(4 * planes, planes, 1)

    extractors = (layer(256, 128, 4, 2) + layer(512, 256, 6, 2) + layer(1024, 512, 3, 2)
                  + layer(512, 256, 6, 2) + layer(1024, 512, 3, 2) + layer(1024, 512, 3, 2) + layer(2048, 512, 3, 1))
    return extractors + 4 * (2048 * OUT + OUT)


REFERENCE_COUNTS = {
    "resnet20": reference_resnet_count(20, (16, 16, 32, 64)),
    "resnet56": reference_resnet_count(56, (16, 16, 32, 64)),
    "resnet8x4": reference_resnet_count(8, (32, 64, 128, 256)),
    "resnet32x4": reference_resnet_count(32, (32, 64, 128, 256)),
    "wrn_40_2": reference_wrn_count(40, 2),
    "wrn_40_1": reference_wrn_count(40, 1),
    "wrn_16_2": reference_wrn_count(16, 2),
    "vgg13": reference_vgg_count([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]),   # cfg 'B'
    "vgg8": reference_vgg_count([[64], [128], [256], [512], [512]]),                         # cfg 'S'
    "ShuffleV1": reference_shufflev1_count(),
    "ShuffleV2": reference_shufflev2_count(),
    "MobileNetV2": reference_mobilenetv2_count(),
    "ResNet50": reference_resnet50_count(),
}


def test_reference_counts_by_hand() -> None:
    # resnet8x4_aux (n = 1, widths 32/64/128/256), worked by hand:
    # ext1 = block(64->128, s2) 230,144 + block(128->256, s2) 919,040; ext2 = 919,040; ext3 = 1,180,672;
    # fc1..3 = 3 x (256·400 + 400) = 308,400
    assert REFERENCE_COUNTS["resnet8x4"] == 230_144 + 919_040 + 919_040 + 1_180_672 + 308_400 == 3_557_296


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_reference_heads_match_the_reference_layers(name: str) -> None:
    model = create_model(name, C)
    shapes = probe_shapes(model, (3, 32, 32))
    heads = build_heads(name, shapes, C)
    assert heads.kind == "reference"
    assert sum(p.numel() for p in heads.parameters()) == REFERENCE_COUNTS[name]
    outputs = heads(model.extract(torch.randn(2, 3, 32, 32)).stages)
    assert len(outputs) == (4 if name.startswith("vgg") or name in ("MobileNetV2", "ResNet50") else 3)
    assert all(o.shape == (2, OUT) for o in outputs)
    # they differ from the generic heads' layers (why the reference's counts are needed)
    assert sum(p.numel() for p in AuxiliaryHeads(shapes, C).parameters()) != REFERENCE_COUNTS[name]


def test_auto_uses_reference_heads_only_where_the_reference_defines_them() -> None:
    assert set(REFERENCE_HEADS) == set(REFERENCE_COUNTS)
    assert resolve_head_kind("resnet56", "auto") == "reference"
    assert resolve_head_kind("resnet110", "auto") == "generic"      # no resnet110_aux in the reference
    assert resolve_head_kind("ShuffleV1", "auto") == "reference"
    assert resolve_head_kind("ResNet50", "auto") == "reference"
    assert resolve_head_kind("resnet14", "auto") == "generic"       # the demo's teacher
    assert resolve_head_kind("resnet56", "generic") == "generic"
    with pytest.raises(ValueError, match="methods.HSAKD.heads"):
        resolve_head_kind("resnet110", "reference")
    with pytest.raises(ValueError, match="methods.HSAKD.heads"):
        resolve_head_kind("resnet56", "hand-made")


def test_heads_file_records_its_kind_and_a_mismatch_fails(tmp_path) -> None:
    shapes = probe_shapes(create_model("resnet56", C), (3, 32, 32))
    path = tmp_path / "heads.pt"
    save_teacher_heads(HSAKDTeacherHeads(shapes, C, "resnet56").heads, path)
    assert torch.load(path, weights_only=True)["kind"] == "reference"
    assert load_teacher_heads(path, shapes, C, "resnet56").kind == "reference"
    with pytest.raises(ValueError, match="holds 'reference' heads, but 'generic'"):
        load_teacher_heads(path, shapes, C, "resnet56", kind="generic")
    legacy = tmp_path / "legacy.pt"   # a bare state dict, as written before kinds were recorded
    torch.save(AuxiliaryHeads(shapes, C).state_dict(), legacy)
    assert load_teacher_heads(legacy, shapes, C, "resnet56", kind="generic").kind == "generic"
    with pytest.raises(ValueError, match="holds 'generic' heads, but 'reference'"):
        load_teacher_heads(legacy, shapes, C, "resnet56")


def test_heads_file_is_written_by_the_projects_atomic_writer(tmp_path) -> None:
    """Usual permissions (not mkstemp's 0600) and a killed earlier write's temporary removed."""
    shapes = probe_shapes(create_model("resnet20", C), (3, 32, 32))
    path = tmp_path / "heads.pt"
    stale = tmp_path / ".heads.pt.k1ll3d.tmp"           # an ownerless temporary, two hours old: stale
    stale.write_bytes(b"half a file")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    old_umask = os.umask(0o022)
    try:
        save_teacher_heads(HSAKDTeacherHeads(shapes, C, "resnet20").heads, path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["heads.pt"]
    assert load_teacher_heads(path, shapes, C, "resnet20").kind == "reference"


@pytest.mark.parametrize("teacher_name, student_name, info", [
    ("resnet56", "resnet20", "student reference, teacher reference"),
    ("vgg13", "vgg8", "student reference, teacher reference"),
    ("resnet32x4", "ShuffleV2", "student reference, teacher reference"),
    ("ResNet50", "MobileNetV2", "student reference, teacher reference"),
    ("resnet110", "resnet32", "student generic, teacher generic"),
])
@pytest.mark.slow
def test_one_hsakd_step_with_reference_heads(tmp_path, teacher_name: str, student_name: str, info: str) -> None:
    torch.manual_seed(0)
    teacher, student = create_model(teacher_name, C), create_model(student_name, C)
    shapes_t, shapes_s = probe_shapes(teacher, (3, 32, 32)), probe_shapes(student, (3, 32, 32))
    path = tmp_path / "heads.pt"
    save_teacher_heads(HSAKDTeacherHeads(shapes_t, C, teacher_name).heads, path)
    ctx = PairContext(student=shapes_s, teacher=shapes_t, num_classes=C, num_train=16,
                      train_labels=torch.arange(16), epochs=1, input_shape=(3, 32, 32), student_name=student_name,
                      teacher_name=teacher_name, extra={"hsakd_teacher_heads": str(path)})
    method = build_method("HSAKD", ctx)
    assert method.method_info() == {"heads": info}
    objective = Distillation(method, teacher)
    out = objective.step(student, Batch(torch.randn(2, 3, 32, 32), torch.tensor([3, 99]), torch.tensor([0, 1])), 1)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in method.student_heads.parameters())
    assert all(p.grad is None for p in method.teacher_heads.parameters())


def test_more_student_heads_than_teacher_heads_pairs_the_deepest(tmp_path) -> None:
    torch.manual_seed(0)
    teacher, student = create_model("resnet56", C), create_model("vgg8", C)     # 3 reference heads vs 4
    shapes_t, shapes_s = probe_shapes(teacher, (3, 32, 32)), probe_shapes(student, (3, 32, 32))
    path = tmp_path / "heads.pt"
    save_teacher_heads(HSAKDTeacherHeads(shapes_t, C, "resnet56").heads, path)
    ctx = PairContext(student=shapes_s, teacher=shapes_t, num_classes=C, num_train=16, train_labels=torch.arange(16),
                      epochs=1, input_shape=(3, 32, 32), student_name="vgg8", teacher_name="resnet56",
                      extra={"hsakd_teacher_heads": str(path)})
    method = build_method("HSAKD", ctx)
    out = Distillation(method, teacher).step(student, Batch(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]),
                                                            torch.tensor([0, 1])), 1)
    out.loss.backward()
    heads = method.student_heads
    assert all(p.grad is None for p in heads.extractors[0].parameters())   # the shallowest has no partner
    for extractor in heads.extractors[1:]:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in extractor.parameters())
