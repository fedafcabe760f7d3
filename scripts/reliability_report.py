#!/usr/bin/env python3
"""Render the measured reliability rows into docs/reliability.md.

The fault tests (tests/integration/test_reliability_*.py) append one row each
to ``$LAVAMQ_RESULTS_DIR/reliability.json`` (default ``build/results``). This
script replaces the table between the two markers in docs/reliability.md:

    python -m pytest -m integration tests/integration/test_reliability_outage.py
    python scripts/reliability_report.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = (
    Path(os.environ.get("LAVAMQ_RESULTS_DIR", ROOT / "build" / "results")) / "reliability.json"
)
DOC = ROOT / "docs" / "reliability.md"
BEGIN = "<!-- reliability-table:begin -->"
END = "<!-- reliability-table:end -->"
COLUMNS = [
    ("test", "test"),
    ("fault", "faults injected"),
    ("sent", "messages sent"),
    ("deliveries_expected", "deliveries checked"),
    ("lost", "lost"),
    ("duplicated", "delivered twice"),
    ("duplicates_dropped", "copies dropped by receivers"),
    ("seconds", "seconds"),
    ("recorded", "measured"),
]


def render(rows: list[dict[str, object]]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in sorted(rows, key=lambda r: str(r.get("test"))):
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> int:
    if not RESULTS.exists():
        print(f"no results at {RESULTS}: run the reliability tests first", file=sys.stderr)
        return 1
    rows = json.loads(RESULTS.read_text())
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        print(f"{DOC}: markers {BEGIN} / {END} not found", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render(rows)}\n{END}{tail}")
    print(f"wrote {len(rows)} rows to {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
