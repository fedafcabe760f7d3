"""One receiver per process: one queue read per group, handed to every local node.

On memory:// and on the real RabbitMQ. No barrier service is needed:
``lava-send``/``lava-wait`` are answered from each node's cache.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from barrier_lab import BarrierLab
from lab import MEMORY_AND_RABBIT, broker_url_for, wait_for

from broker_config import topology
from broker_config.consumer import Delivery
from coordinator.groups import end_group, fail_group
from device_agent import group_receiver
from device_agent.multinode import MultinodeClient
from schemas.errors import GroupFailed, InfrastructureError
from schemas.messages.multinode import MultinodeSendSchema

MEMBERS = {"n1": "server", "n2": "client", "n3": "client"}


class CountingClient(MultinodeClient):
    """Counts every message that reaches this node's state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.handled: Counter[str] = Counter()
        super().__init__(*args, **kwargs)

    def _on_message(self, delivery: Delivery) -> None:
        self.handled[str(delivery.body.get("message_id"))] += 1
        super()._on_message(delivery)


class Groups(BarrierLab):
    """The barrier harness without a barrier service, its clients counting."""

    def __init__(self, url: str) -> None:
        super().__init__(url, None)

    def create(self, members: dict[str, str] = MEMBERS) -> str:
        return self.create_group(members, timeout=20, prefix="r")

    def client(
        self, group: str, node: str, members: dict[str, str] = MEMBERS, **kwargs: Any
    ) -> CountingClient:
        client = super().client(group, node, members, cls=CountingClient, **kwargs)
        assert isinstance(client, CountingClient)
        return client

    def send_as(self, group: str, node: str, message_id: str, exchange_group: str = "") -> None:
        """A node's ``lava-send`` published from outside this process's clients."""
        self.broker.publish(
            topology.group_exchange_name(exchange_group or group),
            "",
            MultinodeSendSchema(),
            {"group": group, "node": node, "message_id": message_id, "data": {"k": "v"}},
        )


@pytest.fixture(params=MEMORY_AND_RABBIT)
def groups(request: pytest.FixtureRequest) -> Iterator[Groups]:
    groups = Groups(broker_url_for(request))
    try:
        yield groups
    finally:
        groups.close()


def test_one_queue_is_read_per_group_for_all_local_nodes(groups: Groups) -> None:
    g = groups.create()
    n1, n2, n3 = (groups.client(g, n) for n in MEMBERS)
    assert n1._receiver is n2._receiver is n3._receiver
    assert n1._receiver.lead_node(g) == "n1"

    n1.send("hello", {"a": "1"})
    assert n2.wait("hello") == {"n1": {"a": "1"}}
    assert n3.wait("hello") == {"n1": {"a": "1"}}
    # n1's queue is read and acknowledged; n2's and n3's keep their copy
    wait_for(lambda: groups.ready("n1", g) == 0, 10, "n1's queue drained")
    assert groups.ready("n2", g) == 1
    assert groups.ready("n3", g) == 1
    assert n2.handled["hello"] == n3.handled["hello"] == 1


def test_several_groups_share_one_receiver(groups: Groups) -> None:
    g1, g2 = groups.create(), groups.create()
    a = groups.client(g1, "n1")
    b = groups.client(g2, "n2")
    assert a._receiver is b._receiver
    groups.send_as(g1, "n2", "to-g1")
    groups.send_as(g2, "n1", "to-g2")
    assert a.wait("to-g1") == {"n2": {"k": "v"}}
    assert b.wait("to-g2") == {"n1": {"k": "v"}}
    assert "to-g2" not in a._state.messages and "to-g1" not in b._state.messages


def test_when_the_lead_node_leaves_its_queue_is_still_read(groups: Groups) -> None:
    g = groups.create()
    n1, n2 = groups.client(g, "n1"), groups.client(g, "n2")
    groups.send_as(g, "n3", "before")
    assert n2.wait("before") == {"n3": {"k": "v"}}

    n1.close()
    # n1's queue carries the group's whole stream until end_group: no hand-over
    assert n2._receiver.lead_node(g) == "n1"
    groups.send_as(g, "n3", "after")
    assert n2.wait("after") == {"n3": {"k": "v"}}
    assert n2.handled == Counter({"before": 1, "after": 1})
    assert groups.ready("n2", g) == 2  # n2's own copies: never read here
    assert groups.ready("n1", g) == 0


def test_a_local_node_whose_queue_expired_still_receives_after_the_lead_left(
    groups: Groups,
) -> None:
    """The expiry policy deletes a queue nobody consumed for 24 h: a non-lead
    local node's, in a long job. The process never needs it."""
    g, other = groups.create(), groups.create()
    keeper = groups.client(other, "n1")
    n1, n2 = groups.client(g, "n1"), groups.client(g, "n2")
    groups.broker.delete_queue(topology.group_queue_name(g, "n2"))
    n1.close()
    groups.send_as(g, "n3", "later")
    assert n2.wait("later", timeout=10) == {"n3": {"k": "v"}}
    groups.send_as(other, "n2", "other-group")
    assert keeper.wait("other-group", timeout=10) == {"n2": {"k": "v"}}


def test_a_node_attaching_to_a_group_read_here_starts_with_what_it_has(groups: Groups) -> None:
    """n2's own queue holds what was sent before it started, but it is not read:
    it starts with what the group's attached node has."""
    g = groups.create()
    n1 = groups.client(g, "n1")
    groups.send_as(g, "n3", "early")
    assert n1.wait("early") == {"n3": {"k": "v"}}

    n2 = groups.client(g, "n2")
    assert n2._receiver is n1._receiver and n2._receiver.lead_node(g) == "n1"
    assert n2.wait("early", timeout=2) == {"n3": {"k": "v"}}
    # what came before is not applied twice when it arrives again
    groups.send_as(g, "n3", "next")
    assert n2.wait("next") == {"n3": {"k": "v"}}
    assert n2.handled == Counter({"next": 1})


def test_a_resent_message_id_keeps_its_newest_data_for_a_late_node(groups: Groups) -> None:
    """n3 sends "m" before n2 starts and again after: the old copy in n2's own
    queue must never be applied over the new one (it is not read at all)."""
    g = groups.create()
    n1 = groups.client(g, "n1")
    groups.send_as(g, "n3", "m")
    assert n1.wait("m") == {"n3": {"k": "v"}}
    n2 = groups.client(g, "n2")
    groups.broker.publish(
        topology.group_exchange_name(g),
        "",
        MultinodeSendSchema(),
        {"group": g, "node": "n3", "message_id": "m", "data": {"k": "new"}},
    )
    wait_for(lambda: n2.handled["m"] == 1, 10, "n2 got the second send")
    n1.close()
    groups.send_as(g, "n3", "marker")
    assert n2.wait("marker") == {"n3": {"k": "v"}}
    # data of a re-sent id accumulates (LAVA): the newest value of k wins
    assert n2.wait("m") == {"n3": {"k": "new"}}


def test_a_node_attaching_to_a_failed_group_sees_the_failure_at_once(groups: Groups) -> None:
    g = groups.create()
    n1 = groups.client(g, "n1")
    fail_group(groups.broker, g, "board n3 lost power")
    with pytest.raises(GroupFailed, match="lost power"):
        n1.wait("anything", timeout=10)
    n2 = groups.client(g, "n2")
    with pytest.raises(GroupFailed, match="lost power"):
        n2.wait("anything", timeout=10)


def test_the_last_two_nodes_leaving_at_once_leave_no_queue_read(groups: Groups) -> None:
    other = groups.create()
    keeper = groups.client(other, "n1")  # keeps the receiver running
    receiver = keeper._receiver
    for _ in range(5):
        g = groups.create()
        n1, n2 = groups.client(g, "n1"), groups.client(g, "n2")
        threads = [threading.Thread(target=c.close) for c in (n1, n2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert receiver.lead_node(g) is None
        wait_for(lambda: not receiver.consumer._changes, 10, "queue changes applied")
        consumed = [q.name for q in receiver.consumer.queues]
        assert not [name for name in consumed if name.startswith(f"lava.group.{g}.")], consumed


def test_a_read_queue_deleted_under_the_receiver_does_not_stop_other_groups(
    groups: Groups,
) -> None:
    """A queue being read is deleted (its group ended elsewhere, or expired):
    the broker cancels that consumer; the receiver goes on with the others."""
    g, other = groups.create(), groups.create()
    keeper = groups.client(other, "n1")
    groups.client(g, "n1")
    groups.broker.delete_queue(topology.group_queue_name(g, "n1"))
    groups.send_as(other, "n2", "still-there")
    assert keeper.wait("still-there", timeout=10) == {"n2": {"k": "v"}}
    assert keeper._receiver._thread.is_alive()


@pytest.fixture
def rabbit_groups(rabbit_url: str) -> Iterator[Groups]:
    g = Groups(rabbit_url)
    try:
        yield g
    finally:
        g.close()


@pytest.mark.integration
def test_a_node_of_a_group_that_ended_stops_at_once_naming_it(rabbit_groups: Groups) -> None:
    """A node whose assignment outlived its group (the job was canceled while
    the assignment was queued): end_group deleted its queue; the node fails
    before anything runs, not after a timeout. (RabbitMQ only: the memory
    transport consumes a missing queue without complaint.)"""
    groups = rabbit_groups
    g = groups.create()
    end_group(groups.broker, g, MEMBERS)
    groups.groups.remove((g, MEMBERS))
    with pytest.raises(InfrastructureError, match=f"group {g} has ended") as info:
        groups.client(g, "n1")
    assert "canceled or failed before this node started" in str(info.value)
    assert groups.url not in group_receiver._receivers  # nothing left running


def test_an_attach_after_the_receiver_died_starts_a_new_one(groups: Groups) -> None:
    g = groups.create()
    n1 = groups.client(g, "n1")
    dead = n1._receiver
    dead.consumer.stop()  # as if its thread had died
    dead._thread.join(10)
    n2 = groups.client(g, "n2")
    assert n2._receiver is not dead and n2._receiver._thread.is_alive()
    groups.send_as(g, "n3", "hello")
    assert n2.wait("hello") == {"n3": {"k": "v"}}


def test_a_node_joining_after_its_group_left_reads_the_whole_history(groups: Groups) -> None:
    g, other = groups.create(), groups.create()
    # keeps the receiver running while group g has no local node
    keeper = groups.client(other, "n3")
    groups.send_as(g, "n3", "early")
    n1 = groups.client(g, "n1")
    assert n1.wait("early") == {"n3": {"k": "v"}}
    n1.close()
    assert keeper._receiver.lead_node(g) is None

    n2 = groups.client(g, "n2")
    assert n2._receiver is keeper._receiver
    assert n2.wait("early", timeout=10) == {"n3": {"k": "v"}}


def test_a_body_naming_another_group_than_its_exchange_is_ignored(groups: Groups) -> None:
    g1, g2 = groups.create(), groups.create()
    a = groups.client(g1, "n1")
    b = groups.client(g2, "n1")
    # published to g1's exchange, claiming to be of g2
    groups.send_as(g2, "n2", "forged", exchange_group=g1)
    groups.send_as(g1, "n2", "real")
    assert a.wait("real") == {"n2": {"k": "v"}}
    # FIFO: the forged one came first through g1's queue and was dropped
    assert "forged" not in a._state.messages and "forged" not in b._state.messages


def test_the_receiver_stops_with_its_last_node(groups: Groups) -> None:
    g = groups.create()
    n1 = groups.client(g, "n1")
    receiver = n1._receiver
    assert group_receiver._receivers.get(groups.url) is receiver
    n1.close()
    assert groups.url not in group_receiver._receivers
    assert receiver.consumer.stopped
    receiver._thread.join(10)
    assert not receiver._thread.is_alive()
