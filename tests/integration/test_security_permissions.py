"""Least privilege with real broker users: each host confined, identities unforgeable.

Users are made by ``lavamq broker add-host`` / ``add-service`` (with unique
names: users are global on the shared broker) and deleted afterwards.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import amqp
import pytest
from barrier_lab import BarrierLab
from click.testing import CliRunner
from faults import dead_letters, raw_channel

import services
from broker_config import identity, permissions, topology
from broker_config.broker import Broker
from broker_config.declare import ManagementAPI, declare_topology
from broker_config.errors import AccessRefused
from device_agent.bridge import Bridge
from device_agent.console import ScriptedConsole
from lavamq.cli import main
from schemas.messages.base import encode
from schemas.messages.jobs import SubJobAssignmentSchema, SubmitRequestSchema
from schemas.messages.multinode import (
    MultinodeReleaseSchema,
    MultinodeSendSchema,
    MultinodeSyncSchema,
)

pytestmark = pytest.mark.integration


@dataclass
class Lab:
    admin: str
    vhost: services.RabbitVhost
    host_a: str
    host_b: str
    dev_a: str
    dev_b: str
    url_a: str
    url_b: str
    coordinator: str
    barrier: str
    users: list[str]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def lab(rabbit_vhost: services.RabbitVhost) -> Iterator[Lab]:
    admin = rabbit_vhost.url()
    with Broker(admin) as b:
        declare_topology(b)
    tag = uuid.uuid4().hex[:8]
    host_a, host_b = f"sec-a-{tag}", f"sec-b-{tag}"
    dev_a, dev_b = f"deva-{tag}", f"devb-{tag}"
    password = uuid.uuid4().hex
    users: list[str] = []
    try:
        for host, dev in ((host_a, dev_a), (host_b, dev_b)):
            users.append(identity.host_user(host))
            out = _cli(
                "broker", "add-host", host, "--device", dev, "--password", password,
                "--broker", admin,
            )  # fmt: skip
            assert f"user {identity.host_user(host)}" in out
        coord_user = f"{identity.COORDINATOR_USER}-{tag}"
        barrier_user = f"{identity.BARRIER_USER}-{tag}"
        for service, user in (("coordinator", coord_user), ("barrier", barrier_user)):
            users.append(user)
            _cli("broker", "add-service", service, "--user", user, "--password", password,
                 "--broker", admin)  # fmt: skip
        yield Lab(
            admin=admin,
            vhost=rabbit_vhost,
            host_a=host_a,
            host_b=host_b,
            dev_a=dev_a,
            dev_b=dev_b,
            url_a=rabbit_vhost.url(identity.host_user(host_a), password),
            url_b=rabbit_vhost.url(identity.host_user(host_b), password),
            coordinator=rabbit_vhost.url(coord_user, password),
            barrier=rabbit_vhost.url(barrier_user, password),
            users=users,
        )
    finally:
        api = ManagementAPI.from_broker_url(admin)
        for user in users:
            permissions.remove_user(api, user)


def _assignment(device: str) -> dict[str, Any]:
    return {
        "job_id": 1,
        "subjob_id": 1,
        "group": "g1",
        "node": device,
        "role": "r",
        "device": device,
        "device_type": "qemu",
        "members": {device: "r"},
        "plan": {},
        "timeouts": {"action": 10, "multinode": 10},
        "join_deadline": 0,
    }


def test_host_cannot_consume_another_hosts_device_queue(lab: Lab) -> None:
    """Failure covered: host A reads host B's sub-jobs (and so runs or drops them)."""
    conn, channel = raw_channel(lab.url_a)
    try:
        channel.basic_consume(topology.device_queue_name(lab.dev_a), callback=lambda m: None)
        with pytest.raises(amqp.exceptions.AccessRefused):
            channel.basic_consume(topology.device_queue_name(lab.dev_b), callback=lambda m: None)
    finally:
        conn.collect()
    # nor may it redeclare, delete or purge anything
    conn, channel = raw_channel(lab.url_a)
    try:
        with pytest.raises(amqp.exceptions.AccessRefused):
            channel.queue_delete(topology.device_queue_name(lab.dev_a))
    finally:
        conn.collect()


def _refused(url: str, act: Any) -> bool:
    """``act(channel)`` as the user of ``url`` on a bare py-amqp channel: was it refused?"""
    conn, channel = raw_channel(url)
    try:
        act(channel)
    except amqp.exceptions.AccessRefused:
        return True
    finally:
        conn.collect()
    return False


def test_host_cannot_purge_or_delete_another_hosts_device_queue(lab: Lab) -> None:
    """Failure covered: host A empties or removes host B's queue of sub-jobs (B's
    jobs then never start), or takes its messages by purging its own."""
    for queue in (lab.dev_b, lab.dev_a):
        name = topology.device_queue_name(queue)
        assert _refused(lab.url_a, lambda ch, name=name: ch.queue_delete(name))
    assert _refused(lab.url_a, lambda ch: ch.queue_purge(topology.device_queue_name(lab.dev_b)))
    conn, channel = raw_channel(lab.admin)
    try:
        assert channel.queue_declare(topology.device_queue_name(lab.dev_b), passive=True)
    finally:
        conn.close()


def test_host_cannot_read_another_groups_or_hosts_node_queue(lab: Lab) -> None:
    """Failure covered: host A reads what the group sends to host B's node (in A's own
    group or any other): its messages, sync releases, the data of a lava-send."""
    groups = ("secg-1", "secg-2")
    with Broker(lab.admin) as admin:
        for group in groups:
            admin.declare(topology.group_exchange(group))
            for device in (lab.dev_a, lab.dev_b):
                admin.declare(topology.group_queue(group, device))
    for group in groups:
        theirs = topology.group_queue_name(group, lab.dev_b)
        assert _refused(lab.url_a, lambda ch, q=theirs: ch.basic_get(q))
        assert _refused(lab.url_a, lambda ch, q=theirs: ch.basic_consume(q, callback=print))
        assert _refused(lab.url_a, lambda ch, q=theirs: ch.queue_purge(q))
        # its own node's queue it reads
        mine = topology.group_queue_name(group, lab.dev_a)
        assert not _refused(lab.url_a, lambda ch, q=mine: ch.basic_get(q))


def test_host_cannot_submit_or_call_the_coordinator(lab: Lab) -> None:
    """Failure covered: a host's broker user sends RPC requests (submit, cancel) on
    ``lava.rpc``: refused by the broker before any coordinator sees them."""
    body = encode(SubmitRequestSchema(), {"method": "submit", "definition": "job_name: x"})
    for exchange in (topology.RPC_EXCHANGE_NAME, topology.DEVICE_EXCHANGE_NAME):
        _publish_refused(lab.url_a, body, "submit", exchange, topology.RPC_ROUTING_KEY)
    assert _ready(lab, topology.RPC_QUEUE_NAME) == 0


def test_host_cannot_publish_a_subjob_or_use_the_default_exchange(lab: Lab) -> None:
    """Failure covered: host A hands a sub-job to host B's device, directly or by
    publishing on the default exchange (which reaches every queue by name)."""
    with Broker(lab.url_a) as host_a, pytest.raises(AccessRefused):
        host_a.publish(
            topology.DEVICE_EXCHANGE_NAME,
            topology.device_routing_key(lab.dev_b),
            SubJobAssignmentSchema(),
            _assignment(lab.dev_b),
        )
    body = encode(SubJobAssignmentSchema(), _assignment(lab.dev_b))
    queue = topology.device_queue_name(lab.dev_b)
    _publish_refused(lab.url_a, body, "subjob-assignment", "", queue)
    assert _ready(lab, queue) == 0


def _publish_refused(url: str, body: bytes, kind: str, exchange: str, key: str) -> None:
    """A publish as ``url``'s user, refused by the broker (the channel is closed)."""
    conn, channel = raw_channel(url)
    try:
        channel.basic_publish(amqp.Message(body, type=kind), exchange=exchange, routing_key=key)
        with pytest.raises(amqp.exceptions.AccessRefused):
            conn.drain_events(timeout=5)
    finally:
        conn.collect()


def _ready(lab: Lab, queue: str) -> int:
    """Messages ready in ``queue``, as the admin sees them."""
    conn, channel = raw_channel(lab.admin)
    try:
        return int(channel.queue_declare(queue, passive=True).message_count)
    finally:
        conn.close()


def test_forged_user_id_is_refused_by_the_broker(lab: Lab) -> None:
    """Failure covered: host A stamps the barrier's (or host B's) user_id on a message."""
    for forged in (identity.BARRIER_USER, identity.host_user(lab.host_b)):
        conn, channel = raw_channel(lab.url_a)
        try:
            channel.confirm_select()
            with pytest.raises(amqp.exceptions.PreconditionFailed, match="user_id"):
                channel.basic_publish(
                    amqp.Message(b"{}", type="multinode-release", user_id=forged),
                    exchange=topology.BARRIER_EXCHANGE_NAME,
                    routing_key=topology.BARRIER_ROUTING_KEY,
                    confirm_timeout=5,
                )
                conn.drain_events(timeout=5)
        finally:
            conn.collect()


def test_host_cannot_release_a_barrier_nor_speak_as_another_node(lab: Lab, tmp_path: Path) -> None:
    """Failure covered: host A releases a sync barrier for the group, or sends
    data / sync acknowledgements as host B's node; and a DUT's console text
    (``node=...`` in a lava-send) makes a node speak for another."""
    members = {lab.dev_a: "client", lab.dev_b: "server"}
    owners = {lab.dev_a: identity.host_user(lab.host_a), lab.dev_b: identity.host_user(lab.host_b)}
    # the barrier as its own user; the group made by the coordinator's
    barrier = BarrierLab(
        lab.barrier,
        f"sqlite:///{tmp_path / 'barrier.sqlite'}",
        admin_url=lab.coordinator,
        declare=False,
    )
    try:
        group = barrier.create_group(members, timeout=30, owners=owners, prefix="secg-")
        client_a = barrier.client(
            group, lab.dev_a, members, timeout=10, owners=owners, url=lab.url_a
        )
        client_b = barrier.client(
            group, lab.dev_b, members, timeout=10, owners=owners, url=lab.url_b
        )
        with Broker(lab.url_a) as host_a:
            # a fake release on the group exchange (host A may write there to lava-send)
            host_a.publish(
                topology.group_exchange_name(group),
                "",
                MultinodeReleaseSchema(),
                {"group": group, "kind": "sync", "message_id": "go", "generation": 1},
            )
            # data as if host B's node sent it
            host_a.publish(
                topology.group_exchange_name(group),
                "",
                MultinodeSendSchema(),
                {"group": group, "node": lab.dev_b, "message_id": "ready", "data": {"x": "1"}},
            )
            # host B's sync acknowledgement, forged by host A at the barrier
            host_a.publish(
                topology.BARRIER_EXCHANGE_NAME,
                topology.BARRIER_ROUTING_KEY,
                MultinodeSyncSchema(),
                {"group": group, "node": lab.dev_b, "message_id": "go", "generation": 1},
            )
        # fake release + fake send reach both nodes' queues (2 each), the
        # forged sync reaches the barrier: 5 rejections, each with its reason
        dead = dead_letters(lab.admin, 5)
        reasons = sorted(str(m.headers[topology.REJECT_REASON_HEADER]) for m in dead)
        assert all(r.startswith("unauthorized: ") for r in reasons), reasons
        assert sum("multinode-release from broker user" in r for r in reasons) == 2
        assert sum(f"multinode-send as node '{lab.dev_b}'" in r for r in reasons) == 2
        assert sum(f"multinode-sync as node '{lab.dev_b}'" in r for r in reasons) == 1
        assert "ready" not in client_a._state.messages

        # a DUT on host A names another node in its lava-send: the bridge
        # speaks only for its own node, so the peer sees it from dev_a
        console = ScriptedConsole("dut-a")
        bridge = Bridge(console, client_a, timeout=10).start()
        console.feed_output(f"<LAVA_MULTI_NODE> <LAVA_SEND hello node={lab.dev_b} group=other>\r\n")
        assert bridge.wait_idle(10)
        bridge.close()
        got = client_b.wait("hello", timeout=10)
        assert list(got) == [lab.dev_a]
        assert got[lab.dev_a]["node"] == lab.dev_b  # just data, not identity

        # the genuine sync still works: only the barrier's release counts,
        # and it needs both real acknowledgements
        done: list[str] = []

        def sync_b() -> None:
            client_b.sync("go")
            done.append("b")

        t = threading.Thread(target=sync_b)
        t.start()
        client_a.sync("go")
        t.join(15)
        assert done == ["b"]
    finally:
        barrier.close()


def test_service_users_reach_only_what_they_need(lab: Lab) -> None:
    """Failure covered: the barrier service's user consumes sub-jobs or submits
    jobs (a stolen barrier password must not hand out the lab)."""
    conn, channel = raw_channel(lab.barrier)
    try:
        with pytest.raises(amqp.exceptions.AccessRefused):
            channel.basic_consume(topology.device_queue_name(lab.dev_a), callback=lambda m: None)
    finally:
        conn.collect()
    with Broker(lab.barrier) as b, pytest.raises(AccessRefused):
        b.publish(
            topology.DEVICE_EXCHANGE_NAME,
            topology.device_routing_key(lab.dev_a),
            SubJobAssignmentSchema(),
            _assignment(lab.dev_a),
        )
