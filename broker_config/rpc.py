"""Request/reply over the broker: ``RpcClient.request`` publishes and waits for the answer.

Each request is published with a fresh ``correlation_id`` and ``reply_to``
naming this client's exclusive, auto-deleted reply queue bound to
``lava.reply``. It carries a per-message TTL equal to the timeout: a request
nobody took in time is dropped by RabbitMQ instead of being run later by a
server that starts after the client gave up.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from kombu import Consumer
from kombu.exceptions import OperationalError
from kombu.message import Message

from broker_config import errors, topology
from broker_config.broker import Broker, connection_for
from schemas.messages.base import MessageSchema

log = logging.getLogger(__name__)


class NoReply(errors.BrokerError):
    """Nobody answered in time, or nobody ever listened (the request was unroutable)."""


class NobodyListens(NoReply):
    """The request was unroutable: no server ever ran here, and nothing was delivered."""


class NotConnected(errors.ConnectionLost):
    """No connection to the broker before the request was sent: it was not sent."""


class RpcClient:
    """One reply queue and the requests waiting on it. Use as a context manager or ``close()``."""

    def __init__(self, url: str, exchange: str, routing_key: str, *, timeout: float) -> None:
        self.url = url
        self.exchange = exchange
        self.routing_key = routing_key
        self.timeout = timeout
        self.broker = Broker(url)
        self.connection = connection_for(url)
        self._reply_name = f"lava.reply.{uuid.uuid4().hex}"
        self._replies: dict[str, Message] = {}
        self._consumer: Consumer | None = None

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the reply consumer and close the connection."""
        if self._consumer is not None:
            try:
                self._consumer.cancel()
            except Exception:  # closing anyway
                log.debug("reply consumer cancel failed", exc_info=True)
        self.connection.release()
        self.broker.close()

    def _listen(self) -> None:
        if self._consumer is not None:
            return
        try:
            self.connection.ensure_connection(max_retries=2)
            channel = self.connection.channel()
            queue = topology.reply_queue(self._reply_name).bind(channel)
            queue.declare()
            consumer = Consumer(channel, queues=[queue], on_message=self._on_reply, no_ack=True)
            consumer.consume()
        except (*self.connection.connection_errors, OperationalError, OSError) as exc:
            self._lost()
            raise NotConnected(
                f"cannot connect to the broker at {self.broker.safe_url()}: {exc}"
            ) from exc
        self._consumer = consumer

    def _lost(self) -> None:
        """Forget a dead connection: the next request opens a new one and declares its
        reply queue again (the broker deleted the old one with the connection)."""
        self._consumer = None
        try:
            self.connection.collect()
        except Exception:  # already dead; nothing to release
            log.debug("collecting a lost RPC connection failed", exc_info=True)
        self.connection = connection_for(self.url)

    def _on_reply(self, message: Message) -> None:
        cid = str((message.properties or {}).get("correlation_id") or "")
        self._replies[cid] = message

    def request(self, schema: MessageSchema, body: dict[str, Any]) -> Message:
        """Send one request and return the reply message; ``NoReply`` after the timeout.

        A connection lost while waiting raises ``errors.ConnectionLost`` (the request
        may have been handled: only its caller knows whether asking again is safe);
        the next request reconnects.
        """
        self._listen()
        cid = uuid.uuid4().hex
        try:
            self.broker.publish(
                self.exchange,
                self.routing_key,
                schema,
                body,
                correlation_id=cid,
                reply_to=self._reply_name,
                expiration=self.timeout,
            )
        except (errors.Unroutable, errors.NotFound) as exc:
            # no exchange or queue: no server ever ran on this vhost
            raise NobodyListens(f"nobody listens on {self.exchange}: {exc}") from None
        deadline = time.monotonic() + self.timeout
        while cid not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoReply(f"no reply on {self.exchange} within {self.timeout:g} s")
            try:
                self.connection.drain_events(timeout=min(left, 0.5))
            except TimeoutError:
                continue
            except (*self.connection.connection_errors, OSError) as exc:
                self._lost()
                raise errors.ConnectionLost(
                    f"lost the broker connection while waiting for the reply on "
                    f"{self.exchange}: {exc}"
                ) from exc
        return self._replies.pop(cid)
