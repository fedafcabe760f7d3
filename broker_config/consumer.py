"""``QueueConsumer``: consume queues, validate every body, hand it on, ack after the handler.

Each delivery is decoded with the schema named by its AMQP ``type`` and
handed to a handler; the message is acked after the handler returns (what
happens to bad bodies, failing handlers and copies: ``handling.py``).
Deliveries are queued by the kombu callback and handled outside
``drain_events``, so a handler may publish on the same connection without
being re-entered. A lost connection is re-opened and every queue consumed
again. A consumed queue that no longer exists (deleted while consumed, or
given to ``add_queue``) is dropped from the consumer's list with a warning;
the others go on. ``add_queue``/``remove_queue`` from other threads are
applied by the consuming thread.

One ``QueueConsumer`` per thread: kombu connections are not thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Consumer, Queue
from kombu.message import Message

from broker_config import cluster
from broker_config.broker import Broker, connection_for, is_amqp_url
from broker_config.errors import NotFound, is_broker_failure, is_not_found
from broker_config.handling import (
    TRANSIENT_BACKOFF_MAX,
    BatchHandler,
    Delivery,
    DeliveryHandling,
    Handler,
    TransientError,
)
from schemas.errors import InfrastructureError, LavamqError
from schemas.messages.base import MessageSchema

log = logging.getLogger(__name__)

__all__ = [
    "TRANSIENT_BACKOFF_MAX",
    "BatchHandler",
    "Delivery",
    "Handler",
    "QueueConsumer",
    "QueueNotFound",
    "TransientError",
    "classify_thread_error",
    "run_in_thread",
]


class QueueNotFound(NotFound):
    """``add_queue`` named a queue that does not exist (it is not consumed)."""


class _Stopping(Exception):
    """Internal: ``stop()`` was called while the consumer was reconnecting."""


class _MissingQueue(Exception):
    """Internal: ``add_queue`` named a queue that does not exist (already dropped)."""


@dataclass
class _QueueChange:
    """An ``add_queue`` / ``remove_queue`` asked for, applied by the consuming thread."""

    add: bool
    queue: Queue
    done: threading.Event
    #: set when the change could not be made (the queue does not exist)
    error: str = ""


class QueueConsumer(DeliveryHandling):
    """Consume queues, validate every body, hand it on, ack after the handler.

    ``gather_wait``: how long a batch handler's batch waits for one more
    delivery (a burst's messages come within a fraction of a millisecond of
    each other; the wait is paid once more after the last of them), and
    ``gather_max`` how long it gathers at most: while deliveries keep coming
    (many groups at once), a batch is handled every few milliseconds rather
    than once the stream pauses, which made the first arrivals wait for the
    whole burst.

    ``schemas`` maps AMQP ``type`` → schema (a single schema accepts any
    type). Give ``handler`` (one delivery at a time) or ``batch_handler``
    (every delivery that arrived together, up to ``prefetch``: one store
    transaction for many messages). ``run()`` blocks until ``stop()``;
    ``on_ready`` is called once consuming has started.
    """

    def __init__(
        self,
        url: str,
        queues: Iterable[Queue],
        schemas: Mapping[str, MessageSchema] | MessageSchema,
        *,
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        prefetch: int = 1,
        max_requeues: int = 3,
        declare: bool = True,
        idle_callback: Callable[[], None] | None = None,
        poll_interval: float = 0.5,
        max_retries: int | None = None,
        authorize: Callable[[Delivery], None] | None = None,
        remember: int = 100_000,
        on_consume: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            url,
            schemas,
            handler=handler,
            batch_handler=batch_handler,
            max_requeues=max_requeues,
            authorize=authorize,
            remember=remember,
        )
        #: durable queues consumed as quorum queues (a cluster, ``cluster.py``)
        self.quorum = is_amqp_url(url) and cluster.quorum_queues(url)
        self.queues = [cluster.for_broker(q, self.quorum) for q in queues]
        self.prefetch = prefetch
        self.declare = declare
        self.idle_callback = idle_callback
        self.poll_interval = poll_interval
        self.max_retries = max_retries
        self._ready = threading.Event()
        self.gather_wait = 0.0002
        self.gather_max = 0.002
        self._pending: list[Message] = []
        self.connection: Connection | None = None
        #: called each time consuming (re)starts, before ``on_ready``: a
        #: reconnect may follow another consumer's turn (single active consumer)
        self.on_consume = on_consume
        #: queue changes asked for by other threads, applied by the consuming
        #: thread (a kombu channel is not thread-safe)
        self._changes: list[_QueueChange] = []
        self._changes_lock = threading.Lock()
        self._consuming_thread: threading.Thread | None = None
        #: consuming started since the last lost connection (resets the back-off)
        self._consuming = False

    # --- control ---

    def stop(self) -> None:
        """Ask the consumer loop to end (``run`` returns)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the broker consumes every queue (False on timeout)."""
        return self._ready.wait(timeout)

    def add_queue(self, queue: Queue, timeout: float = 30.0) -> None:
        """Start consuming ``queue`` too; returns once the broker consumes it.

        Raises ``InfrastructureError`` naming the queue if it does not exist (it
        is then not consumed: a consumer with ``declare=False`` never creates it).
        Called from a handler, it returns at once and is applied after it.
        """
        self._change(True, queue, timeout)

    def remove_queue(self, name: str, timeout: float = 30.0) -> None:
        """Stop consuming the queue ``name`` (deliveries already received are still handled)."""
        self._change(False, Queue(name), timeout)

    def _change(self, add: bool, queue: Queue, timeout: float) -> None:
        change = _QueueChange(add, cluster.for_broker(queue, self.quorum), threading.Event())
        with self._changes_lock:
            self._changes.append(change)
        if threading.current_thread() is self._consuming_thread:
            return  # from a handler: applied when the handler returns
        # the consuming thread applies it within one poll interval
        deadline = time.monotonic() + timeout
        while not change.done.wait(0.05):
            if self._stop.is_set():
                return  # stopping: nothing is consumed any more
            if time.monotonic() > deadline:
                what = "consume" if add else "cancel"
                raise InfrastructureError(
                    f"consumer: could not {what} queue {queue.name} in {timeout} s"
                )
        if change.error:
            raise QueueNotFound(f"consumer: {change.error}")

    def _apply_changes(self, consumer: Consumer | None, channel: Any) -> None:
        """Apply queue changes (consuming thread only); every change updates ``queues``.

        ``queues`` is what a reconnect consumes, so a change whose broker call
        fails (a dying connection) is done all the same: its caller is told at
        once and the reconnect applies it. An added queue that does not exist
        is dropped and its caller told so.
        """
        with self._changes_lock:
            changes, self._changes = self._changes, []
        for i, change in enumerate(changes):
            queue = change.queue
            try:
                names = [q.name for q in self.queues]
                if change.add and queue.name not in names:
                    self.queues.append(queue)
                    if consumer is not None:
                        consumer.add_queue(queue.bind(channel))
                        consumer.consume()
                elif not change.add and queue.name in names:
                    self.queues = [q for q in self.queues if q.name != queue.name]
                    if consumer is not None:
                        consumer.cancel_by_queue(queue.name)
            except Exception as exc:
                with self._changes_lock:  # the rest: applied once consuming again
                    self._changes[:0] = changes[i + 1 :]
                if change.add and is_not_found(exc):
                    self.queues = [q for q in self.queues if q.name != queue.name]
                    change.error = f"queue {queue.name} does not exist"
                    log.warning("consumer: not consuming queue %s: it does not exist", queue.name)
                    raise _MissingQueue(queue.name) from exc
                raise
            finally:
                change.done.set()

    def _drop_missing_queues(self) -> list[str]:
        """After a 404: stop consuming every queue of ours that no longer exists."""
        assert self.connection is not None
        missing: list[str] = []
        channel: Any = None
        try:
            for queue in list(self.queues):
                if channel is None:
                    channel = self.connection.channel()
                try:
                    channel.queue_declare(queue=queue.name, passive=True)
                except self.connection.channel_errors as exc:
                    if not is_not_found(exc):
                        raise
                    missing.append(queue.name)
                    channel = None  # the broker closed it
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):
                    channel.close()
        if missing:
            log.warning("consumer: queues %s do not exist any more: not consuming them", missing)
            self.queues = [q for q in self.queues if q.name not in missing]
        return missing

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Consume until ``stop()``; reconnect after a lost connection."""
        failures = 0
        while not self._stop.is_set():
            try:
                self._consume(on_ready)
                return
            except InfrastructureError:
                raise
            except _Stopping:
                return  # stop() while reconnecting
            except _MissingQueue:
                continue  # dropped already: consume the others again at once
            except Exception as exc:
                if is_not_found(exc) and self._dropped_missing_queues():
                    continue  # consume the others again at once
                conn = self.connection
                recoverable: tuple[type[BaseException], ...] = (
                    (*tuple(conn.recoverable_connection_errors), OSError) if conn else (OSError,)
                )
                # a 404 not explained by a missing queue (re-created meanwhile?
                # the check failed?) or the broker's own failure (541): try
                # again like after a lost connection
                if not (
                    isinstance(exc, recoverable) or is_not_found(exc) or is_broker_failure(exc)
                ):
                    raise
                if self._consuming:
                    # it was consuming: a new outage, not the same one going on
                    failures, self._consuming = 0, False
                failures += 1
                if self.max_retries is not None and failures > self.max_retries:
                    raise InfrastructureError(
                        f"consumer of {[q.name for q in self.queues]}: connection lost "
                        f"{failures} times in a row: {exc}"
                    ) from exc
                log.warning("consumer connection lost (%s); reconnecting", exc)
                self._stop.wait(min(0.2 * failures, 3.0))
            finally:
                self._close()

    def _raise_if_stopping(self) -> None:
        if self._stop.is_set():
            raise _Stopping

    def _dropped_missing_queues(self) -> bool:
        """Drop the missing queues (a 404); False if none is (or the check failed)."""
        try:
            return bool(self._drop_missing_queues())
        except Exception as exc:
            log.warning("consumer: could not check which queue is missing: %s", exc)
            return False

    def _close(self) -> None:
        self._pending.clear()
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.release()
            self.connection = None

    def _consume(self, on_ready: Callable[[], None] | None) -> None:
        self.connection = connection_for(self.url)
        # kombu's retry loop calls this about every second: stop() ends it
        self.connection.ensure_connection(
            max_retries=self.max_retries, callback=self._raise_if_stopping
        )
        self.publisher = Broker(self.url)
        # the dead-letter publisher shares nothing with the consuming connection
        channel = self.connection.channel()
        self._consuming_thread = threading.current_thread()
        # changes asked for while (re)connecting: the queue list below includes them
        self._apply_changes(None, channel)
        queues = [q.bind(channel) for q in self.queues]
        if self.declare:
            for q in queues:
                q.declare()
        consumer = Consumer(
            channel,
            queues=queues,
            on_message=self._pending.append,
            prefetch_count=self.prefetch,
            no_ack=False,
            # kombu declares every queue (and its exchange) by default: a
            # confined user (no configure permission) must only consume
            auto_declare=self.declare,
            on_decode_error=self._on_decode_error,
        )
        with consumer:
            if self.on_consume is not None:
                self.on_consume()
            self._consuming = True
            if not self._ready.is_set():
                self._ready.set()
                if on_ready is not None:
                    on_ready()
            while not self._stop.is_set():
                if self._changes:
                    self._apply_changes(consumer, channel)
                try:
                    self.connection.drain_events(timeout=self.poll_interval)
                except TimeoutError:
                    # deliveries taken while kombu waited for something else (the
                    # consume-ok of the next queue at a (re)connect) are handled
                    # now: left waiting, a full prefetch window never refills
                    if not self._pending:
                        if self.idle_callback is not None:
                            self.idle_callback()
                        continue
                if self.batch_handler is not None:
                    self._dispatch(self._gather_batch())
                else:
                    batch, self._pending[:] = list(self._pending), []
                    self._handle(batch)
                if self.idle_callback is not None:
                    self.idle_callback()

    def _gather_batch(self) -> list[Delivery]:
        """For a batch handler: what is here and what else is already coming (one store
        transaction for many), up to ``prefetch`` or ``gather_max`` s, decoded as it comes in.

        Each delivery is decoded and authorized while the next ones are awaited:
        a burst's last arrival (a barrier's last node) then finds the others
        ready, and only its own decoding stands between it and the handler.
        """
        assert self.connection is not None
        in_batch: set[tuple[str, str, str]] = set()
        deliveries: list[Delivery] = []
        taken = 0
        deadline = time.monotonic() + self.gather_max
        while True:
            ready, self._pending[:] = list(self._pending), []
            taken += len(ready)
            deliveries += self._prepare(ready, in_batch)
            if taken >= self.prefetch or time.monotonic() >= deadline:
                return deliveries
            try:
                self.connection.drain_events(timeout=self.gather_wait)
            except TimeoutError:
                ready, self._pending[:] = list(self._pending), []
                return deliveries + self._prepare(ready, in_batch)


def run_in_thread(consumer: QueueConsumer, name: str, timeout: float = 30.0) -> threading.Thread:
    """Start ``consumer.run()`` in a daemon thread and wait until it consumes."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run()
        except BaseException as exc:
            errors.append(exc)
            consumer._ready.set()
            log.exception("consumer thread %s died", name)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    if not consumer.wait_ready(timeout):
        raise InfrastructureError(f"{name}: consumer not ready after {timeout} s")
    if errors:
        raise classify_thread_error(name, errors[0])
    return thread


def classify_thread_error(name: str, exc: BaseException) -> LavamqError:
    """A consumer thread's start-up failure as a lavamq error its caller can report."""
    if isinstance(exc, LavamqError):
        return exc
    return InfrastructureError(f"{name}: consumer failed to start: {exc}")
