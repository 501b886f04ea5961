"""Where a result came from (config, seed, versions, commit) and atomic JSON/torch writes."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

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


def provenance(config: dict[str, Any], seed: int | None, device: str | torch.device | None = None) -> dict[str, Any]:
    """The provenance block of a metrics file."""
    return {
        "config": config,
        "seed": seed,
        "versions": versions(),
        "git_commit": _git_commit(),
        "host": platform.node(),
        "device": str(device) if device is not None else None,
        "started": now(),
    }


def _atomic(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON; readers never see a half-written file."""
    _atomic(path, lambda h: h.write(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable).encode()))


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> None:
    """torch.save through a temporary file and a rename."""
    _atomic(path, lambda h: torch.save(obj, h))


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
