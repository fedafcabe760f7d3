"""What ``QueueConsumer`` does with each delivery: decode, drop copies, authorize,
call the handler, ack, requeue or dead-letter.

A body that does not decode, or a type nobody expects, is *republished* to
``lava.dead`` with the reason in the ``x-lavamq-reject-reason`` header and
then acked: RabbitMQ's own dead-lettering cannot add a header, and the reason
is what an admin needs. ``InfrastructureError`` from a handler requeues (up to
``max_requeues``, then dead-letters); ``TransientError`` calls the handler
again after a back-off with the same deliveries; anything else is a bug,
dead-lettered with the traceback summary. A message id already handled is
acked and dropped.
"""

from __future__ import annotations

import functools
import logging
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kombu.message import Message

from broker_config import topology
from broker_config.broker import Broker, is_amqp_url
from schemas.errors import InfrastructureError, InvalidMessage, LavamqError, Unauthorized
from schemas.messages.base import MessageSchema, decode

log = logging.getLogger(__name__)

#: the longest wait before a handler that raised ``TransientError`` is called again
TRANSIENT_BACKOFF_MAX = 2.0


class TransientError(InfrastructureError):
    """Something a handler depends on is briefly unavailable (a database
    restarting, a lost connection): not the messages' fault. ``QueueConsumer``
    keeps the deliveries and calls the handler again after a back-off (0.1 s,
    doubling to ``TRANSIENT_BACKOFF_MAX``) until it succeeds or the consumer
    stops; they are never dead-lettered for it."""


@dataclass
class Delivery:
    """One decoded message handed to a handler."""

    message_type: str
    body: dict[str, Any]
    message: Message

    @property
    def headers(self) -> dict[str, Any]:
        """The message's AMQP headers (a copy)."""
        return dict(self.message.headers or {})

    @property
    def properties(self) -> dict[str, Any]:
        """The message's AMQP properties (a copy)."""
        return dict(self.message.properties or {})


Handler = Callable[[Delivery], None]
BatchHandler = Callable[[list[Delivery]], None]


class DeliveryHandling:
    """The per-delivery half of ``QueueConsumer`` (no connection handling here)."""

    def __init__(
        self,
        url: str,
        schemas: Mapping[str, MessageSchema] | MessageSchema,
        *,
        handler: Handler | None,
        batch_handler: BatchHandler | None,
        max_requeues: int,
        authorize: Callable[[Delivery], None] | None,
        remember: int,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        self.url = url
        self.schemas = schemas
        self.handler = handler
        self.batch_handler = batch_handler
        self.max_requeues = max_requeues
        self._stop = threading.Event()
        self._requeues: dict[str, int] = {}
        #: the dead-letter publisher (the consuming connection's owner sets it)
        self.publisher: Broker | None = None
        self.dead_lettered = 0
        #: raises ``Unauthorized`` for a delivery its sender may not send
        self.authorize = authorize
        #: message ids handled (acked) lately, oldest first: redeliveries are dropped
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._remember = remember
        self.duplicates = 0

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
        self._dispatch(self._prepare(messages, set()))

    def _prepare(
        self, messages: list[Message], in_batch: set[tuple[str, str, str]]
    ) -> list[Delivery]:
        """Decode and authorize ``messages`` (dropping copies of what ``in_batch``
        holds, and adding theirs); the deliveries to hand to the handler."""
        deliveries: list[Delivery] = []
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
        return deliveries

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        """Hand prepared deliveries to the handler (all at once to a batch handler)."""
        if not deliveries:
            return
        if self.batch_handler is not None:
            self._run_handler(deliveries, functools.partial(self.batch_handler, deliveries))
        else:
            assert self.handler is not None
            for delivery in deliveries:
                self._run_handler([delivery], functools.partial(self.handler, delivery))

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
