"""Typed job specs: what the workflow builds for a job and what its stage consumes.

Each stage of :mod:`mcmi.stages` takes one of these dataclasses. On the command line a spec travels
as canonical JSON (:meth:`JobSpec.to_json`; Snakemake's ``params.spec``), and :func:`parse_spec` turns
that JSON back into the same dataclass, refusing unknown or missing keys. A field left ``None`` is
not written, so the JSON holds exactly the keys a job has.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from mcmi.provenance import canonical_json, spec_fingerprint

SpecDict = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Base of every job spec; ``STAGE`` names the stage that runs it."""

    STAGE: ClassVar[str] = ""
    KEEP_NULL: ClassVar[tuple[str, ...]] = ()    # fields written even when None
    INPUT_FILES: ClassVar[tuple[str, ...]] = ()  # fields naming files the job reads ('a.b': key b of dict a)

    def to_dict(self) -> SpecDict:
        out: SpecDict = {"stage": self.STAGE}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name not in self.KEEP_NULL:
                continue
            if isinstance(value, JobSpec | _Part):
                value = value.to_dict()
            elif isinstance(value, tuple) and value and isinstance(value[0], JobSpec):
                value = [member.to_dict() for member in value]
            out[f.name] = value
        return out

    @property
    def processes(self) -> int:
        """How many processes run this job (1 unless a training job's ``distributed`` says more)."""
        return 1

    def input_files(self) -> dict[str, str]:
        """The files this job reads, by field name (those of ``INPUT_FILES`` that are set): what its
        content identity (:mod:`mcmi.identity`) digests besides the dataset."""
        files = {}
        for name in self.INPUT_FILES:
            value: Any = self
            for part in name.split("."):
                value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
                if value is None:
                    break
            if value is not None:
                files[name] = str(value)
        return files

    def fingerprint(self) -> str:
        """SHA-256 of what decides this job's result, without where its files live: the spec less its
        output and bookkeeping paths (``LOCATION_FIELDS``), with each input file's path replaced by a
        placeholder (the job's identity digests that file's content instead) and the dataset's
        location (``root``, ``download``) left out (its content is digested too). A results folder
        that is moved, or a teacher file that is copied elsewhere, keeps the identity of what it holds."""
        data = copy.deepcopy(self.to_dict())
        for name in LOCATION_FIELDS:
            data.pop(name, None)
        for name in self.input_files():
            *parents, last = name.split(".")
            holder = data
            for part in parents:
                holder = holder[part]
            holder[last] = "<input file: content digested>"
        if isinstance(data.get("dataset"), dict):
            data["dataset"] = {k: v for k, v in data["dataset"].items() if k not in ("root", "download")}
        return spec_fingerprint(data)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): the same spec gives the same text whatever the config's key order."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: SpecDict) -> "JobSpec":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names) - {"stage"})
        if unknown:
            raise ValueError(f"job spec for stage {cls.STAGE!r} has unknown key(s) {unknown}; "
                             f"known: {sorted(names)}")
        missing = sorted(n for n, f in names.items() if n not in data and _required(f))
        if missing:
            raise ValueError(f"job spec for stage {cls.STAGE!r} lacks key(s) {missing}")
        values = {}
        for name, value in data.items():
            if name == "stage":
                continue
            read = cls.nested().get(name)
            values[name] = read(value) if read and value is not None else value
        return cls(**values)

    @classmethod
    def nested(cls) -> dict[str, Callable[[Any], Any]]:
        """How fields holding nested blocks are read from their JSON form (none by default)."""
        return {}


# Fields that say where a job writes (its outputs, resume point and kept copy), not what it computes.
LOCATION_FIELDS = ("out_metrics", "out_model", "out_maps", "resume", "finished")


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@dataclass(frozen=True, kw_only=True)
class _Part:
    """A nested block of a spec (few-shot subset, zero-shot classes)."""

    def to_dict(self) -> SpecDict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: SpecDict) -> "_Part":
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"{cls.__name__} block needs exactly the keys {sorted(names)}, got {sorted(data)}")
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class FewShot(_Part):
    """Train the student on ``alpha_percent`` % of each class (Table 3), drawn with ``seed``."""

    alpha_percent: float
    seed: int


@dataclass(frozen=True, kw_only=True)
class ZeroShot(_Part):
    """Train the student without these classes (Figure 4)."""

    removed_classes: list[int]


@dataclass(frozen=True, kw_only=True)
class Labelled(_Part):
    """Train a teacher on ``count`` class-balanced labelled images drawn with ``seed`` only (Figure 9;
    ``data.subsets.labelled_indices``)."""

    count: int
    seed: int


@dataclass(frozen=True, kw_only=True)
class DataSpec(JobSpec):
    """Check (download or generate where configured) one dataset before any job uses it."""

    STAGE: ClassVar[str] = "prepare_data"
    dataset: SpecDict
    out_metrics: str
    run: SpecDict = field(default_factory=dict)     # the cell's identity in the tables
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class TrainingJob(JobSpec):
    """Keys of every job that loads a dataset and writes a metrics file (and maybe a resume point)."""

    dataset: SpecDict
    seed: int
    out_metrics: str
    run: SpecDict = field(default_factory=dict)     # the cell's identity in the tables
    device: str = "auto"
    resume: str | None = None     # resumable checkpoint, outside the declared outputs
    # {"processes": N, "batchnorm": "local"|"sync"}: a job of N processes (mcmi.distributed); None: one
    distributed: SpecDict | None = None

    @property
    def processes(self) -> int:
        """How many processes (one GPU each) run this job."""
        return int(self.distributed["processes"]) if self.distributed else 1

    @property
    def batchnorm(self) -> str:
        """BatchNorm statistics of a distributed job: 'local' (per process) or 'sync' (global batch)."""
        return str(self.distributed.get("batchnorm", "local")) if self.distributed else "local"


@dataclass(frozen=True, kw_only=True)
class SteppedJob(TrainingJob):
    """A job that trains (through :func:`mcmi.train.fit_members`): its steps may be compiled.

    ``compile``: ``default`` or ``reduce-overhead`` (:mod:`mcmi.capture`); ``None`` (the config's
    ``none``) runs them eagerly and leaves the key out of the JSON, so the spec, its fingerprint and the
    job's identity are those of the eager job from before the option existed. A compiled step computes
    the same losses up to float rounding (fused kernels), so a compiled job's numbers can differ from the
    eager job's: it is another job, as another ``precision`` is."""

    compile: str | None = None

    def __post_init__(self) -> None:
        if self.compile is not None and self.compile not in ("default", "reduce-overhead"):
            raise ValueError(f"job spec key 'compile' must be 'default' or 'reduce-overhead' (or absent: eager), "
                             f"got {self.compile!r}")

    @property
    def compile_mode(self) -> str:
        return self.compile or "none"


@dataclass(frozen=True, kw_only=True)
class TeacherSpec(SteppedJob):
    """Train a teacher with cross-entropy (MLL; early-stopped when ``stop_after_epoch`` is set)."""

    STAGE: ClassVar[str] = "teacher"
    model: str
    recipe: SpecDict
    out_model: str
    cmi_every: int | None = None          # measure the training set's CMI every N epochs (Figure 2)
    stop_after_epoch: int | None = None
    labelled: Labelled | None = None      # train on a labelled subset only (Figure 9)

    @classmethod
    def nested(cls) -> dict[str, Callable[[Any], Any]]:
        return {"labelled": Labelled.from_dict}


@dataclass(frozen=True, kw_only=True)
class ImportSpec(TrainingJob):
    """Take a pretrained RepDistiller checkpoint as the MLL teacher."""

    STAGE: ClassVar[str] = "import"
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("checkpoint",)
    model: str
    checkpoint: str
    out_model: str
    # "torchvision:<WEIGHTS>" when ``checkpoint`` is torchvision's file of those weights (its hash is
    # checked before loading, mcmi.models.pretrained); None: a file of the user's
    source: str | None = None


@dataclass(frozen=True, kw_only=True)
class MCMISpec(SteppedJob):
    """Fine-tune the MLL teacher at ``teacher_checkpoint`` to maximise LL + lam * CMI."""

    STAGE: ClassVar[str] = "mcmi"
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("teacher_checkpoint",)
    model: str
    teacher_checkpoint: str
    lam: float
    recipe: SpecDict
    centroid_pass: str = "eval"
    out_model: str
    labelled: Labelled | None = None      # fine-tune (and take the centroids) on a labelled subset only

    @classmethod
    def nested(cls) -> dict[str, Callable[[Any], Any]]:
        return {"labelled": Labelled.from_dict}


@dataclass(frozen=True, kw_only=True)
class RegularizedSpec(SteppedJob):
    """Fine-tune the MLL teacher at ``teacher_checkpoint`` with the MCMI recipe but another regulariser
    (Figure 7): ``objective`` is what ``objectives.regularizer`` builds, e.g. {"objective": "entropy",
    "beta": 0.15}."""

    STAGE: ClassVar[str] = "regularized"
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("teacher_checkpoint",)
    model: str
    teacher_checkpoint: str
    objective: SpecDict
    recipe: SpecDict
    out_model: str
    labelled: Labelled | None = None

    @classmethod
    def nested(cls) -> dict[str, Callable[[Any], Any]]:
        return {"labelled": Labelled.from_dict}


@dataclass(frozen=True, kw_only=True)
class MeasureSpec(TrainingJob):
    """Test accuracy and training-set CMI/LL of a teacher at a temperature."""

    STAGE: ClassVar[str] = "measure"
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("checkpoint",)
    model: str
    checkpoint: str
    temperature: float = 1.0


@dataclass(frozen=True, kw_only=True)
class EmbeddingSpec(TrainingJob):
    """A 2-D t-SNE of a teacher's output vectors on one split (Figure 6); ``seed`` is t-SNE's random state."""

    STAGE: ClassVar[str] = "embedding"
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("checkpoint",)
    model: str
    checkpoint: str
    split: str = "test"              # test | train
    input: str = "probs"             # probs (the paper) | logits (the authors' TSNE.py)
    perplexity: float = 15.0
    init: str = "pca"                # scikit-learn's default since 1.2 | random (its default before)


@dataclass(frozen=True, kw_only=True)
class ClassCMISpec(TrainingJob):
    """CMI(f; Y = y) of a teacher for each of a few classes, over those classes' images of one split
    (Table 8); ``classes``: [{"class": goldfish|bee_eater|toy_terrier|mountain_tent, "folder": ...}]."""

    STAGE: ClassVar[str] = "class_cmi"
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("checkpoint",)
    model: str
    checkpoint: str
    classes: list[SpecDict]
    split: str = "train"             # train | val
    temperature: float = 1.0


@dataclass(frozen=True, kw_only=True)
class CamSpec(TrainingJob):
    """Eigen-CAM maps of a teacher (Figures 3, 10-13) for ``images`` images of each class of ``classes``
    drawn with ``seed`` from one split; maps and images go to ``out_maps`` (.npz), the rest to the metrics."""

    STAGE: ClassVar[str] = "eigen_cam"
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("checkpoint",)
    model: str
    checkpoint: str
    classes: list[SpecDict]
    images: int
    out_maps: str
    split: str = "val"               # val | train
    image_size: int | None = None    # resize the (normalised) images to this size first; None: the dataset's


@dataclass(frozen=True, kw_only=True)
class HeadsSpec(SteppedJob):
    """HSAKD's first stage: the teacher's auxiliary heads on its frozen backbone."""

    STAGE: ClassVar[str] = "hsakd_heads"
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("checkpoint",)
    model: str
    checkpoint: str
    recipe: SpecDict
    hparams: SpecDict = field(default_factory=dict)
    out_model: str


@dataclass(frozen=True, kw_only=True)
class StudentSpec(SteppedJob):
    """Distil one student from a frozen teacher with one method (``vanilla``: no teacher)."""

    STAGE: ClassVar[str] = "student"
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("teacher_checkpoint", "extra.hsakd_teacher_heads")
    student: str
    method: str
    recipe: SpecDict
    hparams: SpecDict = field(default_factory=dict)
    out_model: str
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    few_shot: FewShot | None = None
    zero_shot: ZeroShot | None = None
    extra: SpecDict | None = None            # files a method needs (HSAKD: the teacher's heads)
    finished: str | None = None              # where the finished student is kept for reuse
    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def nested(cls) -> dict[str, Callable[[Any], Any]]:
        return {"few_shot": FewShot.from_dict, "zero_shot": ZeroShot.from_dict}

    def shared_key(self) -> tuple[str, ...]:
        """What students trained in one job must share: data, seed, device, teacher, subset, numerics."""
        as_dict = self.to_dict()
        return tuple(canonical_json(as_dict.get(name)) for name in SHARED_BY_GROUP)


# Fields every member of a student group must have in common.
SHARED_BY_GROUP = ("dataset", "seed", "device", "teacher", "teacher_checkpoint", "few_shot", "zero_shot",
                   "precision", "channels_last", "compile", "distributed")


@dataclass(frozen=True, kw_only=True)
class StudentGroupSpec(JobSpec):
    """Several students trained in one process on one batch stream and one teacher pass per batch."""

    STAGE: ClassVar[str] = "student_group"
    members: tuple[StudentSpec, ...]

    @classmethod
    def nested(cls) -> dict[str, Callable[[Any], Any]]:
        return {"members": lambda members: tuple(StudentSpec.from_dict(m) for m in members)}

    @property
    def processes(self) -> int:
        """How many processes run the group (its members share it)."""
        return self.members[0].processes if self.members else 1


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec(JobSpec):
    """The synthetic Gaussian task at one delta_mu under one preset (Table 5)."""

    STAGE: ClassVar[str] = "synthetic"
    # The task seeds itself from its config (seeds, task_seed); ``seed`` stays null in the JSON so the
    # spec, and with it every finished synthetic output, is unchanged from earlier versions.
    KEEP_NULL: ClassVar[tuple[str, ...]] = ("seed",)
    synthetic: SpecDict
    preset: str
    delta_mu: float
    out_metrics: str
    seed: None = None


SPEC_TYPES: dict[str, type[JobSpec]] = {cls.STAGE: cls for cls in (
    DataSpec, TeacherSpec, ImportSpec, MCMISpec, RegularizedSpec, MeasureSpec, ClassCMISpec, EmbeddingSpec, CamSpec, HeadsSpec,
    StudentSpec, StudentGroupSpec, SyntheticSpec)}


def parse_spec(data: SpecDict | str | JobSpec) -> JobSpec:
    """A typed spec from its dict or JSON text (``stage`` picks the type)."""
    if isinstance(data, JobSpec):
        return data
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, dict):
        raise ValueError("a job spec must be a JSON object")
    stage = data.get("stage")
    if stage not in SPEC_TYPES:
        raise ValueError(f"unknown stage {stage!r}; known: {sorted(SPEC_TYPES)}")
    return SPEC_TYPES[stage].from_dict(data)
