"""Transient releases, and how a node gets back one the broker lost.

The barrier publishes releases transient; a node asks again after its
receiver reconnects (``multinode-query``), and a node that times out on a
barrier already released is sent the release instead of a failure.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from barrier_lab import BarrierLab
from faults import BrokerProxy
from lab import wait_for
from sqlalchemy import func, select

from broker_config import topology
from coordinator.barrier import BarrierService, release_message_id
from coordinator.barrier_models import BarrierOutbox
from device_agent.multinode import MultinodeClient
from schemas.messages.base import decode
from schemas.messages.multinode import (
    MultinodeQuerySchema,
    MultinodeReleaseSchema,
    MultinodeSendSchema,
    MultinodeSyncSchema,
)

PAIR = {"a": "server", "b": "client"}


@pytest.fixture
def barrier(barrier_lab: BarrierLab) -> BarrierLab:
    """The barrier harness with one group of ``PAIR``."""
    barrier_lab.create_group(PAIR, prefix="q")
    return barrier_lab


def _release(barrier: BarrierLab, node: str) -> tuple[dict[str, Any], dict[str, Any]]:
    message = barrier.take(node)
    assert message.properties["type"] == "multinode-release"
    return decode(MultinodeReleaseSchema(), message.body), dict(message.properties)


def _sync_release(barrier: BarrierLab, node: str) -> dict[str, Any]:
    """The next sync release in ``node``'s queue.

    A client's first ``lava-sync`` of an id also sends it (as LAVA documents), so
    its send and the wait-all releases that send completes come first.
    """
    while True:
        message = barrier.take(node)
        if message.properties["type"] == "multinode-release":
            release = decode(MultinodeReleaseSchema(), message.body)
            if release["kind"] == "sync":
                return release


def test_a_query_gets_a_decided_release_again_under_the_same_id(barrier: BarrierLab) -> None:
    sync = MultinodeSyncSchema()
    for node in PAIR:
        barrier.to_barrier(sync, {"node": node, "message_id": "go", "generation": 1})
    first, props = _release(barrier, "b")
    assert (first["kind"], first["message_id"], first["generation"]) == ("sync", "go", 1)
    assert props["message_id"] == release_message_id(barrier.group, first)
    if barrier.url.startswith("amqp"):
        assert props["delivery_mode"] == 1  # transient

    # not released yet: the barrier ignores the question; then one that is
    query = MultinodeQuerySchema()
    barrier.to_barrier(query, {"node": "b", "kind": "sync", "message_id": "go", "generation": 2})
    barrier.to_barrier(query, {"node": "b", "kind": "sync", "message_id": "go", "generation": 1})
    again, again_props = _release(barrier, "b")
    assert again == first
    assert again_props["message_id"] == props["message_id"]

    # asked again on the same barrier connection: the copy already in every
    # node queue answers it (after a broker restart all waiting nodes ask)
    barrier.to_barrier(query, {"node": "a", "kind": "sync", "message_id": "go", "generation": 1})
    for node in PAIR:
        barrier.to_barrier(sync, {"node": node, "message_id": "go", "generation": 2})
    # FIFO: the next message is generation 2's release, no third copy of 1
    second, _ = _release(barrier, "b")
    assert second["generation"] == 2
    assert barrier.ready("b") == 0


def _unpublished(service: BarrierService) -> int:
    with service.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(BarrierOutbox)
                .where(BarrierOutbox.published.is_(False))
            )
            or 0
        )


def test_a_release_is_marked_by_the_next_batch_or_published_again_after_a_crash(
    barrier: BarrierLab, tmp_path: Path
) -> None:
    sync = MultinodeSyncSchema()
    for node in PAIR:
        barrier.to_barrier(sync, {"node": node, "message_id": "go", "generation": 1})
    first, props = _release(barrier, "a")
    assert first["generation"] == 1
    # published, not yet marked: no transaction of its own
    assert _unpublished(barrier.service) == 1

    # the next batch marks it in its own transaction
    barrier.to_barrier(sync, {"node": "a", "message_id": "go", "generation": 2})
    wait_for(lambda: _unpublished(barrier.service) == 0, 10, "the outbox row marked")

    # a crash before the next batch: the mark is lost with the process, and
    # the next instance publishes the release again under the same id
    barrier.to_barrier(sync, {"node": "b", "message_id": "go", "generation": 2})
    second, second_props = _release(barrier, "a")
    assert second["generation"] == 2
    assert _unpublished(barrier.service) == 1
    barrier.service.outbox.unmarked.clear()
    barrier.service.stop()
    barrier.service = BarrierService(barrier.url, f"sqlite:///{tmp_path / 'barrier.sqlite'}")
    barrier.service.start()
    again, again_props = _release(barrier, "a")
    assert again == second
    assert again_props["message_id"] == second_props["message_id"] != props["message_id"]
    wait_for(lambda: _unpublished(barrier.service) == 0, 10, "the republished row marked")

    # a clean stop marks what it published
    for node in PAIR:
        barrier.to_barrier(sync, {"node": node, "message_id": "go", "generation": 3})
    assert _release(barrier, "a")[0]["generation"] == 3
    assert _unpublished(barrier.service) == 1
    barrier.service.stop()
    assert _unpublished(barrier.service) == 0


def test_a_wait_all_release_is_asked_for_by_role(barrier: BarrierLab) -> None:
    barrier.to_barrier(
        MultinodeSendSchema(), {"node": "a", "message_id": "up", "data": {"ip": "10.0.0.1"}}
    )
    release, _ = _release(barrier, "b")
    assert (release["kind"], release["role"]) == ("wait-all", "server")
    barrier.to_barrier(
        MultinodeQuerySchema(),
        {"node": "b", "kind": "wait-all", "message_id": "up", "role": "server"},
    )
    assert _release(barrier, "b")[0] == release


def test_a_timeout_on_a_released_barrier_gets_the_release_not_a_failure(
    barrier: BarrierLab,
) -> None:
    """A node whose release was lost reports a timeout; the barrier had it released."""
    b = MultinodeClient(barrier.url, barrier.group, "b", PAIR, timeout=30)
    try:
        barrier.to_barrier(MultinodeSyncSchema(), {"node": "a", "message_id": "s", "generation": 1})
        result: list[Any] = []

        def sync_b() -> None:
            b.sync("s", timeout=3)
            result.append("released")

        waiter = threading.Thread(target=sync_b)
        # b's own release is consumed before b sees it: as if the broker lost it
        b._receiver.consumer.remove_queue(topology.group_queue_name(barrier.group, "b"))
        waiter.start()
        assert _sync_release(barrier, "b")["message_id"] == "s"
        b._receiver.consumer.add_queue(topology.group_queue(barrier.group, "b"))
        waiter.join(20)
        assert not waiter.is_alive()
        assert result == ["released"]  # sync returned: released, not failed
        assert b._state.failure is None
    finally:
        b.close()


@pytest.mark.integration
def test_a_release_lost_with_the_broker_is_asked_for_after_reconnecting(
    rabbit_url: str, tmp_path: Path
) -> None:
    """Node a's receiver is cut off; its transient release is dropped meanwhile (what
    a broker restart does to it); after reconnecting, a asks and gets it."""
    barrier = BarrierLab(rabbit_url, f"sqlite:///{tmp_path / 'barrier.sqlite'}")
    barrier.create_group(PAIR, prefix="q")
    with BrokerProxy() as proxy:
        a = MultinodeClient(proxy.url(rabbit_url), barrier.group, "a", PAIR, timeout=60)
        try:
            result: list[Any] = []

            def sync_a() -> None:
                a.sync("s")
                result.append("released")

            waiter = threading.Thread(target=sync_a)
            waiter.start()
            wait_for(lambda: a.waiting_for(), 10, "a waiting in lava-sync")
            proxy.down()
            barrier.to_barrier(
                MultinodeSyncSchema(), {"node": "b", "message_id": "s", "generation": 1}
            )
            # the release reaches a's queue while a is away; drop every copy
            wait_for(lambda: barrier.ready("a") >= 1, 10, "the release in a's queue")
            barrier.broker.channel().queue_purge(topology.group_queue_name(barrier.group, "a"))
            assert waiter.is_alive()
            proxy.up()
            waiter.join(30)
            assert not waiter.is_alive(), "a's sync was not released after reconnecting"
            assert result == ["released"]
            assert a._receiver.connects >= 2
        finally:
            a.close()
            barrier.close()
