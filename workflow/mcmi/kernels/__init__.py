"""C++ kernels compiled on first use (torch.utils.cpp_extension: needs a C++ compiler and ninja).

The build is cached under torch's extension folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) in a folder named by a hash of the sources and of this CPU's
instruction-set flags (it is compiled with ``-march=native``): a home folder shared by different
cluster nodes gets one build per CPU kind, and an edited source gets a fresh build."""

from __future__ import annotations

import hashlib
import platform
from functools import cache
from pathlib import Path
from types import ModuleType

SOURCE_DIR = Path(__file__).resolve().parent
CFLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno"]


def _build_key() -> str:
    """A short hash of the kernel sources and this CPU's feature flags (the build folder's name)."""
    sources = b"".join(path.read_bytes() for path in sorted(SOURCE_DIR.glob("*.[ch]*")))
    return hashlib.sha256(sources + _cpu_flags().encode()).hexdigest()[:12]


def _cpu_flags() -> str:
    """The CPU's feature flags (the machine name where /proc/cpuinfo is absent)."""
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.machine() + platform.processor()


@cache
def mlp_stack() -> ModuleType:
    """The compiled ``mlp_stack.cpp`` module (``train_epoch``); raises RuntimeError if it cannot be built."""
    from torch.utils import cpp_extension

    try:
        return cpp_extension.load(name=f"mcmi_mlp_stack_{_build_key()}", sources=[str(SOURCE_DIR / "mlp_stack.cpp")],
                                  extra_cflags=CFLAGS, extra_include_paths=[str(SOURCE_DIR)],
                                  verbose=False)
    except Exception as error:  # compiler or ninja missing, or a failed build: say which
        raise RuntimeError(f"could not build the C++ MLP kernel ({type(error).__name__}: {error}); "
                           "install a C++ compiler and ninja, or set synthetic.kernel: torch") from error
