"""A long-running consumer counts lost connections in a row, not over its life."""

from __future__ import annotations

import threading

import pytest
from faults import BrokerProxy, wait_for
from kombu import Queue

from broker_config.broker import Broker
from broker_config.consumer import Delivery, QueueConsumer, run_in_thread
from schemas.messages.base import MessageSchema
from schemas.messages.multinode import GroupCloseSchema

pytestmark = pytest.mark.integration


def test_a_consumer_survives_outages_each_shorter_than_its_retry_limit(rabbit_url: str) -> None:
    """``max_retries=1``: one failed reconnect per outage is allowed. Before, the
    count never went back to zero, so the second outage of a healthy consumer's
    life killed it ("connection lost 2 times")."""
    queue = Queue("backoff-test", exchange=None, durable=False, auto_delete=False)
    with Broker(rabbit_url) as broker:
        broker.channel().queue_declare("backoff-test", durable=False, auto_delete=False)
        broker.channel().queue_bind("backoff-test", "amq.fanout")
    handled: list[Delivery] = []
    consumes = threading.Semaphore(0)
    schema: MessageSchema = GroupCloseSchema()
    with BrokerProxy() as proxy:
        consumer = QueueConsumer(
            proxy.url(rabbit_url),
            [queue],
            schema,
            handler=handled.append,
            declare=False,
            max_retries=1,
            poll_interval=0.05,
            on_consume=consumes.release,
        )
        thread = run_in_thread(consumer, "backoff-test")
        assert consumes.acquire(timeout=10)
        try:
            for outage in range(3):
                proxy.cut()
                assert consumes.acquire(timeout=20), f"no reconnect after outage {outage + 1}"
            assert thread.is_alive(), "the consumer gave up"
            with Broker(rabbit_url) as broker:
                broker.publish("amq.fanout", "", schema, {"group": "after-outages"})
            wait_for(lambda: handled, 10, "the message after three outages")
            assert handled[0].body["group"] == "after-outages"
        finally:
            consumer.stop()
            thread.join(10)
            with Broker(rabbit_url) as broker:
                broker.channel().queue_delete("backoff-test")
