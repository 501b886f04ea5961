"""One pipeline run per results folder.

Snakemake locks a *working directory*; two runs started from two working directories on the same
absolute ``results:`` folder would both write it. :class:`ResultsLock` is a lock file in the results
folder itself, taken when a run starts executing jobs and released when it ends. A lock left by a run
that crashed is recognised as stale (its process, on this host, is gone) and taken over; a lock held by
a live run, or by a run on another host, refuses the second run with a line naming the other run.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from mcmi.provenance import now

LOCK_NAME = ".mcmi-run.lock"


class ResultsInUseError(RuntimeError):
    """Another pipeline run is using the results folder."""


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), to tell a reused pid
    from the original process; ``None`` where /proc is not available."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict[str, Any]) -> bool | None:
    """Whether the process that wrote ``owner`` still runs; ``None`` when it is on another host."""
    if owner.get("host") != platform.node():
        return None
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    started = owner.get("process_start")
    return started is None or _process_start(pid) in (None, started)


class ResultsLock:
    """The lock file ``<results>/.mcmi-run.lock`` (JSON: host, pid, working directory, command, time)."""

    def __init__(self, results: str | os.PathLike) -> None:
        self.path = Path(results) / LOCK_NAME
        self.held = False

    def _owner(self) -> dict[str, Any]:
        return {"host": platform.node(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
                "cwd": os.getcwd(), "command": " ".join(sys.argv), "started": now()}

    def acquire(self) -> None:
        """Take the lock, replacing a stale one; ResultsInUseError when another run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self._owner(), handle, indent=2)
            self.held = True
            atexit.register(self.release)
            return
        raise ResultsInUseError(f"could not take the lock {self.path}: it keeps reappearing (another run starting?)")

    def _refuse_or_clear(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            owner = {}
        if owner.get("pid") == os.getpid() and owner.get("host") == platform.node():
            raise ResultsInUseError(f"{self.path}: this process already holds the lock")
        alive = _alive(owner) if owner else False
        if alive is False:
            print(f"mcmi: taking over {self.path}: the run that left it (pid {owner.get('pid')} on "
                  f"{owner.get('host')}) is no longer running", file=sys.stderr, flush=True)
            self.path.unlink(missing_ok=True)
            return
        where = ("on another host, so this one cannot tell whether it still runs"
                 if alive is None else "still running")
        raise ResultsInUseError(
            f"the results folder {self.path.parent} is in use by another pipeline run ({where}): pid "
            f"{owner.get('pid')} on {owner.get('host')}, started {owner.get('started')} in "
            f"{owner.get('cwd')} ({owner.get('command')}). Wait for it to finish; if you are sure it is "
            f"not running, delete {self.path}.")

    def release(self) -> None:
        """Remove the lock if this process holds it (idempotent)."""
        if not self.held:
            return
        try:
            owner = json.loads(self.path.read_text())
            if owner.get("pid") == os.getpid() and owner.get("host") == platform.node():
                self.path.unlink()
        except (OSError, ValueError):
            pass
        self.held = False
