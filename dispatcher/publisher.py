"""One thread per sub-job that owns a broker connection and publishes for it.

Job log records are batched (every ``interval`` seconds or ``max_bytes`` of
messages, whichever comes first) into ``log-batch`` messages on ``lava.logs``
(routing key ``<job>.<node>``); test results go out one by one on
``lava.results``. Everything else in the sub-job (the console reader, the
bridge, the actions) only puts items on a local queue: no kombu connection
is ever shared between threads, and console I/O never waits on the broker.

A broker outage does not lose anything: like the daemon's control publisher,
the thread retries the message at the head of its queue for as long as the
broker is unreachable (back-off up to ``retry_interval``; every retry of one
message carries the same ``message_id``), and everything queued behind it
waits in order. Only :meth:`SubJobPublisher.close` gives up, when its deadline
passes: what is still unpublished then (and any message the broker refused
for good) is counted in ``dropped_records``/``dropped_results`` and logged;
the runner names the counts in the job log and in the sub-job's final state.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kombu.exceptions import OperationalError

from broker_config import topology
from broker_config.broker import Broker
from dispatcher.joblog import now_iso
from schemas.errors import LavamqError
from schemas.messages.base import encode
from schemas.messages.console import LogBatchSchema, TestResultSchema

log = logging.getLogger(__name__)

_STOP = object()
#: what a ``log-batch`` record may hold; other keys of a job log record stay local
_RECORD_FIELDS = ("time", "level", "message", "action")
_RECORD_KEYS = frozenset(_RECORD_FIELDS)


def dropped_note(records: int, results: int) -> str:
    """The job-log line that says how many records and results could not be published."""
    return (
        f"{records} log record(s) and {results} test result(s) of this sub-job were not "
        "published (the broker was unreachable or refused them)"
    )


class _Abandoned(Exception):
    """close() gave up waiting: stop publishing."""


def _encode_records(records: list[dict[str, Any]]) -> str:
    """Records as JSON lines holding only the ``log-batch`` record keys."""
    out = []
    for rec in records:
        if not rec.keys() <= _RECORD_KEYS:
            rec = {k: rec[k] for k in _RECORD_FIELDS if k in rec}
        out.append(json.dumps(rec, ensure_ascii=False) + "\n")
    return "".join(out)


def batch_payload(
    body: dict[str, Any], json_lines: list[str], schema: LogBatchSchema | None = None
) -> bytes:
    """The ``log-batch`` message for ``body`` (its ``records`` empty) holding the
    records given as JSON lines, without decoding and encoding them again.

    The envelope is validated by the schema; the records are spliced in as
    they are (one JSON object per line, no raw newline inside one), which
    gives the same message as encoding the records in ``body``. ``schema``: an
    instance to reuse (building one costs more than validating the envelope).
    """
    head = encode(schema or LogBatchSchema(), body)
    marker = b'"records": []'
    at = head.index(marker)
    text = "".join(json_lines)
    inner = text[:-1].replace("\n", ", ").encode("utf-8") if text else b""
    return b"".join((head[:at], b'"records": [', inner, b"]", head[at + len(marker) :]))


class SubJobPublisher:
    """Publishes one sub-job's log batches and results from its own thread."""

    def __init__(
        self,
        broker_url: str,
        *,
        job: str,
        subjob: str,
        node: str,
        interval: float = 0.1,
        max_bytes: int = 256 * 1024,
        retry_interval: float = 2.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.broker_url = broker_url
        self.job = job
        self.subjob = subjob
        self.node = node
        self.interval = interval
        self.max_bytes = max_bytes
        #: the longest wait between two attempts while the broker is unreachable
        self.retry_interval = retry_interval
        self.connect_timeout = connect_timeout
        self.seq = 0
        self.published_records = 0
        self.published_results = 0
        #: messages (log batches, results) dropped: refused by the broker, or
        #: still unpublished when close() gave up
        self.failures = 0
        self.dropped_records = 0
        self.dropped_results = 0
        #: publish attempts that failed on an unreachable broker (and were retried)
        self.retries = 0
        self.queued_records = 0
        self.queued_results = 0
        self._count_lock = threading.Lock()
        self._abandon = threading.Event()
        self._broker: Broker | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        #: set when the publishing thread must look at the queue before its batch is
        #: due (a result, close(), a batch's worth of log bytes queued): log records
        #: alone do not wake it, so a console costs one wake-up per batch, not per chunk
        self._wake = threading.Event()
        #: log bytes queued since the publishing thread last looked (guarded by _count_lock)
        self._unread_bytes = 0
        #: the publishing thread's own: one schema instance, and message ids made of
        #: one random prefix and a counter (unique, and cheaper than a uuid4 each)
        self._batch_schema = LogBatchSchema()
        self._id_prefix = uuid.uuid4().hex[:20]
        self._messages = 0
        self._thread = threading.Thread(
            target=self._run, name=f"publisher-{job}.{node}", daemon=True
        )
        self._log_key = topology.log_routing_key(job, node)
        self._result_key = topology.result_routing_key(job, node)

    def start(self) -> SubJobPublisher:
        """Start publishing (in the publisher's thread)."""
        self._thread.start()
        return self

    # --- producers (any thread) ---
    def log_record(self, record: dict[str, Any]) -> None:
        """A job log record listener (``JobLog.add_listener``)."""
        self._queue.put(("logs", [record]))
        self._count(records=1, size=len(str(record.get("message", ""))))

    def log_records(self, records: list[dict[str, Any]]) -> None:
        """A job log batch listener (``JobLog.add_batch_listener``): one queue item
        for a whole chunk of console lines."""
        self._queue.put(("logs", records))
        self._count(records=len(records), size=sum(len(str(r.get("message", ""))) for r in records))

    def log_json(self, text: str, count: int) -> None:
        """A job log JSON listener (``JobLog.add_json_listener``): ``count``
        records already encoded as JSON lines holding only the ``log-batch``
        record keys; they are sent as they are, not encoded again."""
        self._queue.put(("json", (text, count)))
        self._count(records=count, size=len(text))

    def result(self, body: dict[str, Any]) -> None:
        """Queue a test result for publishing."""
        self._count(results=1)
        self._queue.put(("result", body))
        self._wake.set()

    def _count(self, *, records: int = 0, results: int = 0, size: int = 0) -> None:
        with self._count_lock:
            self.queued_records += records
            self.queued_results += results
            self._unread_bytes += size
            full = self._unread_bytes >= self.max_bytes
        if full:
            self._wake.set()

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything (the last batch is marked ``final``) and stop.

        While the broker is unreachable the thread keeps retrying; after
        ``timeout`` seconds close gives up: what is still unpublished is
        dropped, counted (``dropped_records``/``dropped_results``) and logged.
        """
        self._queue.put(_STOP)
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            # a publish attempt in flight ends within its own timeouts; do not wait for it
            self._thread.join(1.0)
        with self._count_lock:
            lost_records = self.queued_records - self.published_records - self.dropped_records
            lost_results = self.queued_results - self.published_results - self.dropped_results
            if lost_records > 0:
                self.dropped_records += lost_records
                self.failures += 1
            if lost_results > 0:
                self.dropped_results += lost_results
                self.failures += lost_results
            records, results = self.dropped_records, self.dropped_results
        if records or results:
            log.warning(
                "sub-job %s.%s (job %s): %d log record(s) and %d result(s) not published",
                self.subjob,
                self.node,
                self.job,
                records,
                results,
            )

    # --- the publishing thread ---
    def _run(self) -> None:
        try:
            self._loop()
        except _Abandoned:
            log.warning(
                "publisher of %s.%s: closed while the broker was unreachable", self.job, self.node
            )
        finally:
            self._drop_broker()

    def _loop(self) -> None:
        # the batch's records as JSON lines (each ends with a newline)
        pending: list[str] = []
        count = 0
        size = 0
        first_at = 0.0
        while True:
            items: list[Any] = []
            if pending:
                # until the batch is due (or a result, close() or a full batch wakes us)
                self._wake.wait(max(0.0, first_at + self.interval - time.monotonic()))
            else:
                items.append(self._queue.get())
            # cleared before the queue is read: a wake-up set after this finds its item
            self._wake.clear()
            with self._count_lock:
                self._unread_bytes = 0
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item is _STOP:
                    self._send_logs(pending, count, final=True)
                    return
                kind, body = item
                if kind == "result":
                    self._send_result(body)
                    continue
                if not pending:
                    first_at = time.monotonic()
                text, n = body if kind == "json" else (_encode_records(body), len(body))
                pending.append(text)
                count += n
                size += len(text)
                if size >= self.max_bytes:
                    self._send_logs(pending, count, final=False)
                    pending = []
                    count = size = 0
            if pending and time.monotonic() - first_at >= self.interval:
                self._send_logs(pending, count, final=False)
                pending = []
                count = size = 0

    # --- publishing, retried while the broker is unreachable ---
    def _drop_broker(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.close()

    def _is_outage(self, exc: LavamqError, broker: Broker) -> bool:
        """Whether ``exc`` says the broker could not be reached (retry), not that it
        refused the message (unroutable, access refused on the exchange: drop)."""
        conn = broker.connection
        errors = (
            OSError,
            OperationalError,
            *conn.connection_errors,
            *conn.recoverable_connection_errors,
        )
        return isinstance(exc.__cause__, errors)

    def _deliver(self, what: str, publish: Callable[[Broker, str], None]) -> bool:
        """Publish one message, retrying (with one message id) while the broker is
        unreachable; False when the broker refused it. Raises _Abandoned when close()
        gave up."""
        self._messages += 1
        message_id = f"{self._id_prefix}{self._messages:012x}"
        attempt = 0
        while True:
            if self._abandon.is_set():
                raise _Abandoned
            if self._broker is None:
                # no retries inside: this loop retries, and close() can stop it
                self._broker = Broker(
                    self.broker_url, max_retries=0, connect_timeout=self.connect_timeout
                )
            broker = self._broker
            try:
                publish(broker, message_id)
                if attempt:
                    log.warning(
                        "%s of %s.%s published after %d retries", what, self.job, self.node, attempt
                    )
                return True
            except LavamqError as exc:
                if not self._is_outage(exc, broker):
                    log.warning("%s of %s.%s not published: %s", what, self.job, self.node, exc)
                    return False
                self._drop_broker()
                attempt += 1
                self.retries += 1
                if attempt == 1 or attempt % 50 == 0:
                    log.warning(
                        "%s of %s.%s: broker unreachable (%s); retrying (attempt %d)",
                        what,
                        self.job,
                        self.node,
                        exc,
                        attempt,
                    )
            if self._abandon.wait(min(0.1 * 2 ** min(attempt, 10), self.retry_interval)):
                raise _Abandoned

    def _send_logs(self, pending: list[str], count: int, *, final: bool) -> None:
        if not count and not final:
            return
        if final and (self.dropped_records or self.dropped_results):
            # what the broker refused is named in the sub-job's published log too
            note = {
                "time": now_iso(),
                "level": "warning",
                "message": dropped_note(self.dropped_records, self.dropped_results),
            }
            pending = [*pending, json.dumps(note, ensure_ascii=False) + "\n"]
        body = {
            "job": self.job,
            "subjob": self.subjob,
            "node": self.node,
            "seq": self.seq,
            "records": [],
            "final": final,
        }
        payload = batch_payload(body, pending, self._batch_schema)

        def publish(broker: Broker, message_id: str) -> None:
            broker.publish_raw(
                topology.LOGS_EXCHANGE_NAME,
                self._log_key,
                payload,
                message_type=LogBatchSchema.message_type,
                message_id=message_id,
            )

        sent = self._deliver(f"log batch {self.seq}", publish)
        with self._count_lock:
            if sent:
                self.published_records += count
            else:
                self.failures += 1
                self.dropped_records += count
        self.seq += 1

    def _send_result(self, body: dict[str, Any]) -> None:
        def publish(broker: Broker, message_id: str) -> None:
            broker.publish(
                topology.RESULTS_EXCHANGE_NAME,
                self._result_key,
                TestResultSchema(),
                body,
                message_id=message_id,
            )

        sent = self._deliver(f"result {body.get('case')}", publish)
        with self._count_lock:
            if sent:
                self.published_results += 1
            else:
                self.failures += 1
                self.dropped_results += 1
