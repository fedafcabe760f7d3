"""Contract of broker_config.broker and .consumer, on memory:// and on the real RabbitMQ."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport import memory
from marshmallow import fields

from broker_config import topology
from broker_config.broker import Broker, Outgoing
from broker_config.consumer import Delivery, QueueConsumer, run_in_thread
from broker_config.declare import ManagementAPI
from broker_config.errors import NotFound, PreconditionFailed, Unroutable
from broker_config.permissions import remove_user
from schemas.messages.base import InvalidMessage, MessageSchema


class PingSchema(MessageSchema):
    message_type = "test-ping"
    text = fields.String(required=True)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.005)


@pytest.fixture(params=["memory", pytest.param("rabbit", marks=pytest.mark.integration)])
def any_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        memory.Transport.global_state.clear()
        memory.Channel.queues.clear()
        yield "memory://"
        return
    yield request.getfixturevalue("rabbit_url")


def _setup(url: str) -> tuple[Broker, Queue]:
    broker = Broker(url)
    broker.declare(topology.dead_exchange(), topology.dead_queue())
    exchange = Exchange("lava.test", type="direct", durable=True)
    queue = Queue(
        f"lava.test.{uuid.uuid4().hex[:6]}",
        exchange=exchange,
        routing_key="k",
        durable=True,
        queue_arguments=dict(topology.DEAD_LETTER_ARGUMENTS),
    )
    broker.declare(exchange, queue)
    return broker, queue


def test_unroutable_publish_raises_naming_exchange_and_key(any_url: str) -> None:
    broker, _ = _setup(any_url)
    with broker, pytest.raises(Unroutable) as info:
        broker.publish("lava.test", "nobody", PingSchema(), {"text": "x"})
    assert "'lava.test'" in str(info.value)
    assert "'nobody'" in str(info.value)
    assert "unroutable" in str(info.value)


def test_deleting_what_does_not_exist_is_not_an_error(any_url: str) -> None:
    broker, _ = _setup(any_url)
    with broker:
        broker.delete_queue("lava.test.never-declared")
        broker.delete_exchange("lava.test.never-declared")


@pytest.mark.integration
def test_broker_refusals_are_types(rabbit_url: str) -> None:
    broker, queue = _setup(rabbit_url)
    with broker:
        with pytest.raises(NotFound) as missing:
            broker.bind_queue("lava.test.never-declared", "lava.test", "k")
        assert missing.value.reply_code == 404
        # the same name declared with other arguments: 406 PRECONDITION_FAILED
        with pytest.raises(PreconditionFailed):
            broker.declare(Queue(queue.name, durable=False))
        # the connection is usable again after a channel error
        broker.publish("lava.test", "k", PingSchema(), {"text": "x"})


@pytest.mark.integration
def test_management_api_not_found_is_a_type(rabbit_url: str) -> None:
    api = ManagementAPI.from_broker_url(rabbit_url)
    with pytest.raises(NotFound):
        api.call("GET", f"/queues/{api.q(api.vhost)}/lava.test.never-declared")
    assert remove_user(api, "lavamq-test-never-created") is False


def test_invalid_body_refused_before_publishing(any_url: str) -> None:
    broker, _ = _setup(any_url)
    with broker, pytest.raises(InvalidMessage, match="text"):
        broker.publish("lava.test", "k", PingSchema(), {"txt": "x"})


def test_publish_many_delivers_all_in_order_and_names_the_unroutable(any_url: str) -> None:
    """Messages confirmed together arrive in order with their ids; one no queue is
    bound for is returned by id, not raised; a bad body stops all before any is sent;
    the single publishes after it are still confirmed one by one."""
    broker, queue = _setup(any_url)
    with broker, Connection(any_url) as conn:
        with pytest.raises(InvalidMessage, match="text"):
            broker.publish_many(
                [Outgoing("lava.test", "k", PingSchema(), {"text": "first"}),
                 Outgoing("lava.test", "k", PingSchema(), {"txt": "bad"})]
            )  # fmt: skip
        for rounds in range(3):  # the same channel again: its confirm count goes on
            ids = [f"m{rounds}-{i}" for i in range(20)]
            returned = broker.publish_many(
                [Outgoing("lava.test", "k", PingSchema(), {"text": m}, message_id=m) for m in ids]
                + [Outgoing("lava.test", "nobody", PingSchema(), {"text": "x"}, message_id="lost")]
            )
            assert returned == {"lost"}
            broker.publish("lava.test", "k", PingSchema(), {"text": "single"})
            got = []
            bound = queue.bind(conn.channel())
            while (message := bound.get(no_ack=True)) is not None:
                got.append((message.properties.get("message_id"), message.payload["text"]))
            assert got[:-1] == [(m, m) for m in ids]
            assert got[-1][1] == "single"


def test_default_exchange_is_never_used(any_url: str) -> None:
    broker, queue = _setup(any_url)
    with broker, pytest.raises(AssertionError, match="default exchange"):
        broker.publish("", queue.name, PingSchema(), {"text": "x"})


def test_round_trip_and_dead_letter_with_reason(any_url: str) -> None:
    broker, queue = _setup(any_url)
    got: list[Delivery] = []

    def handler(delivery: Delivery) -> None:
        if delivery.body["text"] == "boom":
            raise RuntimeError("handler exploded")
        got.append(delivery)

    consumer = QueueConsumer(any_url, [queue], {"test-ping": PingSchema()}, handler=handler)
    thread = run_in_thread(consumer, "test-consumer")
    try:
        broker.publish("lava.test", "k", PingSchema(), {"text": "héllo = world\n"})
        broker.publish_raw("lava.test", "k", b"{not json", message_type="test-ping")
        broker.publish_raw("lava.test", "k", b"{}", message_type="who-knows")
        broker.publish("lava.test", "k", PingSchema(), {"text": "boom"})
        broker.publish("lava.test", "k", PingSchema(), {"text": "after"})
        wait_for(lambda: len(got) == 2 and consumer.dead_lettered == 3)
    finally:
        consumer.stop()
        thread.join(10)
    assert [d.body["text"] for d in got] == ["héllo = world\n", "after"]
    assert got[0].message_type == "test-ping"
    assert got[0].properties.get("delivery_mode") in (2, None)

    # the dead letters carry their reason (read raw: the bodies are invalid on purpose)
    reasons: list[str] = []
    with Connection(any_url) as conn:
        dead = topology.dead_queue().bind(conn.channel())
        deadline = time.monotonic() + 10
        while len(reasons) < 3 and time.monotonic() < deadline:
            msg = dead.get(no_ack=False)
            if msg is None:
                time.sleep(0.01)
                continue
            reasons.append(msg.headers[topology.REJECT_REASON_HEADER])
            assert msg.headers[topology.ORIGINAL_EXCHANGE_HEADER] == "lava.test"
            msg.ack()
    assert any("not UTF-8 JSON" in r for r in reasons)
    assert any("unexpected message type 'who-knows'" in r for r in reasons)
    assert any("RuntimeError: handler exploded" in r for r in reasons)
    broker.close()


@pytest.mark.integration
def test_publish_survives_connection_loss(rabbit_url: str) -> None:
    broker, queue = _setup(rabbit_url)
    with broker:
        broker.publish("lava.test", "k", PingSchema(), {"text": "1"})
        # drop the TCP connection under the broker's feet
        broker.connection.connection.sock.close()
        broker.publish("lava.test", "k", PingSchema(), {"text": "2"})
        channel = broker.channel()
        _, count, _ = channel.queue_declare(queue=queue.name, passive=True)
        assert count == 2
