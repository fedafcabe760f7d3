"""A consumer started on a backlog larger than its prefetch handles all of it (real RabbitMQ).

While kombu starts consuming the second and third queue it waits for each
``consume-ok``, and RabbitMQ already delivers the first queue's backlog, up
to the prefetch. Those deliveries were left waiting for a next delivery that
never came (the window was full): a coordinator coming back to a
``lava.control`` backlog of 20 or more handled none of it.
"""

from __future__ import annotations

import pytest
from kombu import Queue
from lab import wait_for

from broker_config.broker import Broker
from broker_config.consumer import Delivery, QueueConsumer, run_in_thread
from schemas.messages.multinode import GroupCloseSchema

pytestmark = pytest.mark.integration

SCHEMA = GroupCloseSchema()


def test_a_backlog_beyond_the_prefetch_at_start_is_all_handled(rabbit_url: str) -> None:
    names = ["backlog-a", "backlog-b", "backlog-c"]
    with Broker(rabbit_url) as admin:
        channel = admin.channel()
        for name in names:
            channel.queue_declare(name, durable=False, auto_delete=False)
            channel.queue_bind(name, "amq.direct", routing_key=name)
        for i in range(30):
            admin.publish("amq.direct", "backlog-a", SCHEMA, {"group": f"g{i}"})
    handled: list[str] = []

    def handle(delivery: Delivery) -> None:
        handled.append(str(delivery.body["group"]))

    consumer = QueueConsumer(
        rabbit_url,
        [Queue(n, exchange=None, durable=False, auto_delete=False) for n in names],
        SCHEMA,
        handler=handle,
        declare=False,
        prefetch=5,
        poll_interval=0.05,
    )
    thread = run_in_thread(consumer, "backlog-test")
    try:
        wait_for(lambda: len(handled) == 30, 20, f"30 handled (got {len(handled)})")
        assert sorted(handled) == sorted(f"g{i}" for i in range(30))
    finally:
        consumer.stop()
        thread.join(10)
