"""Where a result came from (config, seed, versions, commit), the fingerprint of a job spec, and
atomic, strict JSON/torch writes and reads."""

from __future__ import annotations

import datetime as _dt
import errno
import functools
import glob
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from mcmi.source_digest import package_source_digest


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


def _torchvision_version() -> str | None:
    """torchvision's ``__version__``, read from its ``version.py`` without importing it: its import takes
    a second or more (its ops pull in torch's compiler stack), which every job would pay for one string."""
    import importlib.util

    module = sys.modules.get("torchvision")
    if module is not None:
        return module.__version__
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or []:
        path = Path(folder) / "version.py"
        found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", path.read_text(), re.M) if path.is_file() else None
        if found:
            return found.group(1)
    import importlib.metadata

    return importlib.metadata.version("torchvision")   # pragma: no cover  (a build without version.py)


def versions() -> dict[str, str]:
    """Versions of the packages that decide a result."""
    import numpy

    import mcmi

    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
             "mcmi": mcmi.__version__}
    torchvision = _torchvision_version()
    if torchvision is not None:
        found["torchvision"] = torchvision
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    return found


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of the package's source files (Python and C++): which code produced a result, exactly,
    whether or not the checkout is committed."""
    return package_source_digest()


def code_origin() -> dict[str, Any]:
    """Which code wrote a result: the package's fingerprint and the git commit (``-dirty`` with edits)."""
    return {"code_fingerprint": code_fingerprint(), "git_commit": _git_commit()}


def provenance(config: dict[str, Any], seed: int | None, device: str | torch.device | None = None) -> dict[str, Any]:
    """The provenance block of a metrics file."""
    return {
        "config": config,
        "seed": seed,
        "versions": versions(),
        **code_origin(),
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
_OWNER_MARK = "~"       # temporaries are named .<file>.~<host>~<pid>~<random>.tmp: their writer is known
_LEGACY_STALE_SECONDS = 3600


def _owner_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", platform.node()) or "host"
    return f"{_OWNER_MARK}{host}{_OWNER_MARK}{os.getpid()}{_OWNER_MARK}"


class DiskFullError(OSError):
    """A write failed because the file system is full (or over quota); the partial file was removed."""


def _disk_full(error: BaseException, folder: Path) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:   # torch's writer reports a short write as a RuntimeError; a nearly full disk explains it
        return isinstance(error, RuntimeError) and shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


def _atomic(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)   # leftovers of earlier writes of this path whose writer has died
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner_tag()}", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())   # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, Exception) and _disk_full(error, path.parent):
            try:
                free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
            except OSError:
                free = "free space unknown"
            raise DiskFullError(errno.ENOSPC, f"{path}: the disk is full ({free} on the file system of "
                                f"{path.parent}); nothing was written and the partial file was removed. "
                                f"Free some space and rerun: the job resumes from its last checkpoint") from error
        raise


def _writer_alive(tag: str) -> bool | None:
    """Whether the writer of a temporary whose name ends in ``tag`` (see :func:`_owner_tag`) still
    runs: ``None`` when that cannot be known here (another host, or a name without an owner)."""
    parts = tag.split(_OWNER_MARK)
    if len(parts) < 4 or not parts[2].isdigit():
        return None
    host, pid = parts[1], int(parts[2])
    if host != _owner_tag().split(_OWNER_MARK)[1]:
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files that an interrupted atomic write of ``path`` left beside it, when
    provably stale: their writer (named in the file name) was a process of this host that no longer
    runs, or, for a name without an owner (older versions), the file is over an hour old. Another
    writer's temporary in flight is never touched. Returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}")):
        tag = leftover.name[len(path.name) + 2:]
        alive = _writer_alive(tag)
        if alive is None and not tag.startswith(_OWNER_MARK):
            try:
                alive = time.time() - leftover.stat().st_mtime < _LEGACY_STALE_SECONDS
            except FileNotFoundError:
                continue
        if alive is False:
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


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
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{_owner_tag()}link{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
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
