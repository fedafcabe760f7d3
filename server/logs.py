"""A node's job log from the log store, paged by line, in LAVA's shape.

The log store (dispatcher/logstore.py) keeps each ``log-batch`` as one file
``<dir>/<job>/<node>/<subjob>-<seq>.json``. :class:`LogIndex` remembers how
many records each file holds (files never change once written), so reading
lines ``start..end`` of a 50 MB log opens only the files that hold them, one
at a time: memory is bounded by one batch, not by the log.

LAVA's log lines are one YAML flow mapping each,
``- {"dt": ..., "lvl": ..., "msg": ...}``; :func:`lava_line` writes ours so.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker_config import topology

#: our job log levels → LAVA's (lavacli colours only LAVA's levels)
LAVA_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "target": "target",
    "input": "input",
    "results": "results",
    "event": "info",
}
#: how a ``results`` record reads (dispatcher/actions/test_shell.py ``record_result``)
_RESULT = re.compile(r"^(?P<definition>[^/]+)/(?P<case>.+): (?P<result>pass|fail|skip|unknown)\b")
#: characters YAML does not accept raw (or reads as line breaks) inside a double-quoted scalar
_NOT_YAML_SAFE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def lava_record(rec: dict[str, Any]) -> dict[str, Any]:
    """One of our records as LAVA's ``{dt, lvl, msg}`` (a result's message becomes its dict)."""
    level = LAVA_LEVELS.get(str(rec.get("level")), "info")
    msg: Any = str(rec.get("message", ""))
    if level == "results":
        match = _RESULT.match(msg)
        msg = match.groupdict() if match else msg
    return {"dt": str(rec.get("time", "")), "lvl": level, "msg": msg}


def lava_line(rec: dict[str, Any]) -> str:
    """``- {"dt": ..., "lvl": ..., "msg": ...}`` and a newline: YAML that PyYAML reads back."""
    text = json.dumps(lava_record(rec), ensure_ascii=False)
    return "- " + _NOT_YAML_SAFE.sub(_escape, text) + "\n"


def _read_batch(path: Path) -> list[dict[str, Any]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8")).get("records", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in records if isinstance(r, dict)]


class LogIndex:
    """Record counts of stored batch files, learned once per file."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._counts: dict[Path, int] = {}
        self._lock = threading.Lock()

    def node_dir(self, job_id: int, node: str) -> Path:
        """The directory of one node's job log (names checked: no path escapes the store)."""
        return (
            self.root / topology.check_name("job", str(job_id)) / topology.check_name("node", node)
        )

    def files(self, job_id: int, node: str) -> list[tuple[Path, int]]:
        """(file, records) in log order; a file still being written is not listed."""
        base = self.node_dir(job_id, node)
        if not base.is_dir():
            return []
        out = []
        for path in sorted(base.glob("*.json")):
            with self._lock:
                count = self._counts.get(path)
            if count is None:
                count = len(_read_batch(path))
                with self._lock:
                    self._counts[path] = count
            out.append((path, count))
        return out

    def total(self, job_id: int, node: str) -> int:
        """How many records a node's job log has so far."""
        return sum(n for _, n in self.files(job_id, node))

    def records(
        self, job_id: int, node: str, start: int = 0, end: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Records ``start`` (from 0) up to ``end`` (excluded; None: the last one)."""
        start = max(0, start)
        first = 0
        for path, count in self.files(job_id, node):
            last = first + count
            if end is not None and first >= end:
                return
            if last > start:
                batch = _read_batch(path)
                lo = max(0, start - first)
                hi = count if end is None else min(count, end - first)
                yield from batch[lo:hi]
            first = last

    def lava_chunks(
        self, job_id: int, node: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """LAVA's log text of those records, a batch file's worth at a time."""
        lines: list[str] = []
        for rec in self.records(job_id, node, start, end):
            lines.append(lava_line(rec))
            if len(lines) >= 2000:
                yield "".join(lines).encode("utf-8")
                lines = []
        if lines:
            yield "".join(lines).encode("utf-8")
