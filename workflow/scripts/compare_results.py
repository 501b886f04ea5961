"""Compare two results folders of the same config (e.g. the demo before and after a refactor).

Tables (md/tex/csv) must be byte-identical; every metrics.json present in both must agree on the final
test accuracy and the per-epoch training loss. Exits 1 and lists what differs otherwise.

    python workflow/scripts/compare_results.py OLD/results/demo NEW/results/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def compare(old: Path, new: Path) -> list[str]:
    problems = []
    tables = sorted((old / "tables").glob("table*.*"))
    for table in tables:
        other = new / "tables" / table.name
        if not other.is_file() or other.read_bytes() != table.read_bytes():
            problems.append(f"table differs or is missing: {table.name}")
    runs = sorted(old.rglob("metrics.json"))
    for path in runs:
        other = new / path.relative_to(old)
        if not other.is_file():
            problems.append(f"missing in {new}: {path.relative_to(old)}")
            continue
        a, b = json.loads(path.read_text()), json.loads(other.read_text())
        losses = [[h.get("train_loss") for h in m.get("history", [])] for m in (a, b)]
        if a["final"].get("test_acc") != b["final"].get("test_acc") or losses[0] != losses[1]:
            problems.append(f"metrics differ: {path.relative_to(old)}")
    print(f"{len(tables)} table files and {len(runs)} metrics files compared; {len(problems)} differences")
    return problems


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    found = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(found))
    sys.exit(1 if found else 0)
