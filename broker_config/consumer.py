"""``QueueConsumer``: consume queues, validate every body, hand it on, ack after the handler.

Consuming (``QueueConsumer``): each delivery is decoded with the schema named
by its AMQP ``type`` and handed to a handler; the message is acked after the
handler returns. A body that does not decode, or a type nobody expects, is
*republished* to ``lava.dead`` with the reason in the ``x-lavamq-reject-reason``
header and then acked: RabbitMQ's own dead-lettering (reject without requeue,
via the queues' ``x-dead-letter-exchange``) cannot add a header, and the reason
is what an admin needs. Handlers raising ``InfrastructureError`` get the
message requeued (up to ``max_requeues`` times, then dead-lettered); a
``TransientError`` (something the handler needs is briefly away, e.g. its
database restarting) has the handler called again with the same deliveries
after a back-off, for as long as it takes, and nothing is dead-lettered for
it; any other exception is a bug: dead-lettered with the traceback summary. A delivery
whose ``message_id`` this consumer already handled (a redelivery after a lost
connection, a publish retried after a lost confirm) is acked and dropped; an
``authorize`` callback, given, decides who may send what (``Unauthorized`` →
dead-lettered with the reason). Deliveries are
queued by the kombu callback and handled outside ``drain_events``, so a handler
may publish on the same connection without being re-entered. A consumed queue
that no longer exists (deleted while consumed, or given to ``add_queue``) is
dropped from the consumer's list with a warning; the others go on.

One ``QueueConsumer`` per thread: kombu connections are not thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Consumer, Queue
from kombu.message import Message

from broker_config import topology
from broker_config.broker import Broker, connection_for, is_amqp_url
from broker_config.errors import NotFound, is_not_found
from broker_config.identity import Unauthorized
from schemas.errors import InfrastructureError, LavamqError
from schemas.messages.base import InvalidMessage, MessageSchema, decode

log = logging.getLogger(__name__)

#: the longest wait before a handler that raised ``TransientError`` is called again
TRANSIENT_BACKOFF_MAX = 2.0


class TransientError(InfrastructureError):
    """Something a handler depends on is briefly unavailable (a database
    restarting, a lost connection): not the messages' fault. ``QueueConsumer``
    keeps the deliveries and calls the handler again after a back-off (0.1 s,
    doubling to ``TRANSIENT_BACKOFF_MAX``) until it succeeds or the consumer
    stops; they are never dead-lettered for it."""


class QueueNotFound(NotFound):
    """``add_queue`` named a queue that does not exist (it is not consumed)."""


class _Stopping(Exception):
    """Internal: ``stop()`` was called while the consumer was reconnecting."""


class _MissingQueue(Exception):
    """Internal: ``add_queue`` named a queue that does not exist (already dropped)."""


@dataclass
class Delivery:
    """One decoded message handed to a handler."""

    message_type: str
    body: dict[str, Any]
    message: Message

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.message.headers or {})

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self.message.properties or {})


Handler = Callable[[Delivery], None]
BatchHandler = Callable[[list[Delivery]], None]


@dataclass
class _QueueChange:
    """An ``add_queue`` / ``remove_queue`` asked for, applied by the consuming thread."""

    add: bool
    queue: Queue
    done: threading.Event
    #: set when the change could not be made (the queue does not exist)
    error: str = ""


class QueueConsumer:
    """Consume queues, validate every body, hand it on, ack after the handler.

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
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        self.url = url
        self.queues = list(queues)
        self.schemas = schemas
        self.handler = handler
        self.batch_handler = batch_handler
        self.prefetch = prefetch
        self.max_requeues = max_requeues
        self.declare = declare
        self.idle_callback = idle_callback
        self.poll_interval = poll_interval
        self.max_retries = max_retries
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._pending: list[Message] = []
        self._requeues: dict[str, int] = {}
        self.connection: Connection | None = None
        self.publisher: Broker | None = None
        self.dead_lettered = 0
        #: raises ``Unauthorized`` for a delivery its sender may not send
        self.authorize = authorize
        #: message ids handled (acked) lately, oldest first: redeliveries are dropped
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._remember = remember
        self.duplicates = 0
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
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
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
        change = _QueueChange(add, queue, threading.Event())
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
                # the check failed?): try again like after a lost connection
                if not isinstance(exc, recoverable) and not is_not_found(exc):
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
        )
        consumer.on_decode_error = self._on_decode_error  # type: ignore[assignment]
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
                    if self.idle_callback is not None:
                        self.idle_callback()
                    continue
                # a batch handler: take what else is already here (one store
                # transaction for many); one-by-one handlers go on at once
                while self.batch_handler is not None and len(self._pending) < self.prefetch:
                    try:
                        self.connection.drain_events(timeout=0.0005)
                    except TimeoutError:
                        break
                batch, self._pending[:] = list(self._pending), []
                self._handle(batch)
                if self.idle_callback is not None:
                    self.idle_callback()

    def _on_decode_error(self, message: Message, exc: Exception) -> None:
        # kombu's default acks (drops) the message; dead-letter it instead
        self.dead_letter(message, f"undecodable body: {exc}")

    # --- handling ---

    def _schema_for(self, message_type: str) -> MessageSchema | None:
        if isinstance(self.schemas, MessageSchema):
            return self.schemas
        return self.schemas.get(message_type)

    @staticmethod
    def _seen_key(message: Message) -> tuple[str, str, str] | None:
        message_id = (message.properties or {}).get("message_id")
        if not message_id:
            return None
        info = message.delivery_info or {}
        return (str(info.get("exchange", "")), str(info.get("routing_key", "")), str(message_id))

    def _remember_handled(self, message: Message) -> None:
        key = self._seen_key(message)
        if key is None:
            return
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)

    def _decode(self, message: Message) -> Delivery | None:
        key = self._seen_key(message)
        if key is not None and key in self._seen:
            # handled before: a redelivery or a publish retried after a lost confirm
            self.duplicates += 1
            log.debug("dropping duplicate message %s", key[2])
            message.ack()
            return None
        message_type = str((message.properties or {}).get("type") or "")
        schema = self._schema_for(message_type)
        if schema is None:
            self.dead_letter(message, f"unexpected message type {message_type!r}")
            return None
        try:
            body = decode(schema, message.body)
        except InvalidMessage as exc:
            self.dead_letter(message, f"invalid message: {exc.message}")
            return None
        delivery = Delivery(message_type, body, message)
        if self.authorize is not None:
            try:
                self.authorize(delivery)
            except Unauthorized as exc:
                self.dead_letter(message, f"unauthorized: {exc.message}")
                return None
        return delivery

    def _handle(self, messages: list[Message]) -> None:
        deliveries: list[Delivery] = []
        in_batch: set[tuple[str, str, str]] = set()
        for message in messages:
            key = self._seen_key(message)
            if key is not None and key in in_batch:
                # both copies of a retried publish arrived together
                self.duplicates += 1
                message.ack()
                continue
            if key is not None:
                in_batch.add(key)
            delivery = self._decode(message)
            if delivery is not None:
                deliveries.append(delivery)
        if not deliveries:
            return
        if self.batch_handler is not None:
            self._run_handler(deliveries, lambda: self.batch_handler(deliveries))  # type: ignore[misc]
        else:
            for delivery in deliveries:
                self._run_handler([delivery], lambda d=delivery: self.handler(d))  # type: ignore[misc]

    def _run_handler(self, deliveries: list[Delivery], call: Callable[[], None]) -> None:
        try:
            if not self._call_until_available(call, len(deliveries)):
                return  # stopping: unacked, so the broker delivers them again
        except InfrastructureError as exc:
            for d in deliveries:
                key = self._message_key(d.message)
                count = self._requeues.get(key, 0) + 1
                if count > self.max_requeues:
                    self._requeues.pop(key, None)
                    self.dead_letter(
                        d.message, f"gave up after {self.max_requeues} requeues: {exc.message}"
                    )
                else:
                    self._requeues[key] = count
                    log.warning("requeueing %s (%d): %s", d.message_type, count, exc.message)
                    d.message.requeue()
            return
        except Exception as exc:
            summary = traceback.format_exception_only(type(exc), exc)[-1].strip()
            where = traceback.extract_tb(exc.__traceback__)[-1:]
            place = f" at {where[0].filename}:{where[0].lineno}" if where else ""
            log.exception("handler failed on %s", [d.message_type for d in deliveries])
            kind = "bug" if not isinstance(exc, LavamqError) else exc.error_type
            for d in deliveries:
                self.dead_letter(d.message, f"{kind} in handler: {summary}{place}")
            return
        for d in deliveries:
            self._requeues.pop(self._message_key(d.message), None)
            # remembered before the ack: if the connection dies before the
            # ack reaches the broker, the redelivery is recognised and dropped
            self._remember_handled(d.message)
        self._ack_all([d.message for d in deliveries])

    def _call_until_available(self, call: Callable[[], None], count: int) -> bool:
        """``call()``; after a ``TransientError`` again, with a back-off. False: stopped.

        The deliveries are kept, not requeued: no redelivery count grows (a
        quorum queue may have a delivery limit) and their order stays.
        """
        attempt = 0
        while True:
            try:
                call()
                return True
            except TransientError as exc:
                attempt += 1
                delay = min(0.1 * 2 ** (attempt - 1), TRANSIENT_BACKOFF_MAX)
                log.warning(
                    "handling %d deliveries again in %.1f s (attempt %d): %s",
                    count,
                    delay,
                    attempt,
                    exc.message,
                )
                if self._stop.wait(delay):
                    return False

    def _ack_all(self, messages: list[Message]) -> None:
        """Ack ``messages``; on RabbitMQ with ONE ``basic.ack(multiple=True)``.

        Safe because every delivery received before them on this channel is
        already settled: a batch holds everything received, and duplicates,
        dead-lettered and requeued deliveries were acked/rejected before.
        """
        if len(messages) < 2 or not is_amqp_url(self.url):
            for message in messages:
                message.ack()
            return
        last = max(messages, key=lambda m: m.delivery_tag)
        channels = {id(m.channel) for m in messages}
        if len(channels) != 1:
            for message in messages:
                message.ack()
            return
        last.channel.basic_ack(last.delivery_tag, multiple=True)
        for message in messages:
            message._state = "ACK"

    @staticmethod
    def _message_key(message: Message) -> str:
        props = message.properties or {}
        return str(props.get("message_id") or hash(message.body))

    def dead_letter(self, message: Message, reason: str) -> None:
        """Republish ``message`` to ``lava.dead`` with ``reason`` in a header, then ack it."""
        info = message.delivery_info or {}
        headers = dict(message.headers or {})
        headers[topology.REJECT_REASON_HEADER] = reason[:4000]
        headers[topology.ORIGINAL_EXCHANGE_HEADER] = str(info.get("exchange", ""))
        headers[topology.ORIGINAL_ROUTING_KEY_HEADER] = str(info.get("routing_key", ""))
        sender = (message.properties or {}).get("user_id")
        if sender:
            headers["x-lavamq-original-user-id"] = str(sender)
        log.warning(
            "dead-lettering a message from exchange %r key %r: %s",
            info.get("exchange"),
            info.get("routing_key"),
            reason,
        )
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        self._remember_handled(message)
        try:
            assert self.publisher is not None
            self.publisher.publish_raw(
                topology.DEAD_EXCHANGE_NAME,
                "",
                body,
                message_type=str((message.properties or {}).get("type") or ""),
                content_type=message.content_type or "application/octet-stream",
                headers=headers,
                message_id=str((message.properties or {}).get("message_id") or "") or None,
            )
        except InfrastructureError as exc:
            # no lava.dead (e.g. an undeclared embedded topology): fall back to
            # the broker's own dead-lettering, losing only the reason header
            log.warning("cannot republish to lava.dead (%s); rejecting instead", exc)
            message.reject(requeue=False)
        else:
            message.ack()
        self.dead_lettered += 1


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
    if isinstance(exc, LavamqError):
        return exc
    return InfrastructureError(f"{name}: consumer failed to start: {exc}")
