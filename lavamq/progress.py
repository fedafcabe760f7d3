"""Live progress of one job for ``lavamq run`` and ``lavamq wait``.

A private queue bound to ``lava.logs`` (``<job>.#``) and ``lava.events``
(``#``) feeds a :class:`ProgressPrinter`, which turns records into short
lines: which node entered which action, MultiNode calls and their releases,
test results, sub-job and job state changes. It only reads; a slow terminal
never slows the job (the queue absorbs it).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

from kombu import Queue

from broker_config import topology
from broker_config.broker import is_amqp_url
from broker_config.consumer import Delivery, QueueConsumer, run_in_thread
from schemas.messages.console import LogBatchSchema
from schemas.messages.jobs import EventSchema

log = logging.getLogger(__name__)

_START = re.compile(r"^start: (\S+) (\S+)")
_RELEASE = re.compile(r"<LAVA_(SYNC|WAIT|WAIT_ALL)_COMPLETE( nack)?")
_CALL = re.compile(r"^\S+: (lava-(?:send|wait|wait-all|sync|network)\S*) (\S+)$")


def _dropped(line: str) -> None:
    """Where progress goes once stdout's reader has gone."""


class ProgressPrinter:
    """Formats log records and events of one job as progress lines."""

    def __init__(self, job_id: int | str | None, emit: Callable[[str], None]) -> None:
        self.job_id = None if job_id is None else str(job_id)
        self.emit = emit
        #: node → the action it is in now
        self.actions: dict[str, str] = {}
        self.lines: list[str] = []
        self._early: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def set_job(self, job_id: int | str) -> None:
        """Name the job once it is known; what arrived before is replayed."""
        with self._lock:
            self.job_id = str(job_id)
            early, self._early = self._early, []
        for kind, body in early:
            (self.log_batch if kind == "log" else self.event)(body)

    def _held(self, kind: str, body: dict[str, Any]) -> bool:
        with self._lock:
            if self.job_id is None:
                self._early.append((kind, body))
                return True
            return False

    def _out(self, line: str) -> None:
        self.lines.append(line)
        try:
            self.emit(line)
        except BrokenPipeError:
            # the reader of our output left (``lavamq wait J | head``): stop printing
            # here; the command's own next line ends it quietly (``lavamq.cli``)
            self.emit = _dropped

    def log_batch(self, body: dict[str, Any]) -> None:
        """Print the lines of a log batch of this job that a user should see."""
        if self._held("log", body) or str(body["job"]) != self.job_id:
            return
        node = body["node"]
        for rec in body["records"]:
            message = str(rec.get("message", ""))
            level = rec.get("level")
            if level == "info" and (m := _START.match(message)):
                self.actions[node] = m.group(2)
                self._out(f"[{node}] {m.group(1)} {m.group(2)}")
            elif level == "info" and (m := _CALL.match(message)):
                self._out(f"[{node}] {m.group(1)} {m.group(2)} ...")
            elif level == "input" and (m := _RELEASE.search(message)):
                what = m.group(1).lower().replace("_", "-")
                verdict = "FAILED (nack)" if m.group(2) else "released"
                self._out(f"[{node}] lava-{what} {verdict}")
            elif level == "results":
                self._out(f"[{node}] result {message}")
            elif level in ("error", "warning"):
                self._out(f"[{node}] {level}: {message}")

    def event(self, body: dict[str, Any]) -> None:
        """Print a job or node event of this job."""
        if self._held("event", body):
            return
        if body.get("job_id") is None or str(body["job_id"]) != self.job_id:
            return
        if body["kind"] in ("job", "subjob"):
            self._out(f"* {body.get('text') or body['kind'] + ' ' + body['state']}")


class ProgressWatcher:
    """Consumes one job's logs and the events into a printer, on its own thread."""

    def __init__(
        self, broker_url: str, job_id: int | str | None, emit: Callable[[str], None]
    ) -> None:
        """``job_id`` None: watch every job until :meth:`ProgressPrinter.set_job` names one."""
        self.printer = ProgressPrinter(job_id, emit)
        amqp = is_amqp_url(broker_url)
        name = f"lava.progress.{uuid.uuid4().hex[:12]}"
        logs_key = "#" if job_id is None else f"{topology.check_name('job', str(job_id))}.#"
        bindings = [
            (topology.logs_exchange(), logs_key),
            (topology.events_exchange(), "#"),
        ]
        queues = [
            Queue(
                f"{name}.{i}",
                exchange=exchange,
                routing_key=key,
                durable=False,
                exclusive=amqp,
                auto_delete=amqp,
            )
            for i, (exchange, key) in enumerate(bindings)
        ]
        self.consumer = QueueConsumer(
            broker_url,
            queues,
            {"log-batch": LogBatchSchema(), "event": EventSchema()},
            handler=self._handle,
            prefetch=100,
            poll_interval=0.1,
        )
        self._thread: threading.Thread | None = None

    def _handle(self, delivery: Delivery) -> None:
        if delivery.message_type == "log-batch":
            self.printer.log_batch(delivery.body)
        else:
            self.printer.event(delivery.body)

    def start(self) -> ProgressWatcher:
        """Start printing progress (in a thread of its own)."""
        self._thread = run_in_thread(self.consumer, "lavamq-progress")
        return self

    def stop(self) -> None:
        """Stop printing progress."""
        self.consumer.stop()
        if self._thread is not None:
            self._thread.join(5)


__all__ = ["ProgressPrinter", "ProgressWatcher"]
