"""The digest of the package's source files, in a module that imports nothing heavy: provenance records
it as the code that produced a result, and the fork server's clients name the server by it."""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


def package_source_digest(root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 over the relative path and content of every Python and C++ source file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".cpp", ".h")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
