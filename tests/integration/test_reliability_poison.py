"""Poison messages on every consumer: rejected to lava.dead with a reason, never fatal.

Services run in this process against a real RabbitMQ vhost: the barrier
service (``lava.barrier``), the coordinator (``lava.rpc``, ``lava.control``,
``lava.results``) and a dispatcher (its device queue ``lava.device.<dev>``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
import pytest
from barrier_lab import BarrierLab
from faults import dead_letters, raw_channel, wait_for

from broker_config import topology
from coordinator.rpc import CoordinatorClient
from coordinator.service import CoordinatorService, CoordinatorSettings
from dispatcher.daemon import Dispatcher

pytestmark = pytest.mark.integration

#: (description, body, AMQP type) — each must be refused with a reason naming it
POISONS: list[tuple[str, bytes, str]] = [
    ("non-UTF-8 bytes", b"\xff\xfe\x00garbage\x80", ""),
    ("not JSON", b"<LAVA_MULTI_NODE> <LAVA_SYNC x>", ""),
    ("a JSON list", b"[1, 2, 3]", ""),
    ("an unknown type", b"{}", "no-such-type"),
    ("oversized, wrong shape", b'{"junk": "' + b"x" * 2_000_000 + b'"}', ""),
]


def _start(target: Callable[[Callable[[], None]], None], name: str) -> threading.Thread:
    ready = threading.Event()
    thread = threading.Thread(target=lambda: target(ready.set), name=name, daemon=True)
    thread.start()
    assert ready.wait(30), f"{name} did not start"
    return thread


def test_every_consumer_dead_letters_poison_and_keeps_working(
    rabbit_url: str, tmp_path: Path
) -> None:
    """Failure covered: a garbled, non-UTF-8, oversized or mistyped body on any
    queue is acked and dropped, or crashes its consumer. Each must reach
    lava.dead with its reason, and each service must go on serving."""
    barrier = BarrierLab(rabbit_url, f"sqlite:///{tmp_path / 'barrier.sqlite'}")
    coordinator = CoordinatorService(
        CoordinatorSettings(rabbit_url, f"sqlite:///{tmp_path / 'coord.sqlite'}")
    )
    coord_thread = _start(coordinator.run, "coordinator")
    config: dict[str, Any] = {
        "host": {"name": "poison-host", "broker_url": rabbit_url, "workdir": str(tmp_path / "h")},
        "device": [
            {
                "name": "poison-dev",
                "device_type": "local",
                "tags": [],
                "settings": {"network": "none"},
            }
        ],
    }
    dispatcher = Dispatcher(config, heartbeat_interval=1.0)
    disp_thread = _start(dispatcher.run, "dispatcher")
    targets = [
        (topology.BARRIER_EXCHANGE_NAME, topology.BARRIER_ROUTING_KEY, "multinode-sync"),
        (topology.RPC_EXCHANGE_NAME, topology.RPC_ROUTING_KEY, "devices"),
        (topology.CONTROL_EXCHANGE_NAME, topology.CONTROL_ROUTING_KEY, "host-heartbeat"),
        (topology.RESULTS_EXCHANGE_NAME, "1.poison-dev", "test-result"),
        (
            topology.DEVICE_EXCHANGE_NAME,
            topology.device_routing_key("poison-dev"),
            "subjob-assignment",
        ),
    ]
    try:
        conn, channel = raw_channel(rabbit_url)
        try:
            channel.confirm_select()
            for exchange, key, good_type in targets:
                for what, body, kind in POISONS:
                    props = {"message_id": f"{exchange}-{what}", "type": kind or good_type}
                    channel.basic_publish(
                        amqp.Message(body, **props), exchange=exchange, routing_key=key
                    )
        finally:
            conn.close()
        dead = dead_letters(rabbit_url, len(targets) * len(POISONS), timeout=30)
        by_exchange: dict[str, list[str]] = {}
        for message in dead:
            headers = message.headers or {}
            by_exchange.setdefault(str(headers[topology.ORIGINAL_EXCHANGE_HEADER]), []).append(
                str(headers[topology.REJECT_REASON_HEADER])
            )
        for exchange, _, _ in targets:
            reasons = by_exchange.get(exchange, [])
            assert len(reasons) == len(POISONS), (exchange, reasons)
            assert any("not UTF-8 JSON" in r for r in reasons), reasons
            assert any("must be a JSON object" in r for r in reasons), reasons
            # a queue of one schema validates the body whatever the type says
            assert any("'no-such-type'" in r or "Missing data" in r for r in reasons), reasons
            assert any("junk: Unknown field" in r for r in reasons), reasons
        # every service is still alive and serving
        assert coord_thread.is_alive() and disp_thread.is_alive()
        with CoordinatorClient(rabbit_url, timeout=15) as rpc:
            devices = wait_for(
                lambda: [d for d in rpc.devices() if d.get("name") == "poison-dev"],
                15,
                "the dispatcher's device registered at the coordinator",
            )
            assert devices
        group = barrier.create_group({"solo": "r"}, timeout=10, prefix="pg")
        barrier.client(group, "solo", {"solo": "r"}, timeout=10).sync("after-poison")
        assert barrier.service.consumer.dead_lettered == len(POISONS)
        assert dispatcher.consumer.dead_lettered == len(POISONS)
    finally:
        dispatcher.stop()
        disp_thread.join(30)
        coordinator.stop()
        coord_thread.join(30)
        barrier.close()
