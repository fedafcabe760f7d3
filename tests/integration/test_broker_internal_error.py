"""The broker closing connections with 541 INTERNAL_ERROR is a lost connection, not a bug.

RabbitMQ closes a connection with ``connection.close`` 541 INTERNAL_ERROR when
it fails itself; on a cluster a consumer of a quorum queue whose majority is
away gets it after about 65 s (measured on ``scripts/rabbitmq-cluster.sh``
with two of three nodes killed). Consumers used to treat it as a bug and
stop: the barrier service exited ("lavamq bug: InternalError"), and a
process's MultiNode receiver thread ended, so its nodes' ``lava-sync``
waited until their timeout.

Through ``tests.faults.BrokerProxy`` every connection of a real ``lavamq
barrier`` process and of two nodes gets that close between two rounds of
syncs, twice; each reconnects and every round releases.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from faults import BrokerProxy, CountingClient, Progress, wait_for
from lab import barrier_process

from broker_config.broker import Broker
from broker_config.declare import declare_topology
from coordinator.groups import create_group

pytestmark = pytest.mark.integration

NODES = ["ie-a", "ie-b"]
ROUNDS = 12
FAILURES_AT = (4, 8)


def test_connections_closed_with_internal_error_reconnect_and_release(
    rabbit_url: str, tmp_path: Path
) -> None:
    members = {n: "peer" for n in NODES}
    with Broker(rabbit_url) as admin:
        declare_topology(admin)
        create_group(admin, "iegrp", members, timeout=120)
    with BrokerProxy() as proxy:
        purl = proxy.url(rabbit_url)
        barrier = barrier_process(purl, f"sqlite:///{tmp_path / 'barrier.sqlite'}")
        barrier.start()
        # the timeout is longer than the test: a receiver that died is a hung
        # round (the progress wait fails), not a timeout that hides it
        clients = {n: CountingClient(purl, "iegrp", n, members, timeout=600) for n in NODES}
        progress = Progress(NODES)
        gates = {at + 1: threading.Event() for at in FAILURES_AT}
        errors: list[BaseException] = []

        def node_main(node: str) -> None:
            try:
                for rnd in range(1, ROUNDS + 1):
                    if rnd in gates:
                        gates[rnd].wait(60)
                    clients[node].send(f"m-{node}-{rnd}")
                    clients[node].sync("step")
                    progress.done(node, rnd)
            except BaseException as exc:
                errors.append(exc)
                progress.done(node, ROUNDS + 1)

        threads = [threading.Thread(target=node_main, args=(n,), daemon=True) for n in NODES]
        for t in threads:
            t.start()
        closed = 0
        try:
            for at in FAILURES_AT:
                assert progress.wait_all_reach(at, 60), f"group stalled before round {at}"
                closed += proxy.broker_failure()
                gates[at + 1].set()
            assert progress.wait_all_reach(ROUNDS, 90), (
                "a round did not release after the broker closed connections with 541: "
                + barrier.text()[-2000:]
            )
            for t in threads:
                t.join(30)
            assert not errors, f"a node failed: {errors[0]!r}"
            expected = {("release", "sync", "step", str(g)) for g in range(1, ROUNDS + 1)}
            wait_for(
                lambda: all(expected <= set(c.seen) for c in clients.values()),
                30,
                "every release at every node",
            )
            assert barrier.proc is not None and barrier.proc.poll() is None, (
                "the barrier exited: " + barrier.text()[-2000:]
            )
            assert "lavamq bug" not in barrier.text()
        finally:
            for c in clients.values():
                c.close()
            barrier.stop()
        # the barrier's two connections and each node's publisher and receiver, twice
        assert closed >= 2 * (len(NODES) + 2)
