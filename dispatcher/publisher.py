"""What one sub-job publishes: its job log's batches and its test results.

Job log records are batched (what was queued in the last ``interval``
seconds, or ``max_bytes`` of messages, whichever comes first) into
``log-batch`` messages on ``lava.logs`` (routing key ``<job>.<node>``); test
results go out one by one on ``lava.results``. Everything else in the
sub-job (the console reader, the bridge, the actions) only puts items on a
local queue: console I/O never waits on the broker. The publishing itself
is done by the process's :class:`~dispatcher.publish_hub.PublishHub` for
the broker URL: one thread and one connection for every sub-job, whose
messages are confirmed together (no kombu connection is shared between
threads: only the hub's thread uses its connection).

A broker outage does not lose anything: the hub retries what it was sending
for as long as the broker is unreachable (back-off up to ``retry_interval``;
every retry of one message carries the same ``message_id``), and everything
queued behind it waits in order. Only :meth:`SubJobPublisher.close` gives up,
when its deadline passes: what is still unpublished then (and any message
the broker refused for good) is counted in
``dropped_records``/``dropped_results`` and logged; the runner names the
counts in the job log and in the sub-job's final state.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import uuid
from typing import Any

from broker_config import topology
from broker_config.broker import Outgoing
from dispatcher.joblog import now_iso
from dispatcher.publish_hub import Pending, hub_for
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


class BatchEnvelope:
    """One sub-job's ``log-batch`` envelope, validated by the schema once.

    Only ``seq`` (the publisher's own counter, an int from 0) and ``final`` (a
    bool) change from batch to batch, and neither needs the schema: they are
    written into the validated envelope's bytes. Validating and encoding the
    envelope for every batch was a quarter of a 64-board dispatcher's CPU.
    :meth:`payload` gives the bytes :func:`batch_payload` gives.
    """

    _SEQ = b'"seq": 0'
    _TAIL = b', "records": [], "final": false}'

    def __init__(self, job: str, subjob: str, node: str, schema: LogBatchSchema) -> None:
        self._body = {"job": job, "subjob": subjob, "node": node, "records": []}
        self._schema = schema
        head = encode(schema, {**self._body, "seq": 0, "final": False})
        at = head.find(self._SEQ)
        #: None when the schema writes another layout: then every batch is encoded
        self._prefix = head[:at] if at >= 0 and head[at + len(self._SEQ) :] == self._TAIL else None

    def payload(self, seq: int, final: bool, json_lines: list[str]) -> bytes:
        """The ``log-batch`` message of batch ``seq`` holding ``json_lines``."""
        if self._prefix is None or seq < 0:
            return batch_payload(
                {**self._body, "seq": seq, "final": final}, json_lines, self._schema
            )
        text = "".join(json_lines)
        inner = text[:-1].replace("\n", ", ").encode("utf-8") if text else b""
        end = b'], "final": true}' if final else b'], "final": false}'
        return b"".join((self._prefix, b'"seq": %d, "records": [' % seq, inner, end))


class SubJobPublisher:
    """Queues one sub-job's log batches and results; the process's hub publishes them."""

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
        #: set when close() gave up: the hub drops what is left, nothing more is counted
        self._abandon = threading.Event()
        #: set once the final batch is confirmed (or dropped)
        self._done = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue()
        #: log bytes queued since the hub last collected (guarded by _count_lock)
        self._unread_bytes = 0
        #: the hub thread's own: one schema instance, and message ids made of
        #: one random prefix and a counter (unique, and cheaper than a uuid4 each)
        self._batch_schema = LogBatchSchema()
        self._envelope = BatchEnvelope(job, subjob, node, self._batch_schema)
        self._id_prefix = uuid.uuid4().hex[:20]
        self._messages = 0
        self._hub = hub_for(broker_url, connect_timeout)
        self._log_key = topology.log_routing_key(job, node)
        self._result_key = topology.result_routing_key(job, node)

    def start(self) -> SubJobPublisher:
        """Start publishing (by the process's hub for the broker URL)."""
        self._hub.add(self)
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
        self._hub.wake.set()

    def _count(self, *, records: int = 0, results: int = 0, size: int = 0) -> None:
        with self._count_lock:
            self.queued_records += records
            self.queued_results += results
            self._unread_bytes += size
            full = self._unread_bytes >= self.max_bytes
        if full:
            self._hub.wake.set()

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything (the last batch is marked ``final``) and stop.

        While the broker is unreachable the hub keeps retrying; after
        ``timeout`` seconds close gives up: what is still unpublished is
        dropped, counted (``dropped_records``/``dropped_results``) and logged.
        """
        self._queue.put(_STOP)
        self._hub.wake.set()
        gave_up = not self._done.wait(timeout)
        if gave_up:
            log.warning(
                "publisher of %s.%s: closed while the broker was unreachable", self.job, self.node
            )
        with self._count_lock:
            # from here on the hub counts nothing for this publisher
            self._abandon.set()
            lost_records = self.queued_records - self.published_records - self.dropped_records
            lost_results = self.queued_results - self.published_results - self.dropped_results
            if lost_records > 0:
                self.dropped_records += lost_records
                self.failures += 1
            if lost_results > 0:
                self.dropped_results += lost_results
                self.failures += lost_results
            records, results = self.dropped_records, self.dropped_results
        self._hub.remove(self)
        if gave_up:
            self._hub.interrupt.set()  # a retry in progress looks again at once
        if records or results:
            log.warning(
                "sub-job %s.%s (job %s): %d log record(s) and %d result(s) not published",
                self.subjob,
                self.node,
                self.job,
                records,
                results,
            )

    # --- called by the hub's thread ---
    def abandoned(self, item: Pending) -> bool:
        """Whether close() gave up (the hub then drops ``item``)."""
        return self._abandon.is_set()

    def done(self, item: Pending, *, sent: bool) -> None:
        """``item`` was confirmed by the broker (``sent``) or refused."""
        with self._count_lock:
            if self._abandon.is_set():
                return  # close() counted it already
            if sent:
                self.published_records += item.records
                self.published_results += item.results
            else:
                self.failures += 1
                self.dropped_records += item.records
                self.dropped_results += item.results
        if item.last:
            self._hub.remove(self)
            self._done.set()

    def collect(self) -> list[Pending]:
        """Everything queued since the last call, as messages in the order queued:
        the log lines as batches (of at most about ``max_bytes``), the results,
        and after close() the ``final`` batch."""
        with self._count_lock:
            self._unread_bytes = 0
        out: list[Pending] = []
        # the batch's records as JSON lines (each ends with a newline)
        pending: list[str] = []
        count = size = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                out.append(self._log_batch(pending, count, final=True))
                return out
            kind, body = item
            if kind == "result":
                if count:
                    out.append(self._log_batch(pending, count, final=False))
                    pending, count, size = [], 0, 0
                out.append(self._result(body))
                continue
            text, n = body if kind == "json" else (_encode_records(body), len(body))
            pending.append(text)
            count += n
            size += len(text)
            if size >= self.max_bytes:
                out.append(self._log_batch(pending, count, final=False))
                pending, count, size = [], 0, 0
        if count:
            out.append(self._log_batch(pending, count, final=False))
        return out

    def _message_id(self) -> str:
        self._messages += 1
        return f"{self._id_prefix}{self._messages:012x}"

    def _log_batch(self, pending: list[str], count: int, *, final: bool) -> Pending:
        if final and (self.dropped_records or self.dropped_results):
            # what the broker refused is named in the sub-job's published log too
            note = {
                "time": now_iso(),
                "level": "warning",
                "message": dropped_note(self.dropped_records, self.dropped_results),
            }
            pending = [*pending, json.dumps(note, ensure_ascii=False) + "\n"]
        message = Outgoing(
            topology.LOGS_EXCHANGE_NAME,
            self._log_key,
            self._batch_schema,
            {},
            message_id=self._message_id(),
            payload=self._envelope.payload(self.seq, final, pending),
        )
        what = f"log batch {self.seq} of {self.job}.{self.node}"
        self.seq += 1
        return Pending(self, message, what, records=count, last=final)

    def _result(self, body: dict[str, Any]) -> Pending:
        message = Outgoing(
            topology.RESULTS_EXCHANGE_NAME,
            self._result_key,
            TestResultSchema(),
            body,
            message_id=self._message_id(),
        )
        return Pending(self, message, f"result {body.get('case')} of {self.job}.{self.node}",
                       results=1)  # fmt: skip
