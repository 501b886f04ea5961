"""C++ kernels compiled on first use (torch.utils.cpp_extension: needs a C++ compiler and ninja).

The build is cached under torch's extension folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) in a folder named by a hash of the sources and of this CPU's
instruction-set flags (it is compiled with ``-march=native``) and of the Python and torch versions: a
home folder shared by different cluster nodes gets one build per CPU kind, and an edited source or a
new torch gets a fresh build. Once a build has finished, a ``ready`` file in its folder says so and
later processes import the library directly, without asking ninja whether it is current (ninja's
dependency log, shared by concurrent jobs, can get damaged and then makes every job recompile)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import sys
import time
from functools import cache
from pathlib import Path
from types import ModuleType

SOURCE_DIR = Path(__file__).resolve().parent
STALE_LOCK_S = 600.0
CFLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno"]
READY_FILE = "ready"  # written into the build folder once the library there is complete


def _build_key() -> str:
    """A short hash of the kernel sources, the Python and torch versions and this CPU's feature flags."""
    import torch

    sources = b"".join(path.read_bytes() for path in sorted(SOURCE_DIR.glob("*.[ch]*")))
    context = f"{sys.version}|{torch.__version__}|{_cpu_flags()}|{' '.join(CFLAGS)}"
    return hashlib.sha256(sources + context.encode()).hexdigest()[:12]


def _cpu_flags() -> str:
    """The CPU's feature flags (the machine name where /proc/cpuinfo is absent)."""
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.machine() + platform.processor()


@cache
def mlp_stack() -> ModuleType:
    """The compiled ``mlp_stack.cpp`` module (``train_epoch``); raises RuntimeError if it cannot be built."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" is expected
    from torch.utils import cpp_extension

    name = f"mcmi_mlp_stack_{_build_key()}"
    build_dir = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / name
    build_dir.mkdir(parents=True, exist_ok=True)
    built = _import_built(name, build_dir)
    if built is not None:
        return built
    _remove_stale_lock(build_dir / "lock")
    try:
        module = cpp_extension.load(name=name, sources=[str(SOURCE_DIR / "mlp_stack.cpp")], extra_cflags=CFLAGS,
                                    extra_include_paths=[str(SOURCE_DIR)], build_directory=str(build_dir),
                                    verbose=False)
    except Exception as error:  # compiler or ninja missing, or a failed build: say which
        raise RuntimeError(f"could not build the C++ MLP kernel ({type(error).__name__}: {error}); "
                           "install a C++ compiler and ninja, or set synthetic.kernel: torch") from error
    _mark_ready(build_dir, Path(module.__file__).name)
    return module


def _import_built(name: str, build_dir: Path) -> ModuleType | None:
    """The library of a finished build in ``build_dir`` (see :data:`READY_FILE`), or None if there is none
    or it does not import (then it is rebuilt)."""
    try:
        library = build_dir / (build_dir / READY_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    if not library.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location(
            name, library, loader=importlib.machinery.ExtensionFileLoader(name, str(library)))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:
        return None
    return module


def _mark_ready(build_dir: Path, library_name: str) -> None:
    """Record (atomically) that ``library_name`` in ``build_dir`` is a complete build."""
    partial = build_dir / f"{READY_FILE}.{os.getpid()}.tmp"
    partial.write_text(library_name + "\n")
    os.replace(partial, build_dir / READY_FILE)


def _remove_stale_lock(lock: Path, max_age_s: float = STALE_LOCK_S) -> None:
    """torch waits forever on the lock file of a build that was killed; a build takes about a minute, so a
    lock older than ``max_age_s`` is left over and removed."""
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink()
    except FileNotFoundError:
        pass
