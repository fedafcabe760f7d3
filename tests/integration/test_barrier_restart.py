"""A real ``lavamq barrier`` process killed mid-barrier and restarted.

The barrier must release exactly once and lose no acknowledgement: counts
committed before the kill stay counted, deliveries not yet acknowledged come
back and count once, and an acknowledgement sent while no barrier runs
waits in the quorum queue.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Queue
from lab import barrier_process, wait_for
from sqlalchemy import func, select

from broker_config import topology
from broker_config.broker import Broker
from broker_config.declare import declare_topology
from coordinator.barrier_models import BarrierArrival, BarrierRelease
from coordinator.db import make_engine, migrate, session_factory
from coordinator.groups import create_group
from device_agent.multinode import MultinodeClient

pytestmark = pytest.mark.integration


def test_sigkill_mid_barrier_releases_exactly_once(rabbit_url: str, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'barrier.sqlite'}"
    migrate(db_url)
    sessions = session_factory(make_engine(db_url))

    def count(model: Any) -> int:
        # the first lava-sync of an id also sends it: count the sync barrier only
        with sessions() as s:
            query = select(func.count()).select_from(model).where(model.kind == "sync")
            return int(s.scalar(query) or 0)

    broker = Broker(rabbit_url)
    declare_topology(broker)
    members = {"n1": "server", "n2": "client", "n3": "client"}
    create_group(broker, "g1", members, timeout=60)
    observer = Queue("lava.group.g1.observer", exchange=topology.group_exchange("g1"), durable=True)
    broker.declare(observer)
    clients = {n: MultinodeClient(rabbit_url, "g1", n, members, timeout=60) for n in members}
    service = barrier_process(rabbit_url, db_url).start()
    done: dict[str, float] = {}

    def sync(node: str) -> None:
        clients[node].sync("ready")
        done[node] = time.monotonic()

    threads = [threading.Thread(target=sync, args=(n,)) for n in ("n1", "n2")]
    for t in threads:
        t.start()
    wait_for(lambda: count(BarrierArrival) == 2, what="two arrivals counted", interval=0.01)
    service.kill()

    # the last acknowledgement arrives while no barrier runs: it waits in the queue
    last = threading.Thread(target=sync, args=("n3",))
    last.start()
    wait_for(lambda: broker_queue_depth(rabbit_url) >= 1, what="the last ack queued", interval=0.01)
    assert not done

    restarted = barrier_process(rabbit_url, db_url).start()
    for t in [*threads, last]:
        t.join(30)
    assert set(done) == {"n1", "n2", "n3"}
    assert count(BarrierArrival) == 3
    assert count(BarrierRelease) == 1
    # exactly one release went to the group
    releases = []
    with Connection(rabbit_url) as conn:
        q = observer.bind(conn.channel())
        while (msg := q.get(no_ack=True)) is not None:
            is_release = msg.properties.get("type") == "multinode-release"
            if is_release and json.loads(msg.body)["kind"] == "sync":
                releases.append(msg)
    assert len(releases) == 1
    assert restarted.stop() == 0
    for client in clients.values():
        client.close()
    broker.close()


def broker_queue_depth(url: str) -> int:
    with Connection(url) as conn:
        _, depth, _ = conn.channel().queue_declare(queue=topology.BARRIER_QUEUE_NAME, passive=True)
        return int(depth)
