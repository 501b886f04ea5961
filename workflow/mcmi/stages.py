"""One function per pipeline stage. Each takes a job spec (a plain dict the workflow builds from the
validated config), checks everything it can before any training starts, runs, and writes its
checkpoint and metrics JSON atomically.

Common spec keys: ``dataset`` (a dataset spec for ``load_dataset``), ``seed``, ``device``
("auto"), ``out_metrics``, ``out_model`` (where a stage produces a model), ``resume`` (a resumable
checkpoint path outside the declared outputs), ``run`` (the identity of the cell in the tables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from mcmi.cmi import class_centroids, collect_probs
from mcmi.data.sources import load_dataset
from mcmi.data.subsets import student_train_set
from mcmi.distill import Distillation, PairContext, SharedTeacher, build_method
from mcmi.models import create_model, load_repdistiller_checkpoint
from mcmi.models.base import probe_shapes
from mcmi.objectives import CrossEntropy, MCMIObjective
from mcmi.provenance import (canonical_json, code_fingerprint, link_or_copy, now, provenance, read_json_strict,
                             remove_stale_temporaries, save_torch_atomic, spec_fingerprint, write_json_atomic)
from mcmi.train import Member, Precision, Recipe, evaluate, fit, fit_members, measure_cmi, pick_device, seed_everything

StageFn = Callable[[dict[str, Any]], dict[str, Any]]
STAGES: dict[str, StageFn] = {}


def stage(name: str) -> Callable[[StageFn], StageFn]:
    def add(fn: StageFn) -> StageFn:
        STAGES[name] = fn
        return fn
    return add


def _require(spec: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in spec]
    if missing:
        raise ValueError(f"job spec for stage {spec.get('stage')!r} lacks key(s) {missing}")


def _resume(spec: dict[str, Any]) -> dict[str, Any]:
    """``fit``'s resume arguments: the job's checkpoint path and the fingerprint of its whole spec,
    so a checkpoint written under another recipe or hyperparameters is never resumed."""
    return {"resume_path": spec.get("resume"), "resume_key": spec_fingerprint(spec)}


def _load_model(name: str, num_classes: int, checkpoint: str | None = None) -> torch.nn.Module:
    model = create_model(name, num_classes)
    if checkpoint:
        load_repdistiller_checkpoint(model, checkpoint)
    return model


def _save_model(path: str, model: torch.nn.Module, name: str, epoch: int, accuracy: float) -> None:
    """Our checkpoints use RepDistiller's layout so other codebases read them too."""
    save_torch_atomic(path, {"model": model.state_dict(), "epoch": epoch, "accuracy": accuracy, "arch": name})


def _finish(spec: dict[str, Any], run_stage: str, final: dict[str, Any], history: list[dict[str, Any]],
            device: torch.device, extra_run: dict[str, Any] | None = None) -> dict[str, Any]:
    prov = provenance(spec, spec.get("seed"), device)
    prov["finished"] = now()
    metrics = {"run": {"stage": run_stage, **spec.get("run", {}), **(extra_run or {})},
               "final": final, "history": history, "provenance": prov}
    write_json_atomic(spec["out_metrics"], metrics)
    if spec.get("resume"):
        Path(spec["resume"]).unlink(missing_ok=True)   # the job is complete: its resume point is not needed
    return metrics


def _final_from_history(history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1]
    return {"test_acc": last["test_acc"], "test_top5": last["test_top5"], "test_loss": last["test_loss"],
            "best_test_acc": max(h["test_acc"] for h in history), "epochs": last["epoch"]}


def _setup(spec: dict[str, Any]) -> tuple[torch.device, Any, Any]:
    _require(spec, "dataset", "seed", "out_metrics")
    device = pick_device(spec.get("device"))
    seed_everything(int(spec["seed"]))
    train, test = load_dataset(spec["dataset"])
    return device, train, test


@stage("teacher")
def train_teacher(spec: dict[str, Any]) -> dict[str, Any]:
    """Train a model with cross-entropy (the MLL teacher; also the early-stopped teacher)."""
    _require(spec, "model", "recipe", "out_model")
    recipe = Recipe(**spec["recipe"])
    device, train, test = _setup(spec)
    model = _load_model(spec["model"], train.num_classes)
    history = fit(model, CrossEntropy(), train, test, recipe, seed=int(spec["seed"]), device=device,
                  **_resume(spec), cmi_every=int(spec.get("cmi_every", 0)),
                  stop_after_epoch=spec.get("stop_after_epoch"), label=f"teacher {spec['model']}")
    final = _final_from_history(history)
    _save_model(spec["out_model"], model, spec["model"], final["epochs"], final["test_acc"])
    return _finish(spec, "teacher", final, history, device)


@stage("import")
def import_teacher(spec: dict[str, Any]) -> dict[str, Any]:
    """Take a pretrained checkpoint in RepDistiller format instead of training (strict load)."""
    _require(spec, "model", "checkpoint", "out_model")
    device, _, test = _setup(spec)
    model = _load_model(spec["model"], test.num_classes, spec["checkpoint"]).to(device)
    evaluation = evaluate(model, test, 256, device)
    _save_model(spec["out_model"], model, spec["model"], 0, evaluation["acc"])
    final = {"test_acc": evaluation["acc"], "test_top5": evaluation["top5"], "source": str(spec["checkpoint"])}
    return _finish(spec, "teacher", final, [], device)


@torch.no_grad()
def compute_centroids(model: torch.nn.Module, train: Any, batch_size: int, device: torch.device,
                      mode: str, generator: torch.Generator) -> torch.Tensor:
    """Q_y of ``model`` on the training set. ``mode`` 'eval': eval mode, no augmentation (the paper's
    reading); 'train_augmented': train mode with augmentation, as the authors' code (BatchNorm running
    statistics are updated as a side effect there)."""
    if mode not in ("eval", "train_augmented"):
        raise ValueError(f"mcmi centroid_pass must be 'eval' or 'train_augmented', got {mode!r}")
    augmented = mode == "train_augmented"
    model.train(augmented)
    batches = train.batches(batch_size, shuffle=augmented, augment=augmented,
                            generator=generator if augmented else None, device=device)
    probs, labels = collect_probs(model, batches)
    return class_centroids(probs, labels, train.num_classes)


@stage("mcmi")
def finetune_mcmi(spec: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune a trained teacher to maximise LL + lambda * CMI with the centroids fixed."""
    _require(spec, "model", "teacher_checkpoint", "lam", "recipe", "out_model")
    lam = float(spec["lam"])
    if lam < 0:
        raise ValueError(f"mcmi lambda must be >= 0, got {lam}")
    recipe = Recipe(**spec["recipe"])
    device, train, test = _setup(spec)
    model = _load_model(spec["model"], train.num_classes, spec["teacher_checkpoint"]).to(device)
    centroids = compute_centroids(model, train, recipe.batch_size, device, spec.get("centroid_pass", "eval"),
                                  torch.Generator().manual_seed(int(spec["seed"]) + 10_000))
    history = fit(model, MCMIObjective(centroids, lam), train, test, recipe, seed=int(spec["seed"]),
                  device=device, **_resume(spec), cmi_every=int(spec.get("cmi_every", 0)),
                  label=f"mcmi {spec['model']} lambda={lam}")
    final = _final_from_history(history)
    _save_model(spec["out_model"], model, spec["model"], final["epochs"], final["test_acc"])
    return _finish(spec, "mcmi", final, history, device, {"lam": lam})


@stage("measure")
def measure_teacher(spec: dict[str, Any]) -> dict[str, Any]:
    """Accuracy on the test set and CMI/LL over the training set (eval mode, no augmentation) at T."""
    _require(spec, "model", "checkpoint")
    device, train, test = _setup(spec)
    model = _load_model(spec["model"], train.num_classes, spec["checkpoint"]).to(device)
    temperature = float(spec.get("temperature", 1.0))
    evaluation = evaluate(model, test, 256, device)
    cmi = measure_cmi(model, train, 256, device, temperature)
    final = {"test_acc": evaluation["acc"], "test_top5": evaluation["top5"], "test_loss": evaluation["loss"],
             "train_cmi": cmi["cmi"], "train_ll": cmi["ll"], "temperature": temperature}
    return _finish(spec, "measure", final, [], device, {"temperature": temperature})


@torch.no_grad()
def confusion_matrix(model: torch.nn.Module, data: Any, device: torch.device) -> list[list[int]]:
    model.eval()
    c = data.num_classes
    counts = torch.zeros(c * c, dtype=torch.int64)
    for batch in data.batches(256, device=device):
        pred = model(batch.x).argmax(dim=1).cpu()
        counts += torch.bincount(batch.y.cpu() * c + pred, minlength=c * c)
    return counts.view(c, c).tolist()


SHARED_BY_GROUP = ("dataset", "seed", "device", "teacher", "teacher_checkpoint", "few_shot", "zero_shot",
                   "precision", "channels_last")


@stage("student")
def train_student(spec: dict[str, Any]) -> dict[str, Any]:
    """Distil a student from a frozen teacher with one method (``vanilla``: no teacher): a group of one."""
    return train_students([spec])[0]


@stage("student_group")
def train_student_group(spec: dict[str, Any]) -> dict[str, Any]:
    """Distil several students that share the dataset, teacher checkpoint, training subset and seed
    in one process: the teacher runs once per batch for all of them. ``spec['members']`` holds each
    student's own spec, exactly as a job of its own would get it."""
    _require(spec, "members")
    results = train_students(spec["members"])
    return {"members": [r["run"] for r in results]}


def train_students(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Train the students of ``specs`` together and write each one's checkpoint and metrics.

    Each member is initialised exactly as its own job would be (the seed, then the student, a
    teacher's and the method's initialisation in that order), has its own optimiser, random stream
    and resume checkpoint, and sees the same batches, so it ends as it would alone. If a member's
    loss goes non-finite the others are still trained and checkpointed, then the job fails naming it:
    rerun with the fixed setting and the others resume from their finished checkpoints."""
    if not specs:
        raise ValueError("a student group needs at least one member")
    for spec in specs:
        _require(spec, "student", "method", "recipe", "out_model", "out_metrics")
    first = specs[0]
    for key in SHARED_BY_GROUP:
        if len({canonical_json(spec.get(key)) for spec in specs}) > 1:
            raise ValueError(f"students trained together must share {key!r}; members differ: "
                             f"{[spec.get(key) for spec in specs]}")
    reused = [_reuse_finished(spec) for spec in specs]
    todo = [spec for spec, metrics in zip(specs, reused) if metrics is None]
    if not todo:
        return reused
    device, full_train, test = _setup(first)
    train = student_train_set(full_train, first)
    teacher_name = first.get("teacher") or first["student"]
    teacher = SharedTeacher(_load_model(teacher_name, full_train.num_classes, first.get("teacher_checkpoint")),
                            teacher_name)
    precision = Precision(first.get("precision", "fp32"), bool(first.get("channels_last", False)))
    members = student_members(todo, train, teacher, device, precision)
    fit_members(members, train, test, device=device, teacher_cache=teacher, precision=precision)
    trained = iter([_finish_student(spec, member, test, len(train), device) for spec, member in zip(todo, members)])
    return [metrics if metrics is not None else next(trained) for metrics in reused]


def _student_label(spec: dict[str, Any]) -> str:
    return f"student {spec['student']} <- {spec.get('teacher', '-')} [{spec['method']}]"


def _reuse_finished(spec: dict[str, Any]) -> dict[str, Any] | None:
    """A student's earlier result, put back at its output paths, if one was kept (``spec['finished']``)
    from a run with the same job spec and the same code; ``None`` when it must be trained. A group
    reruns when any member's spec changes: the others come back from here instead of retraining."""
    folder = spec.get("finished")
    if not folder or not (Path(folder) / "model.pt").is_file() or not (Path(folder) / "metrics.json").is_file():
        return None
    try:
        metrics = read_json_strict(Path(folder) / "metrics.json")
        kept = metrics["provenance"]
        same = (spec_fingerprint(kept["config"]) == spec_fingerprint(spec)
                and kept.get("code_fingerprint") == code_fingerprint())
    except (ValueError, KeyError, TypeError):
        same = False
    if not same:
        return None
    for name, target in (("model.pt", spec["out_model"]), ("metrics.json", spec["out_metrics"])):
        link_or_copy(Path(folder) / name, target)
    print(f"[{_student_label(spec)}] reusing the finished result kept "
          f"in {folder} (same job spec and code); delete that folder to train it again", flush=True)
    return metrics


def _keep_finished(spec: dict[str, Any]) -> None:
    """Hard-link a finished student's outputs into ``spec['finished']`` (see :func:`_reuse_finished`)."""
    folder = spec.get("finished")
    if not folder:
        return
    for name, source in (("model.pt", spec["out_model"]), ("metrics.json", spec["out_metrics"])):
        link_or_copy(source, Path(folder) / name, copy=False)


def student_members(specs: list[dict[str, Any]], train: Any, teacher: SharedTeacher, device: torch.device,
                    precision: Precision) -> list[Member]:
    """One :class:`Member` per student spec, initialised as its own job would be: the seed, then the
    student's, a teacher's (the job loads its teacher's weights over a fresh model) and the method's
    initialisation, in that order."""
    num_classes = train.num_classes
    teacher_name = teacher.model_name
    teacher_shapes = probe_shapes(teacher.model, train.input_shape)
    members = []
    for spec in specs:
        recipe = Recipe(**spec["recipe"])
        seed_everything(int(spec["seed"]))
        student = create_model(spec["student"], num_classes)
        create_model(teacher_name, num_classes)   # as a job of its own: its teacher's init draws here
        ctx = PairContext(
            student=probe_shapes(student, train.input_shape), teacher=teacher_shapes,
            num_classes=num_classes, num_train=len(train), train_labels=train.labels,
            epochs=recipe.epochs, input_shape=train.input_shape, student_name=spec["student"],
            teacher_name=teacher_name, extra=dict(spec.get("extra", {})),
        )
        method = build_method(spec["method"], ctx, spec.get("hparams"))
        if precision.channels_last:
            student.to(memory_format=torch.channels_last)
        label = _student_label(spec)
        members.append(Member(student, Distillation(method, teacher), recipe, seed=int(spec["seed"]),
                              device=device, label=label, **_resume(spec)))
    if precision.channels_last:
        teacher.model.to(memory_format=torch.channels_last)
    return members


def _finish_student(spec: dict[str, Any], member: Member, test: Any, train_size: int,
                    device: torch.device) -> dict[str, Any]:
    final = _final_from_history(member.history)
    final["method_hparams"] = member.objective.method.hparams
    if member.objective.method.method_info():
        final["method_info"] = member.objective.method.method_info()
    final["train_size"] = train_size
    if spec.get("zero_shot"):
        final["confusion"] = confusion_matrix(member.model, test, device)
    _save_model(spec["out_model"], member.model, spec["student"], final["epochs"], final["test_acc"])
    extra_run = {"removed_classes": spec["zero_shot"]["removed_classes"]} if spec.get("zero_shot") else None
    metrics = _finish(spec, "student", final, member.history, device, extra_run)
    _keep_finished(spec)
    return metrics


def run_stage(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the stage named in ``spec['stage']``."""
    name = spec.get("stage")
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known: {sorted(STAGES)}")
    for job in [spec, *spec.get("members", [])]:
        if job.get("out_metrics"):
            Path(job["out_metrics"]).parent.mkdir(parents=True, exist_ok=True)
        for path in (job.get("out_metrics"), job.get("out_model"), job.get("resume")):
            if path:
                for leftover in remove_stale_temporaries(path):
                    print(f"removed {leftover}, left by an interrupted write", flush=True)
    return STAGES[name](spec)


@stage("prepare_data")
def prepare_data(spec: dict[str, Any]) -> dict[str, Any]:
    """Make the dataset available (download or generate where configured), load and check it once
    (file formats, labels, train/val classes, every streamed image), and record its sizes: every
    training job on it depends on this, so bad data fails here, naming the file."""
    from mcmi.data.sources import verify_dataset, write_demo_image_folder

    _require(spec, "dataset", "out_metrics")
    ds = spec["dataset"]
    if ds["kind"] == "demo_imagefolder":
        write_demo_image_folder(ds["root"], ds.get("per_class", 20), image_size=ds.get("image_size", 32))
    train, test = load_dataset(ds)
    verify_dataset(train, test)
    final = {"train_size": len(train), "test_size": len(test), "num_classes": train.num_classes,
             "input_shape": list(train.input_shape)}
    return _finish(spec, "prepare_data", final, [], torch.device("cpu"))


@stage("synthetic")
def synthetic(spec: dict[str, Any]) -> dict[str, Any]:
    """The synthetic Gaussian task at one delta_mu under one preset (Table 5)."""
    from mcmi.synthetic import run_synthetic

    _require(spec, "synthetic", "delta_mu", "out_metrics", "preset")
    return run_synthetic(spec["synthetic"], float(spec["delta_mu"]), spec["out_metrics"], spec["preset"])


@stage("hsakd_heads")
def train_hsakd_heads(spec: dict[str, Any]) -> dict[str, Any]:
    """HSAKD's first stage: train the teacher's auxiliary heads on its frozen backbone."""
    from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads

    _require(spec, "model", "checkpoint", "recipe", "out_model")
    recipe = Recipe(**spec["recipe"])
    device, train, test = _setup(spec)
    teacher = _load_model(spec["model"], train.num_classes, spec["checkpoint"])
    for p in teacher.parameters():
        p.requires_grad_(False)
    heads_kind = spec.get("hparams", {}).get("heads", "auto")
    objective = HSAKDTeacherHeads(probe_shapes(teacher, train.input_shape), train.num_classes, spec["model"], heads_kind)
    history = fit(teacher, objective, train, test, recipe, seed=int(spec["seed"]), device=device,
                  **_resume(spec), label=f"hsakd heads {spec['model']}")
    save_teacher_heads(objective.heads, spec["out_model"])
    return _finish(spec, "hsakd_heads", {"epochs": history[-1]["epoch"], "train_loss": history[-1]["train_loss"],
                                         "heads": objective.heads.kind}, history, device)
