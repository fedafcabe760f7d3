"""What happens now: one consumer of ``lava.logs`` and ``lava.events`` per server process.

The server binds its own temporary queues (as ``lavamq logs --follow`` does)
and hands every ``log-batch`` and ``event`` to the listeners registered here:
the metrics (console bytes, sends, sync latency) and the web view's live
streams (server-sent events), which subscribe per job. Listeners run on the
consumer's thread and must be quick; the web view's hand the data to its
event loop.
"""

from __future__ import annotations

import logging
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

#: ``listener(kind, body)``: kind is ``log-batch`` or ``event``
Listener = Callable[[str, dict[str, Any]], None]


class LiveTap:
    """Fans the broker's log batches and events out to listeners (all, or one job's)."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._all: list[Listener] = []
        self._jobs: dict[str, dict[int, Listener]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._consumer: QueueConsumer | None = None
        self._thread: threading.Thread | None = None

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every batch and event of every job."""
        with self._lock:
            self._all.append(listener)

    def subscribe(self, job_id: int, listener: Listener) -> int:
        """``listener`` gets job ``job_id``'s batches and events; returns its handle."""
        with self._lock:
            self._next += 1
            self._jobs.setdefault(str(job_id), {})[self._next] = listener
            return self._next

    def unsubscribe(self, job_id: int, handle: int) -> None:
        """Stop a listener ``subscribe`` returned ``handle`` for."""
        with self._lock:
            subs = self._jobs.get(str(job_id), {})
            subs.pop(handle, None)
            if not subs:
                self._jobs.pop(str(job_id), None)

    def start(self) -> LiveTap:
        """Bind this process's queues to ``lava.logs`` and ``lava.events`` and start reading."""
        amqp = is_amqp_url(self.broker_url)
        name = f"lava.server.{uuid.uuid4().hex[:12]}"
        queues = [
            Queue(
                f"{name}.{i}",
                exchange=exchange,
                routing_key="#",
                durable=False,
                exclusive=amqp,
                auto_delete=amqp,
            )
            for i, exchange in enumerate((topology.logs_exchange(), topology.events_exchange()))
        ]
        self._consumer = QueueConsumer(
            self.broker_url,
            queues,
            {"log-batch": LogBatchSchema(), "event": EventSchema()},
            handler=self._handle,
            prefetch=200,
            poll_interval=0.05,
        )
        self._thread = run_in_thread(self._consumer, "lavamq-server-live")
        return self

    def stop(self) -> None:
        """Stop reading and wait for the consumer thread."""
        if self._consumer is not None:
            self._consumer.stop()
        if self._thread is not None:
            self._thread.join(10)

    def _handle(self, delivery: Delivery) -> None:
        body = delivery.body
        kind = delivery.message_type
        job = str(body.get("job") if kind == "log-batch" else body.get("job_id"))
        with self._lock:
            listeners = [*self._all, *self._jobs.get(job, {}).values()]
        for listener in listeners:
            try:
                listener(kind, body)
            except Exception:  # a broken listener must not stop the others
                log.exception("live listener %r failed", listener)
