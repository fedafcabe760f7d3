"""One thread per sub-job that owns a broker connection and publishes for it.

Job log records are batched (every ``interval`` seconds or ``max_bytes`` of
messages, whichever comes first) into ``log-batch`` messages on ``lava.logs``
(routing key ``<job>.<node>``); test results go out one by one on
``lava.results``. Everything else in the sub-job (the console reader, the
bridge, the actions) only puts items on a local queue: no kombu connection
is ever shared between threads, and console I/O never waits on the broker.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

from broker_config import topology
from broker_config.messaging import Broker
from schemas.errors import LavamqError
from schemas.messages.base import encode
from schemas.messages.console import LogBatchSchema, TestResultSchema

log = logging.getLogger(__name__)

_STOP = object()
#: what a ``log-batch`` record may hold; other keys of a job log record stay local
_RECORD_FIELDS = ("time", "level", "message", "action")
_RECORD_KEYS = frozenset(_RECORD_FIELDS)


def _encode_records(records: list[dict[str, Any]]) -> str:
    """Records as JSON lines holding only the ``log-batch`` record keys."""
    out = []
    for rec in records:
        if not rec.keys() <= _RECORD_KEYS:
            rec = {k: rec[k] for k in _RECORD_FIELDS if k in rec}
        out.append(json.dumps(rec, ensure_ascii=False) + "\n")
    return "".join(out)


def batch_payload(body: dict[str, Any], json_lines: list[str]) -> bytes:
    """The ``log-batch`` message for ``body`` (its ``records`` empty) holding the
    records given as JSON lines, without decoding and encoding them again.

    The envelope is validated by the schema; the records are spliced in as
    they are (one JSON object per line, no raw newline inside one), which
    gives the same message as encoding the records in ``body``.
    """
    head = encode(LogBatchSchema(), body)
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
    ) -> None:
        self.broker_url = broker_url
        self.job = job
        self.subjob = subjob
        self.node = node
        self.interval = interval
        self.max_bytes = max_bytes
        self.seq = 0
        self.published_records = 0
        self.published_results = 0
        self.failures = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(
            target=self._run, name=f"publisher-{job}.{node}", daemon=True
        )
        self._log_key = topology.log_routing_key(job, node)
        self._result_key = topology.result_routing_key(job, node)

    def start(self) -> SubJobPublisher:
        self._thread.start()
        return self

    # --- producers (any thread) ---
    def log_record(self, record: dict[str, Any]) -> None:
        """A job log record listener (``JobLog.add_listener``)."""
        self._queue.put(("logs", [record]))

    def log_records(self, records: list[dict[str, Any]]) -> None:
        """A job log batch listener (``JobLog.add_batch_listener``): one queue item
        for a whole chunk of console lines."""
        self._queue.put(("logs", records))

    def log_json(self, text: str, count: int) -> None:
        """A job log JSON listener (``JobLog.add_json_listener``): ``count``
        records already encoded as JSON lines holding only the ``log-batch``
        record keys; they are sent as they are, not encoded again."""
        self._queue.put(("json", (text, count)))

    def result(self, body: dict[str, Any]) -> None:
        self._queue.put(("result", body))

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything (the last batch is marked ``final``) and stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # --- the publishing thread ---
    def _run(self) -> None:
        broker = Broker(self.broker_url)
        # the batch's records as JSON lines (each ends with a newline)
        pending: list[str] = []
        count = 0
        size = 0
        first_at = 0.0
        try:
            while True:
                timeout = None
                if pending:
                    timeout = max(0.0, first_at + self.interval - time.monotonic())
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    self._send_logs(broker, pending, count, final=True)
                    return
                if item is not None:
                    kind, body = item
                    if kind == "result":
                        self._send_result(broker, body)
                    else:
                        if not pending:
                            first_at = time.monotonic()
                        if kind == "json":
                            text, n = body
                        else:
                            text, n = _encode_records(body), len(body)
                        pending.append(text)
                        count += n
                        size += len(text)
                if pending and (
                    size >= self.max_bytes or time.monotonic() - first_at >= self.interval
                ):
                    self._send_logs(broker, pending, count, final=False)
                    pending = []
                    count = size = 0
        finally:
            broker.close()

    def _send_logs(self, broker: Broker, pending: list[str], count: int, *, final: bool) -> None:
        if not count and not final:
            return
        body = {
            "job": self.job,
            "subjob": self.subjob,
            "node": self.node,
            "seq": self.seq,
            "records": [],
            "final": final,
        }
        try:
            broker.publish_raw(
                topology.LOGS_EXCHANGE_NAME,
                self._log_key,
                batch_payload(body, pending),
                message_type=LogBatchSchema.message_type,
            )
        except LavamqError as exc:
            self.failures += 1
            log.warning(
                "log batch %d of %s.%s not published: %s", self.seq, self.job, self.node, exc
            )
        else:
            self.published_records += count
        self.seq += 1

    def _send_result(self, broker: Broker, body: dict[str, Any]) -> None:
        try:
            broker.publish(
                topology.RESULTS_EXCHANGE_NAME, self._result_key, TestResultSchema(), body
            )
        except LavamqError as exc:
            self.failures += 1
            log.warning(
                "result %s of %s.%s not published: %s", body.get("case"), self.job, self.node, exc
            )
        else:
            self.published_results += 1
