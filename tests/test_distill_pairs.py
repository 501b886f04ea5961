"""Every method x every Table 1 pair takes one optimisation step with a finite loss, and a short
student run with each method beats the untrained student on the demo data."""

from __future__ import annotations

import functools

import pytest
import torch

from mcmi.data.batch import Batch
from mcmi.data.sources import load_digits
from mcmi.distill import Distillation, PairContext, build_method, registry
from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads
from mcmi.models import create_model, probe_shapes
from mcmi.objectives import CrossEntropy
from mcmi.train import Recipe, evaluate, fit

TABLE1_PAIRS = [
    ("resnet56", "resnet20"), ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"), ("ResNet50", "vgg8"), ("ResNet50", "MobileNetV2"),
    ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1"), ("vgg13", "MobileNetV2"),
]
METHODS = sorted(registry())
CPU = torch.device("cpu")


def small_hparams(name: str) -> dict:
    """Keep the memory-bank negatives (CRD, MIMKD's global term) small for a 16-sample 'training set'."""
    return {"nce_k": 8} if name.startswith("CRD") or name == "MIMKD" else {}


@functools.lru_cache(maxsize=None)
def _model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, 100)


def _context(student, teacher, tmp_path, teacher_name) -> PairContext:
    shapes_t = probe_shapes(teacher, (3, 32, 32))
    heads_path = tmp_path / f"{teacher_name}_heads.pt"
    if not heads_path.exists():
        save_teacher_heads(HSAKDTeacherHeads(shapes_t, 100).heads, heads_path)
    return PairContext(student=probe_shapes(student, (3, 32, 32)), teacher=shapes_t, num_classes=100,
                       num_train=16, train_labels=torch.arange(16) % 100, epochs=240, input_shape=(3, 32, 32),
                       extra={"hsakd_teacher_heads": str(heads_path)})


@pytest.mark.slow
@pytest.mark.parametrize("teacher_name, student_name", TABLE1_PAIRS, ids=[f"{t}-{s}" for t, s in TABLE1_PAIRS])
def test_one_step_of_every_method_on_every_table1_pair(tmp_path, teacher_name, student_name):
    torch.manual_seed(0)
    teacher = _model(teacher_name, 1)
    batch = Batch(torch.randn(2, 3, 32, 32), torch.tensor([3, 99]), torch.tensor([0, 15]))
    for name in METHODS:
        student = create_model(student_name, 100)
        method = build_method(name, _context(student, teacher, tmp_path, teacher_name), small_hparams(name))
        objective = Distillation(method, teacher)
        objective.train()
        student.train()
        params = [p for p in list(student.parameters()) + list(objective.parameters()) if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        out = objective.step(student, batch, epoch=1)
        assert torch.isfinite(out.loss), (name, {k: float(v) for k, v in out.terms.items()})
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), name
        for key, value in teacher.state_dict().items():   # frozen: weights and BN statistics unchanged
            assert torch.equal(value, before[key]), (name, key)


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    """A resnet14 teacher trained briefly on the digits demo data (16 px)."""
    train, test = load_digits(16)
    torch.manual_seed(0)
    teacher = create_model("resnet14", 10)
    fit(teacher, CrossEntropy(), train, test, Recipe(epochs=3, lr=0.05, batch_size=32, milestones=[2]), seed=0,
        device=CPU)
    heads = HSAKDTeacherHeads(probe_shapes(teacher, train.input_shape), 10)
    for p in teacher.parameters():
        p.requires_grad_(False)
    fit(teacher, heads, train, test, Recipe(epochs=1, lr=0.05, batch_size=32), seed=0, device=CPU)
    path = tmp_path_factory.mktemp("heads") / "heads.pt"
    save_teacher_heads(heads.heads, path)
    return train, test, teacher, str(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_short_student_run_with_each_method_beats_the_untrained_student(demo_pair, name):
    train, test, teacher, heads_path = demo_pair
    torch.manual_seed(0)
    student = create_model("resnet8", 10)
    untrained = evaluate(student, test, 256, CPU)["acc"]
    ctx = PairContext(student=probe_shapes(student, train.input_shape), teacher=probe_shapes(teacher, train.input_shape),
                      num_classes=10, num_train=len(train), train_labels=train.labels, epochs=2,
                      input_shape=train.input_shape, extra={"hsakd_teacher_heads": heads_path})
    hparams = {"nce_k": 256} if name.startswith("CRD") or name == "MIMKD" else {}
    if name in ("DKD", "ReviewKD"):
        hparams[{"DKD": "warmup", "ReviewKD": "warmup_epochs"}[name]] = 1
    method = build_method(name, ctx, hparams)
    history = fit(student, Distillation(method, teacher), train, test,
                  Recipe(epochs=2, lr=0.05, batch_size=32, milestones=[]), seed=0, device=CPU)
    assert history[-1]["test_acc"] > untrained + 20, (name, untrained, history[-1]["test_acc"])
