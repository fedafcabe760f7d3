"""The job log store: keeps every ``log-batch`` published on ``lava.logs``.

Dispatchers publish each sub-job's job log in batches; the durable queue
``lava.logs.store`` (bound with ``#``) holds them until the store writes
them. Each batch becomes one file ``<dir>/<job>/<node>/<subjob>-<seq>.json``:
writing the same batch twice (a redelivery) rewrites the same file, so the
store is idempotent without bookkeeping; reading a job's log is listing its
files in order. ``lavamq logs JOB`` reads this directory for the past and a
temporary queue bound to ``<job>.#`` for what comes next.

Each dispatcher also keeps the whole job log as ``job.log`` (JSON lines) in
the sub-job's work dir on its host.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker_config import topology
from broker_config.consumer import Delivery, QueueConsumer, run_in_thread
from schemas.messages.console import LogBatchSchema

log = logging.getLogger(__name__)


def batch_path(root: Path, body: dict[str, Any]) -> Path:
    """Where one log batch of a job is kept on disk."""
    job = topology.check_name("job", str(body["job"]))
    node = topology.check_name("node", str(body["node"]))
    subjob = topology.check_name("sub-job", str(body["subjob"]))
    return root / job / node / f"{subjob}-{int(body['seq']):08d}.json"


def write_batch(root: Path, body: dict[str, Any]) -> Path:
    """Store one batch durably (write to a temp file, fsync, rename)."""
    path = batch_path(root, body)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(body, fh, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def stored_batches(root: str | Path, job: str) -> Iterator[dict[str, Any]]:
    """Every stored batch of ``job``, node by node, in sequence order."""
    base = Path(root) / topology.check_name("job", str(job))
    if not base.is_dir():
        return
    for node_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for path in sorted(node_dir.glob("*.json")):
            try:
                yield json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("log store: skipping unreadable %s: %s", path, exc)


def stored_records(root: str | Path, job: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(node, record)`` for every stored record of ``job``."""
    for batch in stored_batches(root, job):
        for rec in batch.get("records", []):
            yield str(batch["node"]), rec


class LogStore:
    """Consumes ``lava.logs.store`` and writes each batch under ``root``."""

    def __init__(self, broker_url: str, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.stored = 0
        self.consumer = QueueConsumer(
            broker_url,
            [topology.logs_store_queue()],
            LogBatchSchema(),
            handler=self._on_batch,
            prefetch=50,
            poll_interval=0.2,
        )
        self._thread: threading.Thread | None = None

    def _on_batch(self, delivery: Delivery) -> None:
        write_batch(self.root, delivery.body)
        self.stored += 1

    def run(self, on_ready: Any = None) -> None:
        """Store log batches in this thread until stopped."""
        self.consumer.run(on_ready=on_ready)

    def start(self) -> None:
        """Store log batches in a thread of its own."""
        self._thread = run_in_thread(self.consumer, "log-store")

    def stop(self) -> None:
        """Stop storing and wait for the thread."""
        self.consumer.stop()
        if self._thread is not None:
            self._thread.join(10)
