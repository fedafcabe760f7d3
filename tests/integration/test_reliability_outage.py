"""Broker outages in the middle of a running MultiNode group.

Every client (the nodes' MultinodeClients and a real ``lavamq barrier``
process) reaches RabbitMQ through ``tests.faults.BrokerProxy``; the test cuts
every connection at once and refuses reconnects for a while, several times,
while the group is between syncs and sending.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from faults import (
    BrokerProxy,
    CountingClient,
    Progress,
    first_sync_sends,
    record_reliability,
    wait_for,
)
from lab import barrier_process

from broker_config.broker import Broker
from broker_config.declare import declare_topology
from coordinator.groups import create_group

pytestmark = pytest.mark.integration

NODES = ["rel-a", "rel-b", "rel-c", "rel-d"]
ROUNDS = 100
SENDS_PER_ROUND = 3
OUTAGES_AT = (20, 45, 70)


@pytest.mark.parametrize("fault", ["broker-outage", "barrier-sigkill"])
def test_faults_mid_group_lose_and_duplicate_nothing(
    rabbit_url: str, tmp_path: Path, fault: str
) -> None:
    """Failures covered: (broker-outage) the broker goes away — every
    connection cut, reconnects refused — three times while a 4-node group
    sends and syncs; (barrier-sigkill) the barrier service is SIGKILLed three
    times at those points and restarted. Every client and the barrier service
    reconnect, re-declare and resume; of 1,200 lava-send and 100 lava-sync
    barriers nothing is lost, every barrier releases exactly once, and nothing
    reaches a waiter twice.
    """
    with Broker(rabbit_url) as admin:
        declare_topology(admin)
        create_group(admin, "relgrp", {n: "peer" for n in NODES}, timeout=120)

    started = time.monotonic()
    with BrokerProxy() as proxy:
        purl = proxy.url(rabbit_url)
        barrier = barrier_process(purl, f"sqlite:///{tmp_path / 'barrier.sqlite'}")
        barrier.start()
        clients = {
            n: CountingClient(purl, "relgrp", n, {m: "peer" for m in NODES}, timeout=90)
            for n in NODES
        }
        progress = Progress(NODES)
        errors: list[BaseException] = []

        def node_main(node: str) -> None:
            client = clients[node]
            try:
                for rnd in range(1, ROUNDS + 1):
                    for k in range(SENDS_PER_ROUND):
                        client.send(f"m-{node}-{rnd}-{k}", {"round": str(rnd), "k": str(k)})
                    client.sync("step")
                    progress.done(node, rnd)
            except BaseException as exc:
                errors.append(exc)
                progress.done(node, ROUNDS + 1)

        threads = [threading.Thread(target=node_main, args=(n,), daemon=True) for n in NODES]
        for t in threads:
            t.start()
        cut_connections = 0
        for at in OUTAGES_AT:
            assert progress.wait_all_reach(at, 60), f"group stalled before round {at}"
            if fault == "broker-outage":
                cut_connections += proxy.outage(refuse_attempts=2)
            else:
                barrier.restart()
        for t in threads:
            t.join(120)
        try:
            assert not errors, f"a node failed: {errors[0]!r}"
            assert all(not t.is_alive() for t in threads), "a node is still running"

            expected_sends = {
                ("send", n, f"m-{n}-{r}-{k}")
                for n in NODES
                for r in range(1, ROUNDS + 1)
                for k in range(SENDS_PER_ROUND)
            }
            expected_releases = {("release", "sync", "step", str(g)) for g in range(1, ROUNDS + 1)}
            first_sync = first_sync_sends({n: "peer" for n in NODES}, "step")
            expected = expected_sends | expected_releases | first_sync

            def complete() -> bool:
                return all(expected <= set(c.seen) for c in clients.values())

            # deliveries already confirmed may still be in flight to a consumer
            wait_for(complete, 30, "every send and release at every node")
            lost = sum(len(expected - set(c.seen)) for c in clients.values())
            duplicated = sum(
                count - 1 for c in clients.values() for count in c.seen.values() if count > 1
            )
            unexpected = {k for c in clients.values() for k in c.seen if k not in expected}
            dropped = sum(c.duplicates for c in clients.values())
        finally:
            for c in clients.values():
                c.close()
            barrier.stop()

        if fault == "broker-outage":
            assert proxy.cuts == len(OUTAGES_AT) and cut_connections >= len(NODES) + 1
            assert proxy.refused >= 2 * len(OUTAGES_AT)
            what = (
                f"{len(OUTAGES_AT)} broker outages via proxy "
                f"({cut_connections} connections cut, {proxy.refused} reconnects refused)"
            )
        else:
            assert barrier.kills == len(OUTAGES_AT) and barrier.starts == len(OUTAGES_AT) + 1
            what = f"barrier service SIGKILLed and restarted {barrier.kills} times"
        assert not unexpected, f"unexpected deliveries: {sorted(unexpected)[:5]}"
        assert lost == 0
        assert duplicated == 0, [
            (k, n) for c in clients.values() for k, n in c.seen.items() if n > 1
        ]
        record_reliability(
            {
                "test": f"{fault} mid-group",
                "fault": what,
                "faults": len(OUTAGES_AT),
                "sent": f"{len(expected_sends)} lava-send, {ROUNDS} lava-sync barriers "
                f"({ROUNDS * len(NODES)} sync calls)",
                "deliveries_expected": len(expected) * len(NODES),
                "lost": lost,
                "duplicated": duplicated,
                "duplicates_dropped": dropped,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
