"""``Broker``: the one connection lavamq declares and publishes with, confirmed.

Publishing (``Broker.publish``):

- the body is validated by its marshmallow schema (``schemas.messages.base.encode``);
- persistent (``delivery_mode=2``), JSON, AMQP ``type`` = the schema's message type;
- on RabbitMQ: publisher confirms (``confirm_publish``) and ``mandatory=True``.
  py-amqp reports an unroutable message as a ``basic.return`` *before* the
  confirm's ``basic.ack``; ``Broker`` registers a ``basic_return`` handler on
  its channel (without one py-amqp would raise ``NoRoute`` out of the wait),
  so after the confirm it knows whether the message was returned and raises
  ``errors.Unroutable`` naming the exchange and routing key;
- on ``memory://`` (no confirms, no returns) the same check is made by looking
  up the exchange's bindings before publishing, so tests behave alike;
- never to the default exchange;
- every message has a ``message_id`` (one per ``publish`` call, kept across
  retries) and, on RabbitMQ, the ``user_id`` of the connection's broker user,
  which RabbitMQ validates (see ``broker_config/identity.py``);
- a lost connection is re-opened (``max_retries``) and everything this
  ``Broker`` declared is declared again before the publish is retried. A
  publish whose confirm was lost may thus arrive twice, with the same
  ``message_id``: consumers drop the second copy.

One ``Broker`` per thread: kombu connections are not thread-safe.
``Broker.publish`` takes a lock so that a thread handing a ``Broker`` to a
helper thread by mistake gets serialised, not corrupted. Failures are the
types of ``broker_config/errors.py`` (``Unroutable``, ``NotFound``, ...).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from amqp.exceptions import MessageNacked
from amqp.spec import Basic
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError

from broker_config import cluster, errors
from broker_config.identity import user_of_url
from schemas.messages.base import MessageSchema, encode

log = logging.getLogger(__name__)

JSON = "application/json"


class PublishOptions(TypedDict, total=False):
    """How one message is published (the options of ``publish`` and ``publish_raw``).

    ``message_id``: give a stable one when the same decision may be published
    again (an outbox after a crash) so receivers drop the copy.
    ``persistent=False``: the broker keeps it in memory only (a broker restart
    loses it); still confirmed once every queue has it. ``expiration`` in seconds.
    """

    headers: Mapping[str, Any] | None
    correlation_id: str | None
    reply_to: str | None
    expiration: float | None
    message_id: str | None
    persistent: bool


@dataclass(frozen=True)
class Outgoing:
    """One message for :meth:`Broker.publish_many`."""

    exchange: str | Exchange
    routing_key: str
    schema: MessageSchema
    body: Mapping[str, Any]
    message_id: str | None = None
    persistent: bool = True
    #: the message as it goes on the wire, already encoded and validated (the
    #: schema then only names its type, ``body`` is not used)
    payload: bytes | None = None


class _BrokerFailure(Exception):
    """Internal: the broker closed the connection on its own failure (541); retried."""


def is_amqp_url(url: str) -> bool:
    """Whether ``url`` is a real AMQP broker, where confirms, user ids and clusters apply."""
    return url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def connection_for(url: str, *, connect_timeout: float = 10.0) -> Connection:
    """A kombu connection with the options lavamq relies on for ``url``.

    Several node URLs (a cluster, ``cluster.py``): kombu fails over between
    them, and each new connection starts at the next node.
    """
    if is_amqp_url(url):
        return Connection(
            cluster.connection_urls(url),
            failover_strategy="round-robin",
            transport_options={"confirm_publish": True},
            connect_timeout=connect_timeout,
            heartbeat=0,
        )
    # memory:// polls; the default (1 s) would make every wait slow
    return Connection(url, transport_options={"polling_interval": 0.005})


class Broker:
    """A connection used to declare and publish; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        max_retries: int = 5,
        confirm_timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.is_amqp = is_amqp_url(url)
        #: durable queues declared as quorum queues (a cluster, ``cluster.py``)
        self.quorum = self.is_amqp and cluster.quorum_queues(url)
        #: stamped as ``user_id`` on every publish (RabbitMQ checks it)
        self.user_id = user_of_url(url)
        self.max_retries = max_retries
        self.confirm_timeout = confirm_timeout
        self.connection = connection_for(url, connect_timeout=connect_timeout)
        self._channel: Any = None
        self._declared: dict[tuple[str, str], Exchange | Queue] = {}
        #: (exchange, routing key, reason, message id) of every basic.return
        self._returned: list[tuple[str, str, str, str]] = []
        #: publishes made on the current channel (its publisher-confirm sequence number)
        self._seq = 0
        self._lock = threading.RLock()

    # --- connection -------------------------------------------------------

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def safe_url(self) -> str:
        """The broker URL without its password, for logs and messages."""
        return str(self.connection.as_uri())

    def connect(self) -> None:
        """Open the connection now (otherwise the first use opens it)."""
        self.channel()

    def channel(self) -> Any:
        """The channel used for declares and publishes (opened on demand)."""
        with self._lock:
            if self._channel is None:
                try:
                    self.connection.ensure_connection(max_retries=self.max_retries)
                except (*self.connection.connection_errors, OperationalError, OSError) as exc:
                    raise errors.ConnectionLost(
                        f"cannot connect to the broker at {self.safe_url()}: {exc}"
                    ) from exc
                channel = self.connection.channel()
                if self.is_amqp:
                    # memory:// channels share one class-level ``events`` dict
                    channel.events["basic_return"].add(self._on_return)
                self._channel = channel
                self._seq = 0
            return self._channel

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        message_id = str((getattr(message, "properties", None) or {}).get("message_id") or "")
        self._returned.append((exchange, routing_key, str(exc), message_id))

    def _reset(self) -> None:
        """Forget the channel (and a dead connection) so the next use reopens them."""
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()
        with contextlib.suppress(Exception):
            self.connection.collect()
        self.connection = connection_for(self.url)

    def _revive(self) -> None:
        self._reset()
        channel = self.channel()
        for entity in list(self._declared.values()):
            entity.bind(channel).declare()

    def close(self) -> None:
        """Close the channel and release the connection."""
        with self._lock:
            if self._channel is not None:
                with contextlib.suppress(Exception):
                    self._channel.close()
                self._channel = None
            with contextlib.suppress(Exception):
                self.connection.release()

    def _retrying(self, what: str, fun: Callable[[], Any]) -> Any:
        """Run ``fun``; reconnect and redeclare on a lost connection, up to max_retries."""
        attempt = 0
        while True:
            try:
                try:
                    return fun()
                except self.connection.connection_errors as exc:
                    if errors.is_broker_failure(exc):  # 541: the broker's failure
                        raise _BrokerFailure(str(exc)) from exc
                    raise
            except (*self.connection.recoverable_connection_errors, _BrokerFailure) as exc:
                attempt += 1
                if attempt > self.max_retries:
                    raise errors.ConnectionLost(
                        f"{what}: broker connection lost {attempt} times ({self.safe_url()}): {exc}"
                    ) from exc
                log.warning("%s: connection lost (%s), reconnecting (%d)", what, exc, attempt)
                time.sleep(min(0.1 * 2**attempt, 2.0))
                try:
                    self._revive()
                except (errors.BrokerError, *self.connection.connection_errors) as rexc:
                    log.warning("%s: reconnect failed: %s", what, rexc)
            except self.connection.channel_errors as exc:
                # the broker closed the channel (404 exchange missing, 406...)
                self._reset()
                raise errors.from_amqp(exc, what) from exc
            except MessageNacked as exc:
                raise errors.Nacked(f"{what}: the broker nacked it") from exc

    # --- declaring --------------------------------------------------------

    def declare(self, *entities: Exchange | Queue) -> None:
        """Declare exchanges/queues (a queue declares its exchange and binding too).

        Remembered, and declared again after a reconnect.
        """
        with self._lock:
            for entity in entities:
                if isinstance(entity, Queue):
                    entity = cluster.for_broker(entity, self.quorum)
                kind = "queue" if isinstance(entity, Queue) else "exchange"
                self._retrying(f"declare {kind} {entity.name!r}", self._declarer(entity))
                self._declared[(kind, entity.name)] = entity

    def _declarer(self, entity: Exchange | Queue) -> Callable[[], Any]:
        return lambda: entity.bind(self.channel()).declare()

    def forget(self, kind: str, name: str) -> None:
        """Forget that an entity was declared, so a reconnect does not declare it again."""
        self._declared.pop((kind, name), None)

    def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Bind ``queue`` to ``exchange`` by name (retried across a reconnect)."""
        with self._lock:
            self._retrying(
                f"bind queue {queue!r} to {exchange!r}",
                lambda: self.channel().queue_bind(
                    queue=queue, exchange=exchange, routing_key=routing_key
                ),
            )

    def consumer_count(self, name: str) -> int:
        """How many consumers queue ``name`` has now (a passive declare: no
        configure permission needed); ``NotFound`` if it does not exist."""
        with self._lock:
            ok = self._retrying(
                f"look up queue {name!r}",
                lambda: self.channel().queue_declare(queue=name, passive=True),
            )
            return int(ok.consumer_count)

    def delete_queue(self, name: str) -> None:
        """Delete a queue; a queue that does not exist is not an error."""
        with self._lock:
            self.forget("queue", name)
            with contextlib.suppress(errors.NotFound):
                self._retrying(
                    f"delete queue {name!r}", lambda: self.channel().queue_delete(queue=name)
                )

    def delete_exchange(self, name: str) -> None:
        """Delete an exchange; one that does not exist is not an error."""
        with self._lock:
            self.forget("exchange", name)
            # memory:// raises KeyError for an unknown exchange
            with contextlib.suppress(errors.NotFound, KeyError):
                self._retrying(
                    f"delete exchange {name!r}",
                    lambda: self.channel().exchange_delete(exchange=name),
                )

    # --- publishing -------------------------------------------------------

    def publish(
        self,
        exchange: str | Exchange,
        routing_key: str,
        schema: MessageSchema,
        body: Mapping[str, Any],
        **options: Unpack[PublishOptions],
    ) -> None:
        """Validate ``body`` with ``schema`` and publish it (persistently by default), confirmed.

        Raises InvalidMessage for a body that does not fit its schema and a
        ``BrokerError`` (``Unroutable``, ``NotFound``, ``Nacked``...) when the
        broker cannot route or store it.
        """
        payload = encode(schema, dict(body))
        self.publish_raw(
            exchange, routing_key, payload, message_type=schema.message_type, **options
        )

    def publish_raw(
        self,
        exchange: str | Exchange,
        routing_key: str,
        payload: bytes,
        *,
        message_type: str = "",
        content_type: str = JSON,
        **options: Unpack[PublishOptions],
    ) -> None:
        """Publish bytes as they are (used for dead-lettering); prefer ``publish``.

        ``options``: see :class:`PublishOptions`.
        """
        headers = options.get("headers")
        correlation_id = options.get("correlation_id")
        reply_to = options.get("reply_to")
        expiration = options.get("expiration")
        message_id = options.get("message_id")
        persistent = options.get("persistent", True)
        name = exchange.name if isinstance(exchange, Exchange) else exchange
        assert name, "lavamq never publishes to the default exchange"
        # one id for every retry of this publish: a copy that got through
        # before the connection died is recognised as the same message
        properties: dict[str, Any] = {
            "delivery_mode": 2 if persistent else 1,
            "message_id": message_id or uuid.uuid4().hex,
        }
        if self.is_amqp and self.user_id:
            properties["user_id"] = self.user_id
        if message_type:
            properties["type"] = message_type
        if correlation_id:
            properties["correlation_id"] = correlation_id
        if reply_to:
            properties["reply_to"] = reply_to
        if expiration is not None:
            properties["expiration"] = str(int(expiration * 1000))
        what = f"publish {message_type or 'message'} to exchange {name!r} key {routing_key!r}"

        def once() -> None:
            channel = self.channel()
            if not self.is_amqp:
                self._check_routable_memory(channel, name, routing_key, what)
            message = channel.prepare_message(
                payload,
                content_type=content_type,
                content_encoding="utf-8",
                headers=dict(headers or {}),
                properties=properties,
            )
            self._returned.clear()
            if self.is_amqp:
                self._seq += 1
                channel.basic_publish(
                    message,
                    exchange=name,
                    routing_key=routing_key,
                    mandatory=True,
                    confirm_timeout=self.confirm_timeout,
                )
            else:
                channel.basic_publish(message, exchange=name, routing_key=routing_key)
            if self._returned:
                _, _, reason, _ = self._returned[-1]
                self._returned.clear()
                raise errors.Unroutable(f"{what}: unroutable, no queue is bound for it ({reason})")

        with self._lock:
            self._retrying(what, once)

    def publish_many(self, messages: Sequence[Outgoing]) -> set[str]:
        """Publish ``messages`` in order, confirmed together; the ids of those returned
        as unroutable (no queue bound for them), which are not raised.

        Every body is validated first (``InvalidMessage`` before anything is
        sent). On RabbitMQ every message is sent, then every confirm is awaited:
        one round trip for all of them instead of one each (a barrier releasing
        many groups at once waited for each release's confirm in turn). The
        guarantee is the same as ``publish``'s: when this returns, the broker
        has every message (or returned it); a lost connection sends them all
        again with the same ids, and receivers drop the copies. A broker that
        refuses one (its exchange is gone: ``NotFound``) closes the channel and
        the error is raised: the caller publishes them one by one to know which.
        """
        prepared = []
        for m in messages:
            name = m.exchange.name if isinstance(m.exchange, Exchange) else m.exchange
            assert name, "lavamq never publishes to the default exchange"
            properties: dict[str, Any] = {
                "delivery_mode": 2 if m.persistent else 1,
                "message_id": m.message_id or uuid.uuid4().hex,
                "type": m.schema.message_type,
            }
            if self.is_amqp and self.user_id:
                properties["user_id"] = self.user_id
            payload = encode(m.schema, dict(m.body)) if m.payload is None else m.payload
            prepared.append((name, m.routing_key, payload, properties))
        if not prepared:
            return set()
        if not self.is_amqp:
            returned: set[str] = set()
            for name, key, payload, properties in prepared:
                try:
                    self.publish_raw(
                        name,
                        key,
                        payload,
                        message_type=properties["type"],
                        message_id=properties["message_id"],
                        persistent=properties["delivery_mode"] == 2,
                    )
                except errors.Unroutable:
                    returned.add(properties["message_id"])
            return returned
        what = (
            f"publish {len(prepared)} messages ({prepared[0][3]['type']} to {prepared[0][0]!r}...)"
        )

        def once() -> set[str]:
            channel = self.channel()
            if not channel._confirm_selected:
                channel._confirm_selected = True
                channel.confirm_select()
            self._returned.clear()
            first = self._seq + 1
            unconfirmed = set(range(first, first + len(prepared)))
            nacked: list[int] = []

            # listeners, not the wait's callback: py-amqp reads what has arrived
            # while it publishes (connection.blocked), confirms of the first
            # messages included, and hands those only to the channel's listeners
            def on_ack(delivery_tag: int, multiple: bool) -> None:
                if multiple:
                    unconfirmed.difference_update(range(first, delivery_tag + 1))
                else:
                    unconfirmed.discard(delivery_tag)

            def on_nack(delivery_tag: int, multiple: bool) -> None:
                if delivery_tag in unconfirmed or (multiple and delivery_tag >= first):
                    nacked.append(delivery_tag)

            channel.events["basic_ack"].add(on_ack)
            channel.events["basic_nack"].add(on_nack)
            try:
                for name, key, payload, properties in prepared:
                    message = channel.prepare_message(
                        payload,
                        content_type=JSON,
                        content_encoding="utf-8",
                        headers={},
                        properties=properties,
                    )
                    self._seq += 1
                    channel._basic_publish(message, exchange=name, routing_key=key, mandatory=True)
                while unconfirmed and not nacked:
                    channel.wait([Basic.Ack, Basic.Nack], timeout=self.confirm_timeout)
            finally:
                channel.events["basic_ack"].discard(on_ack)
                channel.events["basic_nack"].discard(on_nack)
            if nacked:
                raise MessageNacked()
            returned = {message_id for _, _, _, message_id in self._returned}
            self._returned.clear()
            return returned

        with self._lock:
            result: set[str] = self._retrying(what, once)
            return result

    @staticmethod
    def _check_routable_memory(channel: Any, exchange: str, routing_key: str, what: str) -> None:
        try:
            queues = channel.typeof(exchange).lookup(
                channel.get_table(exchange), exchange, routing_key, None
            )
        except KeyError:
            queues = []
        if not queues:
            raise errors.Unroutable(f"{what}: unroutable, no queue is bound for it")
