"""A consumer of many queues survives one of them going away, and queue changes
made while its connection dies are not left hanging (real RabbitMQ)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from amqp.exceptions import NotFound
from kombu import Consumer, Queue
from lab import wait_for

from broker_config.broker import Broker
from broker_config.consumer import Delivery, QueueConsumer, run_in_thread
from schemas.errors import InfrastructureError
from schemas.messages.multinode import GroupCloseSchema

pytestmark = pytest.mark.integration

SCHEMA = GroupCloseSchema()


class Running:
    """A consumer of queues "a" and "b" (``declare=False``, like the MultiNode receiver)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = Broker(url)
        self.handled: list[str] = []
        self.consumes: list[int] = []
        self.consumer = QueueConsumer(
            url,
            [self.declare("a"), self.declare("b")],
            SCHEMA,
            handler=self._handle,
            declare=False,
            poll_interval=0.05,
            on_consume=lambda: self.consumes.append(1),
        )
        self.thread = run_in_thread(self.consumer, "missing-queue-test")

    def _handle(self, delivery: Delivery) -> None:
        self.handled.append(str(delivery.body["group"]))

    def declare(self, name: str) -> Queue:
        channel = self.admin.channel()
        channel.queue_declare(name, durable=False, auto_delete=False)
        channel.queue_bind(name, "amq.direct", routing_key=name)
        return Queue(name, exchange=None, durable=False, auto_delete=False)

    def send(self, name: str, tag: str) -> None:
        self.admin.publish("amq.direct", name, SCHEMA, {"group": tag})

    def consumers(self, name: str) -> int | None:
        """The queue's live consumer count (not the management API's lagging stats)."""
        with Broker(self.url) as probe:
            try:
                return int(probe.channel().queue_declare(name, passive=True)[2])
            except NotFound:
                return None

    def close(self) -> None:
        self.consumer.stop()
        self.thread.join(10)
        self.admin.close()


@pytest.fixture
def running(rabbit_url: str) -> Iterator[Running]:
    r = Running(rabbit_url)
    try:
        yield r
    finally:
        r.close()


def names(consumer: QueueConsumer) -> list[str]:
    return [q.name for q in consumer.queues]


def test_a_queue_deleted_while_consumed_is_dropped_and_the_others_go_on(
    running: Running,
) -> None:
    """Deleting a consumed queue makes RabbitMQ cancel its consumer; the consumer
    reconnects and consumed its whole list again, "a" included: 404 NOT_FOUND, a
    channel error, and its thread died. Now "a" is dropped and "b" still delivers."""
    running.admin.delete_queue("a")
    wait_for(lambda: names(running.consumer) == ["b"], 10, "the deleted queue dropped")
    wait_for(lambda: running.consumers("b") == 1, 10, "b consumed again")
    running.send("b", "after-delete")
    wait_for(lambda: "after-delete" in running.handled, 10, "b's message handled")
    assert running.thread.is_alive()


def test_adding_a_missing_queue_raises_naming_it_and_the_consumer_goes_on(
    running: Running,
) -> None:
    """``add_queue`` of a queue that does not exist (e.g. expired): the 404 used to
    kill the consumer thread and the caller waited its whole timeout."""
    with pytest.raises(InfrastructureError, match="queue gone does not exist"):
        running.consumer.add_queue(Queue("gone", exchange=None), timeout=10)
    assert names(running.consumer) == ["a", "b"]
    wait_for(lambda: running.consumers("a") == running.consumers("b") == 1, 10, "a, b consumed")
    running.send("a", "to-a")
    running.send("b", "to-b")
    wait_for(lambda: {"to-a", "to-b"} <= set(running.handled), 10, "both handled")
    assert running.thread.is_alive()
    # and an existing queue is still added normally afterwards
    running.consumer.add_queue(running.declare("c"), timeout=10)
    running.send("c", "to-c")
    wait_for(lambda: "to-c" in running.handled, 10, "c's message handled")


@pytest.mark.parametrize("change", ["add", "remove"])
def test_a_queue_change_hit_by_a_dying_connection_returns_and_is_applied_after_reconnect(
    running: Running, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change was applied to the consumer's queue list, then its broker call
    failed on a dying connection: its ``done`` was never set, so the caller waited
    the whole timeout and raised, although the reconnect applied the change."""
    real = Consumer.add_queue if change == "add" else Consumer.cancel_by_queue
    failed: list[int] = []

    def dying(self: Consumer, *args: object) -> object:
        if not failed:
            failed.append(1)
            raise ConnectionResetError("connection reset by peer (injected)")
        return real(self, *args)

    monkeypatch.setattr(Consumer, "add_queue" if change == "add" else "cancel_by_queue", dying)
    if change == "add":
        running.consumer.add_queue(running.declare("c"), timeout=10)
        expected = {"a": 1, "b": 1, "c": 1}
    else:
        running.consumer.remove_queue("b", timeout=10)
        expected = {"a": 1, "b": 0}
    assert failed, "the injected failure did not happen"
    wait_for(lambda: len(running.consumes) == 2, 10, "the consumer reconnected")
    wait_for(
        lambda: {name: running.consumers(name) for name in expected} == expected,
        10,
        f"consumers {expected}",
    )
    assert names(running.consumer) == (["a", "b", "c"] if change == "add" else ["a"])
    assert running.thread.is_alive()
