"""What a result is the product of: its job spec, the code, and the *content* of every file it consumed.

A job's :class:`Identity` has three parts: the fingerprint of its spec without file locations
(:meth:`JobSpec.fingerprint`), the package's code fingerprint, and the SHA-256 of each input it read (the teacher checkpoint, a
pretrained file, HSAKD's heads, the dataset's content). Its ``key`` is the digest of the three, like a
build system's content-addressed cache key: a teacher retrained under the same path changes the key of
every student distilled from it. Reuse of a kept result and resume from a checkpoint happen only under
the same key; otherwise the log says which part changed.

Every metrics file a job writes records its identity, the digest of each file it wrote (``outputs``)
and a ``seal``: the digest of the metrics themselves, so a hand edit is detected wherever the file is
read back.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mcmi.provenance import canonical_json, code_fingerprint

_CHUNK = 1 << 22
_DIGESTS: dict[tuple[str, int, int, int], str] = {}   # (path, inode, size, mtime_ns) -> sha256


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes; computed once per process for an unchanged file."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def data_digest(train: Any, test: Any) -> str:
    """Digest of a dataset's content as a job sees it (both splits; see each dataset's ``content_digest``)."""
    return hashlib.sha256(f"{train.content_digest()}\0{test.content_digest()}".encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """The spec, code and input-content fingerprints of one job (see the module docstring)."""

    spec: str
    code: str
    inputs: dict[str, str] = field(default_factory=dict)     # role -> SHA-256 of its content

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "code": self.code, "inputs": dict(sorted(self.inputs.items()))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Identity":
        return cls(str(data["spec"]), str(data["code"]), {str(k): str(v) for k, v in data["inputs"].items()})

    def changes_from(self, earlier: Mapping[str, Any] | None) -> str:
        """What differs between an ``earlier`` identity (its dict form) and this one, in words."""
        if not earlier:
            return "the earlier result records no content identity (written by an older version)"
        try:
            before = Identity.from_dict(earlier)
        except (KeyError, TypeError, AttributeError):
            return "the earlier result's content identity is unreadable"
        changed = []
        if before.spec != self.spec:
            changed.append("the job spec")
        if before.code != self.code:
            changed.append("the code")
        for role in sorted(set(before.inputs) | set(self.inputs)):
            old, new = before.inputs.get(role), self.inputs.get(role)
            if old != new:
                changed.append(f"input {role!r} ({_short(old)} -> {_short(new)})")
        return "changed: " + ", ".join(changed) if changed else "nothing changed"


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "none"


def job_identity(spec: Any, data: str) -> Identity:
    """The identity of ``spec`` (a typed job spec) run on a dataset whose content digest is ``data``
    (:func:`data_digest`): the spec's fingerprint, the code's, and the digests of the dataset and of
    every file the spec names as an input (:meth:`JobSpec.input_files`)."""
    inputs = {"data": data}
    for role, path in spec.input_files().items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{role} {path} not found (needed by the job writing {spec.out_metrics})")
        inputs[role] = file_digest(path)
    return Identity(spec.fingerprint(), code_fingerprint(), inputs)


SEAL_KEY = "seal"


def seal_of(metrics: Mapping[str, Any]) -> str:
    """Digest of a metrics object without its own seal."""
    provenance = {k: v for k, v in metrics.get("provenance", {}).items() if k != SEAL_KEY}
    return hashlib.sha256(canonical_json({**metrics, "provenance": provenance}).encode()).hexdigest()


def sealed(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with ``provenance.seal`` set to the digest of everything else in it."""
    metrics.setdefault("provenance", {})
    metrics["provenance"].pop(SEAL_KEY, None)
    metrics["provenance"][SEAL_KEY] = seal_of(metrics)
    return metrics


def seal_problem(metrics: Mapping[str, Any]) -> str | None:
    """Why ``metrics``' seal does not hold (``None`` when it does, or when the file carries none)."""
    recorded = metrics.get("provenance", {}).get(SEAL_KEY) if isinstance(metrics.get("provenance"), dict) else None
    if recorded is None:
        return None
    if recorded != seal_of(metrics):
        return "its content differs from what the job wrote (seal mismatch: edited by hand or damaged)"
    return None


def output_problem(metrics: Mapping[str, Any], role: str, path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` is not the ``role`` output that ``metrics`` records (``None`` if it is)."""
    recorded = metrics.get("provenance", {}).get("outputs", {}).get(role)
    if recorded is None:
        return f"it records no digest of its {role} file"
    if not Path(path).is_file():
        return f"its {role} file {path} is missing"
    if file_digest(path) != recorded:
        return f"its {role} file {path} is not the one it recorded (digest differs)"
    return None
