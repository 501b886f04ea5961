"""Yang et al. (2021), "Hierarchical Self-supervised Augmented Knowledge Distillation" (HSAKD)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mcmi.data.batch import Batch
from mcmi.distill._common import init_heads, kd_loss
from mcmi.distill.base import DistillMethod, PairContext, register, shared_teacher_work
from mcmi.models.base import FeatureShapes, ZooModel
from mcmi.objectives import Objective, StepOutput
from mcmi.provenance import save_torch_atomic

NUM_ROTATIONS = 4
TEACHER_HEADS_KEY = "hsakd_teacher_heads"
HEAD_KINDS = ("auto", "reference", "generic")


def interleave_rotations(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-rotation outputs [f(rot_0 x), ..., f(rot_3 x)], each (B, ...), in ``rotate_batch``'s
    order (4B, ...): sample i's rotation k at row 4i + k."""
    return torch.stack(parts, dim=1).reshape(-1, *parts[0].shape[1:])


def rotate_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (4B, C, H, W): each sample followed by its 90°, 180° and 270° rotations
    (``torch.rot90`` over the spatial dims, k = 0..3), so rows 0::4 are the original samples."""
    return interleave_rotations([torch.rot90(x, k, dims=(2, 3)) for k in range(NUM_ROTATIONS)])


def joint_labels(y: torch.Tensor) -> torch.Tensor:
    """Joint (class, rotation) labels 4·y + k in the order of ``rotate_batch``."""
    return (y.unsqueeze(1) * NUM_ROTATIONS + torch.arange(NUM_ROTATIONS, device=y.device)).reshape(-1)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class AuxiliaryHeads(nn.Module):
    """Self-supervised augmented classifiers on the last ``num_heads`` stages (after the stem).

    Generic replacement for the reference's hand-written per-architecture ``Auxiliary_Classifier``:
    the head on stage i stacks one 3×3 conv-BN-ReLU per later stage j, with stage j's channels and
    stride max(1, round(H_{j-1} / H_j)) (2 where the map halves), so it ends at the final stage's
    channels and size; the head on the final stage gets one stride-1 block of the final channels
    (as the reference's last extractor). Then global average pooling and a linear layer to 4·C.
    The reference uses the backbone's residual blocks (n per stage) instead of single conv blocks;
    ``hsakd_reference`` builds those for the architectures it defines.
    """

    kind = "generic"

    def __init__(self, shapes: FeatureShapes, num_classes: int, num_heads: int | None = None) -> None:
        super().__init__()
        stages = list(shapes.stages[1:])
        if not stages:
            raise ValueError("HSAKD needs at least one stage after the stem")
        num_heads = len(stages) if num_heads is None else num_heads
        if not 1 <= num_heads <= len(stages):
            raise ValueError(f"HSAKD: {num_heads} heads requested for {len(stages)} stages")
        self.first_stage = len(stages) - num_heads
        final_channels = stages[-1][0]
        self.heads = nn.ModuleList()
        for i in range(self.first_stage, len(stages)):
            blocks: list[nn.Module] = []
            for prev, nxt in zip(stages[i:-1], stages[i + 1:]):
                stride = max(1, round(prev[1] / nxt[1]))
                blocks.append(_conv_bn_relu(prev[0], nxt[0], stride))
            if i == len(stages) - 1:
                blocks.append(_conv_bn_relu(final_channels, final_channels, 1))
            classifier = nn.Linear(final_channels, NUM_ROTATIONS * num_classes)
            blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier]
            self.heads.append(nn.Sequential(*blocks))
        init_heads(self)

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """``stages`` is the model's full ``Features.stages`` (stem first); one (N, 4·C) per head."""
        maps = stages[1:][self.first_stage:]
        return [head(f) for head, f in zip(self.heads, maps)]


def resolve_head_kind(model_name: str, kind: str) -> str:
    """'reference' or 'generic' for ``model_name`` under the ``methods.HSAKD.heads`` setting:
    auto = the reference's heads where it defines them (``REFERENCE_HEADS``), else generic."""
    from mcmi.distill.hsakd_reference import REFERENCE_HEADS

    if kind not in HEAD_KINDS:
        raise ValueError(f"methods.HSAKD.heads: must be one of {HEAD_KINDS}, got {kind!r}")
    if kind == "reference" and model_name not in REFERENCE_HEADS:
        raise ValueError(f"methods.HSAKD.heads: 'reference' but the reference defines no heads for "
                         f"{model_name!r}; it defines {sorted(REFERENCE_HEADS)} (use 'auto' or 'generic')")
    if kind == "auto":
        return "reference" if model_name in REFERENCE_HEADS else "generic"
    return kind


def build_heads(model_name: str, shapes: FeatureShapes, num_classes: int, kind: str = "auto",
                num_heads: int | None = None) -> nn.Module:
    """The auxiliary heads of one model: the reference's (``hsakd_reference``) or ``AuxiliaryHeads``
    (``num_heads`` deepest stages; generic only). The module's ``kind`` says which."""
    from mcmi.distill.hsakd_reference import REFERENCE_HEADS

    if resolve_head_kind(model_name, kind) == "reference":
        return REFERENCE_HEADS[model_name](num_classes)
    return AuxiliaryHeads(shapes, num_classes, num_heads)


def save_teacher_heads(heads: nn.Module, path: str | Path) -> None:
    """Write {'kind': heads.kind, 'state_dict': ...} to ``path`` through the project's one atomic
    writer (``mcmi.provenance.save_torch_atomic``: temporary file, rename, usual permissions)."""
    state = {k: v.detach().cpu() for k, v in heads.state_dict().items()}
    save_torch_atomic(path, {"kind": heads.kind, "state_dict": state})


def load_teacher_heads(path: str | Path, shapes: FeatureShapes, num_classes: int, model_name: str = "",
                       kind: str = "auto") -> nn.Module:
    """Build the teacher's heads (``build_heads``) and load the state saved at ``path``.

    The file must hold the kind these settings resolve to; a mismatch (e.g. generic heads trained
    before reference heads existed for the model) fails naming both. Files written before kinds were
    recorded hold a bare state dict and are read as generic heads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HSAKD teacher heads file not found: {path}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(saved, dict) and "state_dict" in saved and "kind" in saved:
        saved_kind, state = saved["kind"], saved["state_dict"]
    else:
        saved_kind, state = "generic", saved
    expected = resolve_head_kind(model_name, kind)
    if saved_kind != expected:
        raise ValueError(
            f"HSAKD teacher heads file {path} holds {saved_kind!r} heads, but {expected!r} heads are expected "
            f"for teacher {model_name or '(unnamed)'} with methods.HSAKD.heads={kind!r}; "
            "retrain the heads (rule hsakd_heads) or set methods.HSAKD.heads to the file's kind"
        )
    heads = build_heads(model_name, shapes, num_classes, kind)
    heads.load_state_dict(state)
    return heads


def _fingerprint(module: nn.Module) -> str:
    """A digest of ``module``'s kind and state (names, shapes, dtypes and values)."""
    digest = hashlib.sha256(str(getattr(module, "kind", type(module).__name__)).encode())
    for name, value in module.state_dict().items():
        value = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


class HSAKDTeacherHeads(Objective):
    """Stage 1 of HSAKD: train the teacher's auxiliary heads on its frozen backbone.

    L = Σ_heads CE(head(rotated batch), 4·y + k); the backbone runs in eval mode without gradient
    (the reference's ``train_teacher_cifar.py --freezed``: backbone frozen and in eval mode, its
    features detached). The logits returned are the backbone's on the unrotated samples.
    """

    def __init__(self, shapes: FeatureShapes, num_classes: int, model_name: str = "", heads: str = "auto") -> None:
        super().__init__()
        self.heads = build_heads(model_name, shapes, num_classes, heads)

    def step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        model.eval()
        with torch.no_grad():
            features = model.extract(rotate_batch(batch.x))
        labels = joint_labels(batch.y)
        loss = torch.stack([F.cross_entropy(out, labels) for out in self.heads(features.stages)]).sum()
        return StepOutput({"ce_heads": loss}, features.logits[0::NUM_ROTATIONS])

    def describe(self) -> dict:
        return {"objective": "HSAKD teacher heads", "heads": self.heads.kind, "num_heads": self.heads.num_heads}


@register
class HSAKD(DistillMethod):
    """Self-supervised augmented distillation over four rotations of every batch.

    With x̃ the 4B rotated samples, the student's heads q_s and the teacher's (pre-trained, frozen)
    heads q_t on matching stages, and T = 3:
    L = ce_weight · CE(z_s(x)[unrotated], y)
        + weight · (Σ_heads T² KL(q_t(x̃)/T || q_s(x̃)/T) + T² KL(z_t(x̃)/T || z_s(x̃)/T)).
    The final-logit term is over all 4B rotated samples, as the reference does. Gradients flow
    from the student's heads into its backbone (the reference's ``grad=True``).

    Reference: winycg/HSAKD ``train_student_cifar.py`` (``DistillKL``: batch-mean KL times T²,
    kd_T 3, all weights 1) and ``models/*`` (heads on every stage after the stem). ``heads``:
    ``auto`` (default) builds the reference's own heads for the architectures it defines
    (``hsakd_reference.REFERENCE_HEADS``) and the generic ``AuxiliaryHeads`` otherwise;
    ``reference``/``generic`` force one kind. When the two models have different numbers of heads,
    the deepest are paired. The teacher heads' file is ``ctx.extra["hsakd_teacher_heads"]`` and
    must hold the kind the teacher resolves to. The kinds used are reported by ``method_info``.
    """

    name: ClassVar[str] = "HSAKD"
    defaults: ClassVar[dict[str, Any]] = {"ce_weight": 1.0, "weight": 1.0, "T": 3.0, "heads": "auto"}
    positive: ClassVar[tuple[str, ...]] = ("T",)

    def __init__(self, ctx: PairContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        path = ctx.extra.get(TEACHER_HEADS_KEY)
        if not path:
            raise ValueError(
                f"HSAKD needs the teacher's auxiliary heads: set PairContext.extra[{TEACHER_HEADS_KEY!r}] "
                "to the file written by save_teacher_heads after training HSAKDTeacherHeads"
            )
        kind = self.hparams["heads"]
        self.teacher_heads = load_teacher_heads(path, ctx.teacher, ctx.num_classes, ctx.teacher_name, kind)
        self.teacher_heads.requires_grad_(False)
        self.teacher_heads.eval()
        self.teacher_heads_key = _fingerprint(self.teacher_heads)   # HSAKD students with equal heads share them
        num_heads = min(len(ctx.student.stages), len(ctx.teacher.stages)) - 1
        self.student_heads = build_heads(ctx.student_name, ctx.student, ctx.num_classes, kind, num_heads)

    def method_info(self) -> dict[str, Any]:
        """Which heads were used: 'reference' (winycg/HSAKD's own) or 'generic', per model."""
        return {"heads": f"student {self.student_heads.kind}, teacher {self.teacher_heads.kind}"}

    def train(self, mode: bool = True) -> "HSAKD":
        super().train(mode)
        self.teacher_heads.eval()  # frozen, like the teacher itself
        return self

    def step(self, student: ZooModel, teacher: ZooModel, batch: Batch, epoch: int) -> StepOutput:
        s = student.extract(batch.derived("rotated", rotate_batch))
        with torch.no_grad():
            t_logits, t_heads = shared_teacher_work(teacher, ("hsakd", self.teacher_heads_key), batch.x,
                                                    lambda model: self.teacher_outputs(model, batch))
        s_heads = self.student_heads(s.stages)
        paired = min(len(s_heads), len(t_heads))  # the deepest heads of each model are paired
        s_heads, t_heads = s_heads[len(s_heads) - paired:], t_heads[len(t_heads) - paired:]
        temperature = float(self.hparams["T"])
        logits = s.logits[0::NUM_ROTATIONS]
        weight = self.hparams["weight"]
        terms = {
            "ce": self.hparams["ce_weight"] * F.cross_entropy(logits, batch.y),
            "kd_heads": weight * torch.stack([kd_loss(sh, th, temperature) for sh, th in zip(s_heads, t_heads)]).sum(),
            "kd_logits": weight * kd_loss(s.logits, t_logits, temperature),
        }
        return StepOutput(terms=terms, logits=logits)

    def teacher_outputs(self, teacher: ZooModel, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The frozen teacher's logits and heads on the rotated batch, in ``rotate_batch``'s order.

        Computed one rotation at a time (each a contiguous tensor, as ``rotate_batch``'s) and
        interleaved: in eval mode a sample's outputs do not depend on the rest of the batch, so this
        equals one pass over the 4B samples up to float rounding (kernels may split their sums
        differently for another batch size: one or two float32 ulps on some CPUs; tested to a stated
        tolerance). Every student computes it the same way, alone or in a group, so those agree bit
        for bit. Rotation 0 is not the plain batch itself, whose memory layout may differ (the data
        pipeline's channels-last strides), because a different layout may round differently.
        """
        logits, heads = [], []
        for k in range(NUM_ROTATIONS):
            x = batch.derived(f"rotation{k}", lambda x, k=k: torch.rot90(x, k, (2, 3)).contiguous())
            features = teacher.extract(x)
            logits.append(features.logits)
            heads.append(self.teacher_heads(features.stages))
        return interleave_rotations(logits), [interleave_rotations(list(h)) for h in zip(*heads)]
