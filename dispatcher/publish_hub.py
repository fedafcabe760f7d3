"""One publishing thread and broker connection per dispatcher process (per broker URL).

Every sub-job's :class:`~dispatcher.publisher.SubJobPublisher` only queues
what it has to send; the hub's thread collects every publisher's log batches
and results once per batch interval (or at once when a result, a full batch
or a close asks for it) and publishes them all with
:meth:`Broker.publish_many`: sent in order on one channel, then confirmed
together. With 64 consoles that is one confirm round trip every 0.1 s instead
of 640 a second on 64 connections.

The guarantees stay the publisher's: a message counts as published only once
the broker confirmed it; each publisher's messages go out in the order they
were queued (one channel, sent in order, a retry sends the same list again
with the same message ids); while the broker is unreachable the whole list is
retried (back-off up to the smallest ``retry_interval`` of the publishers)
and nothing queued is dropped, except what a publisher whose ``close()``
gave up still had; a list the broker refuses is sent again one by one, so
only the refused message is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from kombu.exceptions import OperationalError

from broker_config.broker import Broker, Outgoing
from schemas.errors import LavamqError


class SubJobPublisher(Protocol):
    """What the hub needs of a sub-job's publisher (``dispatcher.publisher``, which
    imports this module: a protocol here keeps the import graph one way)."""

    job: str
    node: str
    retries: int
    retry_interval: float
    interval: float

    def collect(self) -> list[Pending]:
        """The publisher's queued messages, taken now."""

    def abandoned(self, item: Pending) -> bool:
        """True once the publisher gave up on ``item``."""

    def done(self, item: Pending, *, sent: bool) -> None:
        """``item`` was confirmed by the broker (``sent``) or dropped."""


log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One message a publisher handed to the hub, and what to count when it is done."""

    publisher: SubJobPublisher
    message: Outgoing
    what: str
    records: int = 0
    results: int = 0
    #: the publisher's last message (its ``final`` batch): it is done after this
    last: bool = False


class PublishHub:
    """The thread and connection that publish for every sub-job of one broker URL."""

    def __init__(self, broker_url: str, connect_timeout: float) -> None:
        self.broker_url = broker_url
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._publishers: list[SubJobPublisher] = []
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None
        #: set to collect before the next tick (a result, a full batch, close())
        self.wake = threading.Event()
        #: set when a publisher's close() gave up: stop waiting between retries
        self.interrupt = threading.Event()

    def add(self, publisher: SubJobPublisher) -> None:
        """Publish for ``publisher`` from now on (starts the thread if it is not running)."""
        with self._lock:
            self._publishers.append(publisher)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"publisher-{self.broker_url}", daemon=True
                )
                self._thread.start()

    def remove(self, publisher: SubJobPublisher) -> None:
        """Stop publishing for ``publisher`` (done, or its close() gave up)."""
        with self._lock:
            if publisher in self._publishers:
                self._publishers.remove(publisher)

    # --- the thread ---
    def _run(self) -> None:
        last = time.monotonic()
        while True:
            with self._lock:
                publishers = list(self._publishers)
                if not publishers:
                    self._thread = None
                    broker, self._broker = self._broker, None
                    break
            interval = min(p.interval for p in publishers)
            self.wake.wait(max(0.0, last + interval - time.monotonic()))
            # cleared before the queues are read: a wake-up set after this finds its item
            self.wake.clear()
            last = time.monotonic()
            out: list[Pending] = []
            for publisher in publishers:
                try:
                    out.extend(publisher.collect())
                except Exception:
                    # one sub-job's fault must not stop the others' publishing
                    log.exception("publisher of %s.%s failed", publisher.job, publisher.node)
            if out:
                self._send(out)
        if broker is not None:
            broker.close()

    def _send(self, out: list[Pending]) -> None:
        if not self._publish(out, alone=len(out) == 1):
            # refused as a whole: one by one, to drop only the refused message
            for item in out:
                self._publish([item], alone=True)

    def _drop_broker(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.close()

    @staticmethod
    def _is_outage(exc: LavamqError, broker: Broker) -> bool:
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

    def _publish(self, out: list[Pending], *, alone: bool) -> bool:
        """Publish ``out`` confirmed together, retrying while the broker is unreachable.

        False when the broker refused the list and ``alone`` is not set (the
        caller sends them one by one); with ``alone`` a refusal drops them.
        """
        attempt = 0
        while True:
            out = [item for item in out if not item.publisher.abandoned(item)]
            if not out:
                return True
            if self._broker is None:
                # no retries inside: this loop retries, and close() can stop it
                self._broker = Broker(
                    self.broker_url, max_retries=0, connect_timeout=self.connect_timeout
                )
            broker = self._broker
            try:
                returned = broker.publish_many([item.message for item in out])
            except LavamqError as exc:
                if not self._is_outage(exc, broker):
                    if not alone:
                        return False
                    for item in out:
                        log.warning("%s not published: %s", item.what, exc)
                        item.publisher.done(item, sent=False)
                    return True
                self._drop_broker()
                attempt += 1
                for publisher in {id(item.publisher): item.publisher for item in out}.values():
                    publisher.retries += 1
                if attempt == 1 or attempt % 50 == 0:
                    log.warning(
                        "%s and %d more: broker unreachable (%s); retrying (attempt %d)",
                        out[0].what,
                        len(out) - 1,
                        exc,
                        attempt,
                    )
                retry = min(item.publisher.retry_interval for item in out)
                self.interrupt.wait(min(0.1 * 2 ** min(attempt, 10), retry))
                self.interrupt.clear()
                continue
            if attempt:
                log.warning("%s and %d more published after %d retries",
                            out[0].what, len(out) - 1, attempt)  # fmt: skip
            for item in out:
                sent = item.message.message_id not in returned
                if not sent:
                    log.warning("%s not published: unroutable", item.what)
                item.publisher.done(item, sent=sent)
            return True


_hubs: dict[tuple[str, float], PublishHub] = {}
_hubs_lock = threading.Lock()


def hub_for(broker_url: str, connect_timeout: float) -> PublishHub:
    """The process's hub for ``broker_url`` (made on first use)."""
    with _hubs_lock:
        hub = _hubs.get((broker_url, connect_timeout))
        if hub is None:
            hub = _hubs[(broker_url, connect_timeout)] = PublishHub(broker_url, connect_timeout)
        return hub
