"""A MultiNode group rides out kill -9 of RabbitMQ cluster nodes.

On the 3-node cluster of ``scripts/rabbitmq-cluster.sh`` (every client and a
real ``lavamq barrier`` process given the three node URLs), a 4-node group
runs 200 rounds of one ``lava-send`` per node and one ``lava-sync``. At round
60 the node leading ``lava.barrier`` is killed with SIGKILL and restarted 30
rounds later; at round 120 the node one node's publisher is connected to is
killed, and restarted 30 rounds later. Every send must reach every node once,
every sync release exactly once and never before every node acknowledged it
(a double-counted acknowledgement would release early). The longest stall
after each kill is printed and recorded for docs/reliability.md.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cluster
import pytest
from faults import (
    CountingClient,
    Progress,
    first_sync_sends,
    record_reliability,
    wait_for,
)
from lab import barrier_process

import services
from broker_config.broker import Broker
from broker_config.consumer import Delivery
from broker_config.declare import declare_topology
from coordinator.groups import create_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODES = ["fo-a", "fo-b", "fo-c", "fo-d"]
ROUNDS = 200
KILLS = (("barrier queue leader", 60, 90), ("node fo-a publishes on", 120, 150))
#: nodes wait this many rounds after a kill or restart point until the fault
#: was made: it happens mid-group, not after a fast group has ended
GATE = 10


@pytest.fixture
def cluster_vhost() -> Iterator[cluster.ClusterVhost]:
    if not cluster.running():
        services.missing_service("the 3-node RabbitMQ cluster (scripts/rabbitmq-cluster.sh start)")
    # another run's kills would be this test's stalls (and ours theirs)
    with cluster.exclusive():
        cluster.start_missing_nodes()  # a node another run left down
        vhost = cluster.ClusterVhost()
        try:
            yield vhost
        finally:
            cluster.start_missing_nodes()  # a failed test leaves no node down for the next
            vhost.delete()


class TimedClient(CountingClient):
    """Also notes when each sync release first arrived, to check it came after every ack."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.released_at: dict[int, float] = {}
        super().__init__(*args, **kwargs)

    def _on_message(self, delivery: Delivery) -> None:
        if delivery.message_type == "multinode-release" and delivery.body["kind"] == "sync":
            generation = int(delivery.body["generation"])
            with self.seen_lock:
                self.released_at.setdefault(generation, time.monotonic())
        super()._on_message(delivery)


def _port_of(url: str) -> int:
    return int(urllib.parse.urlsplit(url).port or 5672)


def test_kill_nine_of_cluster_nodes_loses_duplicates_and_double_counts_nothing(
    cluster_vhost: cluster.ClusterVhost, tmp_path: Path
) -> None:
    url = cluster_vhost.url()
    with Broker(url) as admin:
        declare_topology(admin)
        create_group(admin, "fogrp", {n: "peer" for n in NODES}, timeout=300)
    started = time.monotonic()
    barrier = barrier_process(url, f"sqlite:///{tmp_path / 'barrier.sqlite'}")
    barrier.start()
    clients = {
        n: TimedClient(url, "fogrp", n, {m: "peer" for m in NODES}, timeout=240) for n in NODES
    }
    progress = Progress(NODES)
    acked_at: dict[tuple[str, int], float] = {}
    done_at: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    gates = {r + GATE: threading.Event() for _, *points in KILLS for r in points}

    def node_main(node: str) -> None:
        client = clients[node]
        try:
            for rnd in range(1, ROUNDS + 1):
                if rnd in gates:
                    gates[rnd].wait(300)
                client.send(f"m-{node}-{rnd}", {"round": str(rnd)})
                with lock:
                    acked_at[(node, rnd)] = time.monotonic()
                client.sync("step")
                with lock:
                    done_at.append(time.monotonic())
                progress.done(node, rnd)
        except BaseException as exc:
            errors.append(exc)
            progress.done(node, ROUNDS + 1)

    threads = [threading.Thread(target=node_main, args=(n,), daemon=True) for n in NODES]
    for t in threads:
        t.start()
    kills: list[tuple[str, int, float, float]] = []
    try:
        for what, kill_at, restart_at in KILLS:
            assert progress.wait_all_reach(kill_at - GATE, 180), f"group stalled before {kill_at}"
            if what.startswith("barrier"):
                victim = cluster_vhost.leader_of("lava.barrier")
            else:
                victim = cluster.node_of_port(_port_of(clients["fo-a"]._broker.safe_url()))
            pid = cluster.node_pid(victim)
            assert progress.wait_all_reach(kill_at, 180), f"group stalled before round {kill_at}"
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            gates[kill_at + GATE].set()
            assert progress.wait_all_reach(restart_at, 180), (
                f"group stalled after killing node {victim} ({what})"
            )
            kills.append((what, victim, killed, time.monotonic()))
            cluster.start_missing_nodes()
            gates[restart_at + GATE].set()
        for t in threads:
            t.join(300)
        assert not errors, f"a node failed: {errors[0]!r}"
        assert all(not t.is_alive() for t in threads), "a node is still running"

        expected_sends = {("send", n, f"m-{n}-{r}") for n in NODES for r in range(1, ROUNDS + 1)}
        expected_releases = {("release", "sync", "step", str(g)) for g in range(1, ROUNDS + 1)}
        first_sync = first_sync_sends({n: "peer" for n in NODES}, "step")
        expected = expected_sends | expected_releases | first_sync
        wait_for(
            lambda: all(expected <= set(c.seen) for c in clients.values()),
            60,
            "every send and release at every node",
        )
        lost = sum(len(expected - set(c.seen)) for c in clients.values())
        duplicated = sum(
            count - 1 for c in clients.values() for count in c.seen.values() if count > 1
        )
        unexpected = {k for c in clients.values() for k in c.seen if k not in expected}
        dropped = sum(c.duplicates for c in clients.values())
        # generation g of "step" is round g: released only after all four acked it
        early = [
            (g, n)
            for c in clients.values()
            for g, at in c.released_at.items()
            for n in NODES
            if at < acked_at[(n, g)]
        ]
    finally:
        for c in clients.values():
            c.close()
        barrier.stop()

    stalls = []
    for what, victim, killed, recovered in kills:
        window = [killed, *sorted(t for t in done_at if killed <= t <= recovered)]
        stall = max(b - a for a, b in itertools.pairwise(window))
        stalls.append(f"kill -9 node {victim} ({what}): longest stall {stall:.2f} s")
    print("\n" + "\n".join(stalls))
    assert not unexpected, f"unexpected deliveries: {sorted(unexpected)[:5]}"
    assert lost == 0
    assert duplicated == 0
    assert not early, f"released before every acknowledgement: {early[:5]}"
    record_reliability(
        {
            "test": "cluster node kill -9 mid-group",
            "fault": "; ".join(stalls) + f"; {len(early)} released before every ack",
            "faults": len(kills),
            "sent": f"{len(expected_sends)} lava-send, {ROUNDS} lava-sync barriers "
            f"({ROUNDS * len(NODES)} sync calls)",
            "deliveries_expected": len(expected) * len(NODES),
            "lost": lost,
            "duplicated": duplicated,
            "duplicates_dropped": dropped,
            "seconds": round(time.monotonic() - started, 1),
        }
    )
