"""Where a result came from (config, seed, versions, commit), the fingerprint of a job spec, and
atomic, strict JSON/torch writes and reads."""

from __future__ import annotations

import datetime as _dt
import functools
import glob
import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of the packages that decide a result."""
    import numpy

    import mcmi

    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
             "mcmi": mcmi.__version__}
    try:
        import torchvision

        found["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    return found


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of the package's source files (Python and C++): which code produced a result, exactly,
    whether or not the checkout is committed."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".cpp", ".h")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def provenance(config: dict[str, Any], seed: int | None, device: str | torch.device | None = None) -> dict[str, Any]:
    """The provenance block of a metrics file."""
    return {
        "config": config,
        "seed": seed,
        "versions": versions(),
        "code_fingerprint": code_fingerprint(),
        "git_commit": _git_commit(),
        "host": platform.node(),
        "device": str(device) if device is not None else None,
        "started": now(),
    }


def _file_mode() -> int:
    """Permissions of a new ordinary file under the current umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


TMP_SUFFIX = ".tmp"


def _atomic(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)   # leftovers of an earlier write of this path that was killed
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())   # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files that an interrupted atomic write of ``path`` left beside it (a killed
    process cannot clean up after itself); returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"))
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


class NonFiniteValueError(ValueError):
    """A NaN or infinity where a result is expected; the message names the file and the field."""


def find_non_finite(obj: Any, where: str = "") -> str | None:
    """The key path of the first NaN/inf float in a JSON-like object (``None`` when all are finite)."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "<value>")
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = find_non_finite(value, f"{where}[{key}]" if isinstance(key, int) else
                                f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (a NaN/inf is refused, naming the field); readers never
    see a half-written file."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable, allow_nan=False)
    except ValueError:
        field = find_non_finite(json.loads(json.dumps(obj, default=_jsonable)))
        raise NonFiniteValueError(f"{path}: refusing to write a non-finite number at {field}") from None
    _atomic(path, lambda h: h.write(text.encode()))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 through a temporary file and a rename."""
    _atomic(path, lambda h: h.write(text.encode()))


def write_file_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Let ``write(handle)`` fill a temporary file beside ``path``, then rename it to ``path``."""
    _atomic(path, write)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (strict JSON has none)")


def read_json_strict(path: str | os.PathLike) -> Any:
    """Read a JSON file refusing NaN/Infinity; errors name the file."""
    try:
        return json.loads(Path(path).read_text(), parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    except ValueError as error:   # raised by _refuse_constant
        raise NonFiniteValueError(f"{path}: {error}") from error


def canonical_json(obj: Any) -> str:
    """One text per value whatever the key order: what job specs are compared and hashed by."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_jsonable)


def spec_fingerprint(spec: dict[str, Any]) -> str:
    """SHA-256 of a job spec's canonical JSON: a resume checkpoint belongs to exactly one spec."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> None:
    """torch.save through a temporary file and a rename."""
    _atomic(path, lambda h: torch.save(obj, h))


def link_or_copy(source: str | os.PathLike, path: str | os.PathLike, copy: bool = True) -> bool:
    """Make ``path`` a hard link to ``source`` (replacing what is there), or, where the file system
    cannot link, an atomic copy (``copy``) or nothing; returns whether ``path`` now holds the file."""
    source, path = Path(source), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.link{TMP_SUFFIX}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
    if copy:
        copy_file_atomic(source, path)
    return copy


def copy_file_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy ``source`` to ``path`` through a temporary file and a rename."""
    import shutil

    with open(source, "rb") as src:
        _atomic(path, lambda h: shutil.copyfileobj(src, h))


def load_torch(path: str | os.PathLike) -> Any:
    """Load a checkpoint without executing pickled code (weights_only=True); clear error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path named
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
