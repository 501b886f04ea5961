"""C++ kernels compiled on first use (torch.utils.cpp_extension: needs a C++ compiler and ninja).

The build is cached under torch's extension folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) in a folder named by a hash of the sources and of this CPU's
instruction-set flags (it is compiled with ``-march=native``) and of the Python and torch versions: a
home folder shared by different cluster nodes gets one build per CPU kind, and an edited source or a
new torch gets a fresh build."""

from __future__ import annotations

import hashlib
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


def _build_key() -> str:
    """A short hash of the kernel sources, the Python and torch versions and this CPU's feature flags."""
    import torch

    sources = b"".join(path.read_bytes() for path in sorted(SOURCE_DIR.glob("*.[ch]*")))
    context = f"{sys.version}|{torch.__version__}|{_cpu_flags()}"
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
    _remove_stale_lock(build_dir / "lock")
    try:
        return cpp_extension.load(name=name, sources=[str(SOURCE_DIR / "mlp_stack.cpp")], extra_cflags=CFLAGS,
                                  extra_include_paths=[str(SOURCE_DIR)], build_directory=str(build_dir),
                                  verbose=False)
    except Exception as error:  # compiler or ninja missing, or a failed build: say which
        raise RuntimeError(f"could not build the C++ MLP kernel ({type(error).__name__}: {error}); "
                           "install a C++ compiler and ninja, or set synthetic.kernel: torch") from error


def _remove_stale_lock(lock: Path, max_age_s: float = STALE_LOCK_S) -> None:
    """torch waits forever on the lock file of a build that was killed; a build takes about a minute, so a
    lock older than ``max_age_s`` is left over and removed."""
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink()
    except FileNotFoundError:
        pass
