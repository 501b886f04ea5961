"""Where a table's numbers come from: which code, commit, versions and devices produced its metrics files.

Every training job records in its metrics the package's code fingerprint, the git commit, the library
versions, the device and when it ran (``mcmi.provenance``). A table lists them under its cells, and says
in its first lines when some results were produced by other code than the checkout that builds the table:
Snakemake reruns a job when its spec or an input file changes, not when only the package's code does, so
after a code change old results stay until they are rerun (``snakemake --forcerun RULE`` or ``-R``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from mcmi.report.records import MetricsRecord

HEADING = "Where these numbers come from"


def _short(digest: str) -> str:
    return digest[:12]


def _short_commit(commit: str | None) -> str:
    """A git commit as 7 hex digits (and its '-dirty' mark); anything else as it is."""
    if not commit:
        return "not a git checkout"
    return commit[:7] + commit[40:] if re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit) else commit


def _counted(counts: Counter[str], total: int) -> str:
    """'a (3), b (1)' in order of count; one value alone when every file has it."""
    if len(counts) == 1 and next(iter(counts.values())) == total:
        return next(iter(counts))
    return ", ".join(f"{value} ({n})" for value, n in counts.most_common())


@dataclass(frozen=True)
class Origin:
    """What the metrics files of one table record about how they were produced."""

    files: int
    current_code: str
    code: Counter[str] = field(default_factory=Counter)          # code fingerprint -> files
    commits: dict[str, Counter[str]] = field(default_factory=dict)  # code fingerprint -> git commits -> files
    torch: Counter[str] = field(default_factory=Counter)
    devices: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, records: Sequence[MetricsRecord], current_code: str) -> "Origin":
        code: Counter[str] = Counter()
        commits: dict[str, Counter[str]] = {}
        torch: Counter[str] = Counter()
        devices: Counter[str] = Counter()
        for record in records:
            p = record.provenance
            if p.get("code_fingerprint"):
                code[p["code_fingerprint"]] += 1
                commits.setdefault(p["code_fingerprint"], Counter())[_short_commit(p.get("git_commit"))] += 1
            if isinstance(p.get("versions"), dict) and p["versions"].get("torch"):
                torch[str(p["versions"]["torch"])] += 1
            if p.get("device"):
                devices[str(p["device"])] += 1
        return cls(len(records), current_code, code, commits, torch, devices)

    @property
    def recorded(self) -> int:
        """Files that record their code."""
        return sum(self.code.values())

    @property
    def other_code(self) -> int:
        """Files produced by code other than ``current_code``."""
        return self.recorded - self.code.get(self.current_code, 0)

    def summary(self) -> list[str]:
        """A first line of the table when some results come from other code than the current checkout's."""
        if not self.other_code:
            return []
        return [f"**Code**: {self.other_code} of {self.files} result files were produced by other code than "
                f"this checkout's (the package changed after they ran; see '{HEADING}'). Snakemake does not "
                "rerun a job when only the package's code changed: rerun the jobs the change affects "
                "(`snakemake --forcerun RULE` or `-R`) for numbers of the current code."]

    def lines(self) -> list[str]:
        """The bullet lines (markdown) of the table's last section."""
        lines = [f"- {self.files} metrics file{'s' if self.files != 1 else ''} (one per run of a cell, teacher "
                 "or baseline, or a λ* selection)."]
        if self.code:
            versions = []
            for digest, n in self.code.most_common():
                mark = ", this checkout's code" if digest == self.current_code else ""
                commits = _counted(self.commits[digest], n)
                versions.append(f"`{_short(digest)}` (commit {commits}; {n} file{'s' if n != 1 else ''}{mark})")
            lines.append(f"- Package code (fingerprint of its source files): {'; '.join(versions)}."
                         + ("" if self.other_code else " All of it is this checkout's code."))
        if self.recorded < self.files:
            lines.append(f"- {self.files - self.recorded} of {self.files} files record no code fingerprint or commit "
                         "(written by hand or by an older version of the pipeline).")
        runtime = [f"{name} {_counted(counts, sum(counts.values()))}"
                   for name, counts in (("torch", self.torch), ("device", self.devices)) if counts]
        if runtime:
            lines.append(f"- {'; '.join(runtime)}.")
        lines.append(f"- This table was built by code `{_short(self.current_code)}`; each file's `provenance` "
                     "block has the full config, seed, versions, host and times.")
        return lines
