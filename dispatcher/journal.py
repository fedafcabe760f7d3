"""The host's durable record of the sub-jobs it accepted.

A sub-job message is acknowledged to the broker only after :meth:`Journal.accept`
has committed it here (SQLite, ``synchronous=FULL``: the commit is on disk).
Accepting the same sub-job id again returns False, so a redelivered message —
after a broker or dispatcher restart — never runs twice. Sub-jobs found still
``accepted``/``running`` at start-up were cut short by a crash; the daemon
reports them ``incomplete`` instead of running them again.

``published`` says whether the entry's current state reached ``lava.control``
(set by :meth:`Journal.mark_published` once the control publisher's publish
was confirmed; :meth:`Journal.set_state` clears it). At start-up the daemon
publishes again every final state not marked published (:meth:`unpublished`):
a sub-job that ended during a broker outage, its dispatcher then killed or
stopped before the broker came back, still gets its final state out. A
journal written before this column existed gets it on opening; its entries
count as published (their states were handed to the control publisher then).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

FINAL = ("complete", "incomplete", "canceled")


class Journal:
    """The dispatcher's durable record of accepted sub-jobs: a restart never runs one twice."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS subjobs (
                subjob_id INTEGER PRIMARY KEY,
                job_id INTEGER NOT NULL,
                device TEXT NOT NULL,
                state TEXT NOT NULL,
                accepted_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                error_type TEXT,
                message TEXT,
                assignment TEXT NOT NULL,
                published INTEGER NOT NULL DEFAULT 0
            )"""
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(subjobs)")}
        if "published" not in columns:
            # a journal from before the column: its states went to the control publisher
            self._db.execute("ALTER TABLE subjobs ADD COLUMN published INTEGER NOT NULL DEFAULT 1")
        self._closed = False

    def accept(self, assignment: dict[str, Any]) -> bool:
        """Record a new sub-job durably; False if this id was accepted before."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO subjobs (subjob_id, job_id, device, state, accepted_at,"
                " updated_at, assignment, published) VALUES (?, ?, ?, 'accepted', ?, ?, ?, 0)",
                (
                    int(assignment["subjob_id"]),
                    int(assignment["job_id"]),
                    str(assignment["device"]),
                    now,
                    now,
                    json.dumps(assignment),
                ),
            )
            return cur.rowcount == 1

    def set_state(
        self,
        subjob_id: int,
        state: str,
        *,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        """Record a sub-job's newest state (and why), not yet published."""
        with self._lock:
            self._db.execute(
                "UPDATE subjobs SET state = ?, updated_at = ?, error_type = ?, message = ?,"
                " published = 0 WHERE subjob_id = ?",
                (state, time.time(), error_type, message, int(subjob_id)),
            )

    def mark_published(self, subjob_id: int, state: str) -> None:
        """``state`` of the sub-job reached ``lava.control`` (a confirmed publish); a
        state set since then stays unpublished. Ignored once the journal is closed."""
        with self._lock:
            if self._closed:
                return
            self._db.execute(
                "UPDATE subjobs SET published = 1 WHERE subjob_id = ? AND state = ?",
                (int(subjob_id), state),
            )

    def get(self, subjob_id: int) -> dict[str, Any] | None:
        """One sub-job's entry, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT subjob_id, job_id, device, state, error_type, message, assignment,"
                " published FROM subjobs WHERE subjob_id = ?",
                (int(subjob_id),),
            ).fetchone()
        if row is None:
            return None
        return {
            "subjob_id": row[0],
            "job_id": row[1],
            "device": row[2],
            "state": row[3],
            "error_type": row[4],
            "message": row[5],
            "assignment": json.loads(row[6]),
            "published": bool(row[7]),
        }

    def unfinished(self) -> list[dict[str, Any]]:
        """Sub-jobs accepted or running but never finished (a crash interrupted them)."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT subjob_id FROM subjobs WHERE state NOT IN (?, ?, ?) ORDER BY subjob_id",
                    FINAL,
                )
            ]
        return [e for e in (self.get(i) for i in ids) if e is not None]

    def unpublished(self) -> list[dict[str, Any]]:
        """Sub-jobs whose final state was never confirmed published on ``lava.control``."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT subjob_id FROM subjobs WHERE state IN (?, ?, ?) AND published = 0"
                    " ORDER BY subjob_id",
                    FINAL,
                )
            ]
        return [e for e in (self.get(i) for i in ids) if e is not None]

    def all(self) -> list[dict[str, Any]]:
        """Every entry, by sub-job id."""
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT subjob_id FROM subjobs ORDER BY 1")]
        return [e for e in (self.get(i) for i in ids) if e is not None]

    def close(self) -> None:
        """Close the journal's database."""
        with self._lock:
            self._closed = True
            self._db.close()
