"""The host's durable record of the sub-jobs it accepted.

A sub-job message is acknowledged to the broker only after :meth:`Journal.accept`
has committed it here (SQLite, ``synchronous=FULL``: the commit is on disk).
Accepting the same sub-job id again returns False, so a redelivered message —
after a broker or dispatcher restart — never runs twice. Sub-jobs found still
``accepted``/``running`` at start-up were cut short by a crash; the daemon
reports them ``incomplete`` instead of running them again.
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
                assignment TEXT NOT NULL
            )"""
        )

    def accept(self, assignment: dict[str, Any]) -> bool:
        """Record a new sub-job durably; False if this id was accepted before."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO subjobs (subjob_id, job_id, device, state, accepted_at,"
                " updated_at, assignment) VALUES (?, ?, ?, 'accepted', ?, ?, ?)",
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
        with self._lock:
            self._db.execute(
                "UPDATE subjobs SET state = ?, updated_at = ?, error_type = ?, message = ?"
                " WHERE subjob_id = ?",
                (state, time.time(), error_type, message, int(subjob_id)),
            )

    def get(self, subjob_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT subjob_id, job_id, device, state, error_type, message, assignment"
                " FROM subjobs WHERE subjob_id = ?",
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

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT subjob_id FROM subjobs ORDER BY 1")]
        return [e for e in (self.get(i) for i in ids) if e is not None]

    def close(self) -> None:
        with self._lock:
            self._db.close()
