"""One function per pipeline stage. Each takes its typed job spec (:mod:`mcmi.pipeline.specs`, built
by the workflow from the validated config, or parsed from the JSON on the command line), checks
everything it can before any training starts, runs, and writes its checkpoint and metrics JSON
atomically."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from mcmi import distributed
from mcmi.cmi import compute_centroids
from mcmi.data.sources import load_dataset
from mcmi.data.subsets import labelled_train_set, student_train_set
from mcmi.distill import Distillation, PairContext, SharedTeacher, build_method, registry
from mcmi.models import create_model, load_repdistiller_checkpoint
from mcmi.models.base import probe_shapes
from mcmi.objectives import CrossEntropy, MCMIObjective
from mcmi.pipeline.specs import (SHARED_BY_GROUP, CamSpec, ClassCMISpec, DataSpec, EmbeddingSpec, HeadsSpec, ImportSpec, JobSpec, Labelled,
                                 MCMISpec, MeasureSpec, RegularizedSpec, StudentGroupSpec, StudentSpec, SyntheticSpec,
                                 SteppedJob, TeacherSpec, TrainingJob, parse_spec)
from mcmi.identity import Identity, data_digest, file_digest, job_identity, output_problem, seal_problem, sealed
from mcmi.provenance import (code_fingerprint, link_or_copy, now, provenance, read_json_strict,
                             remove_stale_temporaries, save_torch_atomic, write_json_atomic)
from mcmi.train import (Member, Precision, Recipe, confusion_matrix, evaluate, fit, fit_members, measure_cmi,
                        seed_everything)

StageFn = Callable[[Any], Any]
STAGES: dict[str, StageFn] = {}


def stage(spec_type: type[JobSpec]) -> Callable[[StageFn], StageFn]:
    """Register ``fn`` as the stage that runs specs of ``spec_type``."""
    def add(fn: StageFn) -> StageFn:
        STAGES[spec_type.STAGE] = fn
        return fn
    return add


def run_stage(spec: dict[str, Any] | JobSpec) -> Any:
    """Run the stage of ``spec`` (a typed spec, or its dict/JSON form, checked key by key first)."""
    spec = parse_spec(spec)
    jobs = spec.members if isinstance(spec, StudentGroupSpec) else (spec,)
    first_rank = os.environ.get("RANK", "0") == "0"    # in a distributed job only rank 0 touches files
    for job in jobs:
        out_metrics = getattr(job, "out_metrics", None)
        if out_metrics:
            Path(out_metrics).parent.mkdir(parents=True, exist_ok=True)
        for path in (out_metrics, getattr(job, "out_model", None), getattr(job, "resume", None)):
            if path and first_rank:
                for leftover in remove_stale_temporaries(path):
                    print(f"removed {leftover}, left by an interrupted write", flush=True)
    if spec.processes == 1:
        return STAGES[spec.STAGE](spec)
    try:
        result = STAGES[spec.STAGE](spec)
    except BaseException as error:
        print(distributed.failure_line(error), file=sys.stderr, flush=True)
        raise
    distributed.stop()
    return result


def _resume(spec: TrainingJob, identity: Identity) -> dict[str, Any]:
    """``fit``'s resume arguments: the job's checkpoint path and its content identity (spec, code and
    input digests), so a checkpoint written under another recipe, code or teacher is never resumed."""
    return {"resume_path": spec.resume, "resume_key": identity.key, "resume_parts": identity.to_dict()}


def _teacher_side_precision(spec: SteppedJob) -> Precision:
    """Numerics of a teacher-side training job (teacher, fine-tune, HSAKD heads): fp32 as the reference
    code, its steps compiled as the spec's ``compile`` says."""
    return Precision(compile=spec.compile_mode)


def _load_model(name: str, num_classes: int, checkpoint: str | None = None) -> torch.nn.Module:
    model = create_model(name, num_classes)
    if checkpoint:
        load_repdistiller_checkpoint(model, checkpoint)
    return model


def _save_model(path: str, model: torch.nn.Module, name: str, epoch: int, accuracy: float) -> None:
    """Our checkpoints use RepDistiller's layout so other codebases read them too (rank 0 writes)."""
    if distributed.ranks().main:
        save_torch_atomic(path, {"model": model.state_dict(), "epoch": epoch, "accuracy": accuracy, "arch": name})


def _finish(spec: DataSpec | TrainingJob, run_stage_name: str, final: dict[str, Any],
            history: list[dict[str, Any]], device: torch.device, identity: Identity,
            extra_run: dict[str, Any] | None = None, outputs: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the job's metrics: its results, where they came from (its content identity and the
    digest of each file it wrote, ``outputs``: role -> path) and a seal over all of it. In a
    distributed job rank 0 writes them (with the number of processes); the others return ``final``."""
    ranks = distributed.ranks()
    if not ranks.main:
        return {"run": {"stage": run_stage_name, **spec.run, **(extra_run or {})}, "final": final}
    prov = provenance(spec.to_dict(), spec.seed, device)
    prov.update(spec_fingerprint=identity.spec, identity=identity.to_dict(), identity_key=identity.key,
                outputs={role: file_digest(path) for role, path in (outputs or {}).items()}, finished=now())
    if ranks.active:
        prov.update(processes=ranks.world, backend=torch.distributed.get_backend())
    metrics = sealed({"run": {"stage": run_stage_name, **spec.run, **(extra_run or {})},
                      "final": final, "history": history, "provenance": prov})
    write_json_atomic(spec.out_metrics, metrics)
    resume = getattr(spec, "resume", None)
    if resume:
        Path(resume).unlink(missing_ok=True)   # the job is complete: its resume point is not needed
    return metrics


def _final_from_history(history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1]
    return {"test_acc": last["test_acc"], "test_top5": last["test_top5"], "test_loss": last["test_loss"],
            "best_test_acc": max(h["test_acc"] for h in history), "epochs": last["epoch"]}


def _setup(spec: TrainingJob) -> tuple[torch.device, Any, Any, Identity]:
    """The job's device (joining its process group when it runs on several processes), its dataset
    (train, test) and its content identity (computed on rank 0 and broadcast, so every process of a
    job holds the same); the seed is set."""
    device = distributed.start(spec.processes, spec.device, spec.batchnorm)
    seed_everything(int(spec.seed))
    train, test = load_dataset(spec.dataset)
    identity = job_identity(spec, data_digest(train, test)) if distributed.ranks().main else None
    return device, train, test, distributed.broadcast_object(identity)


def _labelled(train: Any, labelled: Labelled | None) -> Any:
    """The training set a teacher sees: all of ``train``, or its labelled subset (Figure 9)."""
    if labelled is None:
        return train
    subset = labelled_train_set(train, labelled.count, labelled.seed)
    print(f"training on {len(subset)} class-balanced labelled images (seed {labelled.seed}) of {len(train)}",
          flush=True)
    return subset


@stage(TeacherSpec)
def train_teacher(spec: TeacherSpec) -> dict[str, Any]:
    """Train a model with cross-entropy (the MLL teacher; also the early-stopped teacher)."""
    recipe = Recipe(**spec.recipe)
    device, train, test, identity = _setup(spec)
    train = _labelled(train, spec.labelled)
    model = _load_model(spec.model, train.num_classes)
    history = fit(model, CrossEntropy(), train, test, recipe, seed=int(spec.seed), device=device,
                  **_resume(spec, identity), cmi_every=int(spec.cmi_every or 0),
                  stop_after_epoch=spec.stop_after_epoch, label=f"teacher {spec.model}",
                  precision=_teacher_side_precision(spec))
    final = _final_from_history(history)
    _save_model(spec.out_model, model, spec.model, final["epochs"], final["test_acc"])
    return _finish(spec, "teacher", final, history, device, identity, outputs={"model": spec.out_model})


@stage(ImportSpec)
def import_teacher(spec: ImportSpec) -> dict[str, Any]:
    """Take a pretrained checkpoint (RepDistiller's format, a bare state dict, or torchvision's weights,
    whose file's hash is checked first) instead of training (strict load)."""
    if spec.source:
        from mcmi.models.pretrained import resolve_torchvision, verify_file

        verify_file(resolve_torchvision(spec.model, spec.source), spec.checkpoint)
    device, _, test, identity = _setup(spec)
    model = _load_model(spec.model, test.num_classes, spec.checkpoint).to(device)
    evaluation = evaluate(model, test, 256, device)
    _save_model(spec.out_model, model, spec.model, 0, evaluation["acc"])
    final = {"test_acc": evaluation["acc"], "test_top5": evaluation["top5"], "source": str(spec.checkpoint)}
    return _finish(spec, "teacher", final, [], device, identity, outputs={"model": spec.out_model})


# Offset of the centroid pass's data-order stream from the job seed (the training stream uses the seed).
CENTROID_STREAM_OFFSET = 10_000


@stage(MCMISpec)
def finetune_mcmi(spec: MCMISpec) -> dict[str, Any]:
    """Fine-tune a trained teacher to maximise LL + lambda * CMI with the centroids fixed."""
    lam = float(spec.lam)
    if lam < 0:
        raise ValueError(f"mcmi lambda must be >= 0, got {lam}")
    recipe = Recipe(**spec.recipe)
    device, train, test, identity = _setup(spec)
    train = _labelled(train, spec.labelled)
    model = _load_model(spec.model, train.num_classes, spec.teacher_checkpoint).to(device)
    centroids = compute_centroids(model, train, recipe.batch_size, device, spec.centroid_pass,
                                  torch.Generator().manual_seed(int(spec.seed) + CENTROID_STREAM_OFFSET))
    history = fit(model, MCMIObjective(centroids, lam), train, test, recipe, seed=int(spec.seed),
                  device=device, **_resume(spec, identity), label=f"mcmi {spec.model} lambda={lam}",
                  precision=_teacher_side_precision(spec))
    final = _final_from_history(history)
    _save_model(spec.out_model, model, spec.model, final["epochs"], final["test_acc"])
    return _finish(spec, "mcmi", final, history, device, identity, {"lam": lam}, outputs={"model": spec.out_model})


@stage(RegularizedSpec)
def finetune_regularized(spec: RegularizedSpec) -> dict[str, Any]:
    """Fine-tune a trained teacher with the MCMI recipe but another regulariser (Figure 7: entropy or
    label smoothing instead of the CMI term)."""
    from mcmi.objectives import regularizer

    objective = regularizer(spec.objective)
    recipe = Recipe(**spec.recipe)
    device, train, test, identity = _setup(spec)
    train = _labelled(train, spec.labelled)
    model = _load_model(spec.model, train.num_classes, spec.teacher_checkpoint).to(device)
    history = fit(model, objective, train, test, recipe, seed=int(spec.seed), device=device,
                  **_resume(spec, identity), label=f"{objective.describe()['objective']} {spec.model}",
                  precision=_teacher_side_precision(spec))
    final = _final_from_history(history)
    _save_model(spec.out_model, model, spec.model, final["epochs"], final["test_acc"])
    return _finish(spec, "regularized", final, history, device, identity, objective.describe(),
                   outputs={"model": spec.out_model})


@stage(MeasureSpec)
def measure_teacher(spec: MeasureSpec) -> dict[str, Any]:
    """Accuracy on the test set; CMI, LL and the mean output entropy over the training set (eval mode,
    no augmentation) at T."""
    device, train, test, identity = _setup(spec)
    model = _load_model(spec.model, train.num_classes, spec.checkpoint).to(device)
    temperature = float(spec.temperature)
    evaluation = evaluate(model, test, 256, device)
    stats = measure_cmi(model, train, 256, device, temperature)
    final = {"test_acc": evaluation["acc"], "test_top5": evaluation["top5"], "test_loss": evaluation["loss"],
             "train_cmi": stats["cmi"], "train_ll": stats["ll"], "train_entropy": stats["entropy"],
             "temperature": temperature}
    return _finish(spec, "measure", final, [], device, identity, {"temperature": temperature})


@stage(StudentSpec)
def train_student(spec: StudentSpec) -> dict[str, Any]:
    """Distil a student from a frozen teacher with one method (``vanilla``: no teacher): a group of one."""
    return train_students([spec])[0]


@stage(StudentGroupSpec)
def train_student_group(spec: StudentGroupSpec) -> dict[str, Any]:
    """Distil several students that share the dataset, teacher checkpoint, training subset and seed
    in one process: the teacher runs once per batch for all of them. ``spec.members`` holds each
    student's own spec, exactly as a job of its own would get it."""
    results = train_students(list(spec.members))
    return {"members": [r["run"] for r in results]}


def _check_teacher(spec: StudentSpec) -> None:
    methods = registry()
    if spec.method not in methods:
        raise ValueError(f"unknown distillation method {spec.method!r}; known: {sorted(methods)}")
    if methods[spec.method].needs_teacher and not (spec.teacher and spec.teacher_checkpoint):
        raise ValueError(f"student {spec.out_metrics}: method {spec.method!r} needs 'teacher' and "
                         f"'teacher_checkpoint'")


def train_students(specs: list[StudentSpec | dict[str, Any]]) -> list[dict[str, Any]]:
    """Train the students of ``specs`` together and write each one's checkpoint and metrics.

    Each member is initialised exactly as its own job would be (the seed, then the student, a
    teacher's and the method's initialisation in that order), has its own optimiser, random stream
    and resume checkpoint, and sees the same batches, so it ends as it would alone. If a member's
    loss goes non-finite the others are still trained and checkpointed, then the job fails naming it:
    rerun with the fixed setting and the others resume from their finished checkpoints."""
    specs = [parse_spec({"stage": StudentSpec.STAGE, **s} if isinstance(s, dict) else s) for s in specs]
    if not specs:
        raise ValueError("a student group needs at least one member")
    for spec in specs:
        _check_teacher(spec)
    if len({spec.shared_key() for spec in specs}) > 1:
        differing = [k for k in SHARED_BY_GROUP if len({repr(getattr(s, k)) for s in specs}) > 1]
        raise ValueError(f"students trained together must share {', '.join(map(repr, differing))}; "
                         f"members differ: {[[getattr(s, k) for k in differing] for s in specs]}")
    device, full_train, test, first_identity = _setup(specs[0])
    identities = distributed.broadcast_object(
        {spec.out_metrics: job_identity(spec, first_identity.inputs["data"]) for spec in specs}
        if distributed.ranks().main else None)
    reused = [_reuse_finished(spec, identities[spec.out_metrics]) for spec in specs]
    todo = [spec for spec, metrics in zip(specs, reused) if metrics is None]
    if not todo:
        return reused
    first = todo[0]
    seed_everything(int(first.seed))
    train = student_train_set(
        full_train, alpha_percent=first.few_shot.alpha_percent if first.few_shot else None,
        subset_seed=first.few_shot.seed if first.few_shot else 0,
        removed_classes=first.zero_shot.removed_classes if first.zero_shot else None)
    teacher = None
    if first.teacher:
        teacher = SharedTeacher(_load_model(first.teacher, full_train.num_classes, first.teacher_checkpoint),
                                first.teacher)
    precision = Precision(first.precision, bool(first.channels_last), first.compile_mode)
    members = student_members(todo, train, teacher, device, precision, [identities[s.out_metrics] for s in todo])
    fit_members(members, train, test, device=device, teacher_cache=teacher, precision=precision)
    trained = iter([_finish_student(spec, member, test, len(train), device, identities[spec.out_metrics])
                    for spec, member in zip(todo, members)])
    return [metrics if metrics is not None else next(trained) for metrics in reused]


def _student_label(spec: StudentSpec) -> str:
    return f"student {spec.student} <- {spec.teacher or '-'} [{spec.method}]"


def _reuse_finished(spec: StudentSpec, identity: Identity) -> dict[str, Any] | None:
    """A student's earlier result, put back at its output paths, if one was kept (``spec.finished``)
    by a run with the same content identity (job spec, code, and the digests of the teacher checkpoint,
    HSAKD heads and dataset it read), whose seal holds and whose model file is the one its metrics
    record; ``None`` when it must be trained (the log says why). A group reruns when any member's spec
    or input changes: the unchanged members come back from here instead of retraining."""
    folder = spec.finished
    kept_metrics, kept_model = Path(folder or ".") / "metrics.json", Path(folder or ".") / "model.pt"
    if not folder or not kept_model.is_file() or not kept_metrics.is_file():
        return None
    try:
        metrics = read_json_strict(kept_metrics)
        problem = (seal_problem(metrics) or output_problem(metrics, "model", kept_model)
                   or (None if metrics["provenance"].get("identity_key") == identity.key else
                       identity.changes_from(metrics["provenance"].get("identity"))))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        problem = f"it cannot be read ({error})"
    main = distributed.ranks().main       # every process decides alike; rank 0 links and logs
    if problem:
        if main:
            print(f"[{_student_label(spec)}] not reusing the result kept in {folder}: {problem}; training it",
                  flush=True)
        return None
    if main:
        for name, target in (("model.pt", spec.out_model), ("metrics.json", spec.out_metrics)):
            link_or_copy(Path(folder) / name, target)
        print(f"[{_student_label(spec)}] reusing the finished result kept in {folder} (same job spec, code, "
              f"teacher and data content); delete that folder to train it again", flush=True)
    return metrics


def _keep_finished(spec: StudentSpec) -> None:
    """Hard-link a finished student's outputs into ``spec.finished`` (see :func:`_reuse_finished`)."""
    if not spec.finished or not distributed.ranks().main:
        return
    for name, source in (("model.pt", spec.out_model), ("metrics.json", spec.out_metrics)):
        link_or_copy(source, Path(spec.finished) / name, copy=False)


def student_members(specs: list[StudentSpec], train: Any, teacher: SharedTeacher | None, device: torch.device,
                    precision: Precision, identities: list[Identity] | None = None) -> list[Member]:
    """One :class:`Member` per student spec, initialised as its own job would be: the seed, then the
    student's, its teacher's (the job loads the teacher's weights over a fresh model; ``teacher`` is
    None for a method that needs none) and the method's initialisation, in that order."""
    num_classes = train.num_classes
    teacher_shapes = probe_shapes(teacher.model, train.input_shape) if teacher is not None else None
    members = []
    for k, spec in enumerate(specs):
        recipe = Recipe(**spec.recipe)
        seed_everything(int(spec.seed))
        student = create_model(spec.student, num_classes)
        if teacher is not None:
            create_model(teacher.model_name, num_classes)   # as a job of its own: its teacher's init draws here
        ctx = PairContext(
            student=probe_shapes(student, train.input_shape), teacher=teacher_shapes,
            num_classes=num_classes, num_train=len(train), train_labels=train.labels,
            epochs=recipe.epochs, input_shape=train.input_shape, student_name=spec.student,
            teacher_name=teacher.model_name if teacher is not None else "", extra=dict(spec.extra or {}),
        )
        method = build_method(spec.method, ctx, spec.hparams)
        if precision.channels_last:
            student.to(memory_format=torch.channels_last)
        resume = _resume(spec, identities[k]) if identities is not None else {}
        members.append(Member(student, Distillation(method, teacher), recipe, seed=int(spec.seed),
                              device=device, label=_student_label(spec), **resume))
    if precision.channels_last and teacher is not None:
        teacher.model.to(memory_format=torch.channels_last)
    return members


def _finish_student(spec: StudentSpec, member: Member, test: Any, train_size: int,
                    device: torch.device, identity: Identity) -> dict[str, Any]:
    final = _final_from_history(member.history)
    final["method_hparams"] = member.objective.method.hparams
    if member.objective.method.method_info():
        final["method_info"] = member.objective.method.method_info()
    final["train_size"] = train_size
    if spec.zero_shot:
        final["confusion"] = confusion_matrix(member.model, test, device)
    _save_model(spec.out_model, member.model, spec.student, final["epochs"], final["test_acc"])
    extra_run = {"removed_classes": spec.zero_shot.removed_classes} if spec.zero_shot else None
    metrics = _finish(spec, "student", final, member.history, device, identity, extra_run,
                      outputs={"model": spec.out_model})
    _keep_finished(spec)
    return metrics


@stage(DataSpec)
def prepare_data(spec: DataSpec) -> dict[str, Any]:
    """Make the dataset available (download or generate where configured), load and check it once
    (file formats, labels, train/val classes, every streamed image), and record its sizes: every
    training job on it depends on this, so bad data fails here, naming the file."""
    from mcmi.data.sources import verify_dataset, write_demo_image_folder

    ds = spec.dataset
    if ds["kind"] == "demo_imagefolder":
        write_demo_image_folder(ds["root"], ds.get("per_class", 20), image_size=ds.get("image_size", 32))
    train, test = load_dataset(ds)
    verify_dataset(train, test)
    final = {"train_size": len(train), "test_size": len(test), "num_classes": train.num_classes,
             "input_shape": list(train.input_shape), "content_digest": data_digest(train, test)}
    identity = Identity(spec.fingerprint(), code_fingerprint())
    return _finish(spec, "prepare_data", final, [], torch.device("cpu"), identity)


@stage(SyntheticSpec)
def synthetic(spec: SyntheticSpec) -> dict[str, Any]:
    """The synthetic Gaussian task at one delta_mu under one preset (Table 5)."""
    from mcmi.synthetic import run_synthetic

    return run_synthetic(spec.synthetic, float(spec.delta_mu), spec.out_metrics, spec.preset,
                         Identity(spec.fingerprint(), code_fingerprint()))


@stage(HeadsSpec)
def train_hsakd_heads(spec: HeadsSpec) -> dict[str, Any]:
    """HSAKD's first stage: train the teacher's auxiliary heads on its frozen backbone."""
    from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads

    recipe = Recipe(**spec.recipe)
    device, train, test, identity = _setup(spec)
    teacher = _load_model(spec.model, train.num_classes, spec.checkpoint)
    for p in teacher.parameters():
        p.requires_grad_(False)
    heads_kind = spec.hparams.get("heads", "auto")
    objective = HSAKDTeacherHeads(probe_shapes(teacher, train.input_shape), train.num_classes, spec.model, heads_kind)
    history = fit(teacher, objective, train, test, recipe, seed=int(spec.seed), device=device,
                  **_resume(spec, identity), label=f"hsakd heads {spec.model}",
                  precision=_teacher_side_precision(spec))
    save_teacher_heads(objective.heads, spec.out_model)
    return _finish(spec, "hsakd_heads", {"epochs": history[-1]["epoch"], "train_loss": history[-1]["train_loss"],
                                         "heads": objective.heads.kind}, history, device, identity,
                   outputs={"model": spec.out_model})


# ------------------------------------------------------------------ the appendix experiments' own stages
@torch.no_grad()
def _outputs(model: torch.nn.Module, data: Any, batch_size: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels of ``model`` over ``data`` in eval mode, without augmentation, on the CPU."""
    model.eval()
    logits, labels = [], []
    for batch in data.batches(batch_size, device=device):
        logits.append(model(batch.x).float().cpu())
        labels.append(batch.y.cpu())
    return torch.cat(logits), torch.cat(labels)


@stage(EmbeddingSpec)
def embed_outputs(spec: EmbeddingSpec) -> dict[str, Any]:
    """A 2-D t-SNE (scikit-learn) of a teacher's output vectors on one split (Figure 6), with the split's
    accuracy, CMI and LL beside it (which network is the low- and which the high-CMI one)."""
    from mcmi.analysis.embedding import EMBEDDING_INPUTS, tsne_of_outputs
    from mcmi.cmi import cmi_and_ll

    for name, value, allowed in (("split", spec.split, ("test", "train")), ("input", spec.input, EMBEDDING_INPUTS),
                                 ("init", spec.init, ("pca", "random"))):
        if value not in allowed:
            raise ValueError(f"embedding {name} must be one of {list(allowed)}, got {value!r}")
    device, train, test, identity = _setup(spec)
    data = test if spec.split == "test" else train
    model = _load_model(spec.model, train.num_classes, spec.checkpoint).to(device)
    logits, labels = _outputs(model, data, 256, device)
    points = tsne_of_outputs(logits, input=spec.input, perplexity=float(spec.perplexity), seed=int(spec.seed),
                             init=spec.init)
    cmi, ll = cmi_and_ll(torch.softmax(logits.double(), dim=1), labels, train.num_classes)
    final = {"split": spec.split, "input": spec.input, "perplexity": float(spec.perplexity), "init": spec.init,
             "n_points": len(labels), "split_acc": 100.0 * float((logits.argmax(dim=1) == labels).double().mean()),
             "split_cmi": float(cmi), "split_ll": float(ll),
             "points": [[round(float(x), 4), round(float(y), 4)] for x, y in points], "labels": labels.tolist()}
    return _finish(spec, "embedding", final, [], device, identity, {"split": spec.split})


def _split(spec: Any, train: Any, test: Any) -> Any:
    """The split a job reads: the training set for ``split: train``, else the validation (test) split."""
    return train if spec.split == "train" else test


@stage(ClassCMISpec)
def class_cmi(spec: ClassCMISpec) -> dict[str, Any]:
    """CMI(f; Y = y) = mean over class y's images of KL(P_x || Q_y) for a few classes (Table 8), each
    class's centroid Q_y from its own images (cmi.per_class_cmi), at the spec's temperature, eval mode."""
    from mcmi.cmi import collect_probs, per_class_cmi
    from mcmi.data import imagenet_classes

    if spec.split not in ("train", "val"):
        raise ValueError(f"class_cmi split must be 'train' or 'val', got {spec.split!r}")
    classes = imagenet_classes.resolve(spec.dataset, spec.classes)
    device, train, test, identity = _setup(spec)
    data = _split(spec, train, test)
    wanted = torch.tensor([c["label"] for c in classes])
    subset = data.subset(torch.isin(data.labels, wanted).nonzero().flatten())
    model = _load_model(spec.model, train.num_classes, spec.checkpoint).to(device)
    model.eval()
    probs, labels = collect_probs(model, subset.batches(256, device=device), float(spec.temperature))
    values = per_class_cmi(probs, labels, train.num_classes)
    counts = torch.bincount(labels, minlength=train.num_classes)
    for c in classes:
        if int(counts[c["label"]]) == 0:
            raise ValueError(f"class {c['name']!r}: folder {c['folder']} has no {spec.split} images")
    final = {"split": spec.split, "temperature": float(spec.temperature),
             "classes": [{**c, "images": int(counts[c["label"]]), "cmi": float(values[c["label"]])} for c in classes]}
    return _finish(spec, "class_cmi", final, [], device, identity, {"split": spec.split})


def cam_draw(seed: int, imagenet_index: int, candidates: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` of a class's images (``candidates``: their positions in the split), drawn in an order fixed
    by the seed and the class's ImageNet index alone: the same images for the MLL and the MCMI teacher, and
    the first k of a larger draw are a smaller one's (Figure 3's 4 toy terriers open Figure 13's 24)."""
    generator = torch.Generator().manual_seed(int(seed) * 1000 + int(imagenet_index))
    return candidates[torch.randperm(len(candidates), generator=generator)[:count]]


@stage(CamSpec)
def eigen_cam_maps(spec: CamSpec) -> dict[str, Any]:
    """Eigen-CAM maps (the grad-cam package's EigenCAM, its SVD's sign oriented: analysis/cam.py) of one
    teacher for seeded images of a few classes; the maps and the images as shown go to ``out_maps``."""
    import numpy as np
    import torch.nn.functional as F

    from mcmi.analysis.cam import cam_target_layer, eigen_cam
    from mcmi.data import imagenet_classes
    from mcmi.provenance import write_file_atomic

    if spec.split not in ("train", "val"):
        raise ValueError(f"eigen_cam split must be 'train' or 'val', got {spec.split!r}")
    if int(spec.images) < 1:
        raise ValueError(f"eigen_cam images must be >= 1, got {spec.images}")
    classes = imagenet_classes.resolve(spec.dataset, spec.classes)
    device, train, test, identity = _setup(spec)
    data = _split(spec, train, test)
    model = _load_model(spec.model, train.num_classes, spec.checkpoint).to(device)
    layer = cam_target_layer(model)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    arrays, entries = {}, []
    for c in classes:
        candidates = (data.labels == c["label"]).nonzero().flatten()
        if len(candidates) < int(spec.images):
            raise ValueError(f"class {c['name']!r}: folder {c['folder']} has {len(candidates)} {spec.split} images, "
                             f"{spec.images} are asked for")
        chosen = cam_draw(int(spec.seed), c["imagenet_index"], candidates, int(spec.images))
        x = torch.cat([batch.x.cpu() for batch in data.subset(chosen).batches(len(chosen))])
        if spec.image_size and x.shape[-1] != int(spec.image_size):
            x = F.interpolate(x, size=(int(spec.image_size),) * 2, mode="bilinear", align_corners=False)
        maps = eigen_cam(model, x.to(device), layer)
        with torch.no_grad():
            model.eval()
            predicted = model(x.to(device)).argmax(dim=1).cpu()
        shown = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        arrays[f"images_{c['class']}"], arrays[f"maps_{c['class']}"] = shown, maps.astype(np.float16)
        entry = {**c, "images": len(chosen), "indices": chosen.tolist(), "predicted": predicted.tolist(),
                 "top1_acc": 100.0 * float((predicted == c["label"]).double().mean())}
        tree = getattr(data, "tree", None)
        if tree is not None:      # an ImageNet folder: the files themselves, for looking them up
            entry["files"] = [os.path.relpath(tree.samples[int(data.indices[i])][0], tree.root) for i in chosen]
        entries.append(entry)
    write_file_atomic(spec.out_maps, lambda handle: np.savez_compressed(handle, **arrays))
    final = {"split": spec.split, "image_size": int(x.shape[-1]), "layer": f"{type(layer).__name__}: the last block "
             "of the last stage", "sign": "first component oriented to a non-negative covariance with the "
             "channel-mean activation", "maps_file": Path(spec.out_maps).name, "classes": entries}
    return _finish(spec, "eigen_cam", final, [], device, identity, {"split": spec.split},
                   outputs={"maps": spec.out_maps})
