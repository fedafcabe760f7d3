"""Several ``lavamq barrier`` processes share the groups, one owner per shard.

With ``LAVAMQ_BARRIER_SHARDS=4`` every group's barrier messages go to the
queue of its shard (crc32 of the group id); each shard queue has a single
active consumer. Two real barrier processes sharing one PostgreSQL store
prefer two shards each and stand by for the other two. The test checks
which connection RabbitMQ lets consume each shard, runs a sync in eight
groups spread over the shards, kills one barrier with SIGKILL, and checks
that the other took its shards over and every group still releases, once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from faults import CountingClient, ServiceProcess, first_sync_sends, wait_for

import services
from broker_config import topology
from broker_config.broker import Broker
from broker_config.declare import declare_topology
from coordinator.barrier import READY_LINE
from coordinator.groups import create_group

pytestmark = pytest.mark.integration

SHARDS = 4
MEMBERS = {"a": "peer", "b": "peer"}


def _groups_per_shard(per_shard: int) -> list[str]:
    groups: list[str] = []
    counts = dict.fromkeys(range(SHARDS), 0)
    while min(counts.values()) < per_shard:
        group = f"sh-{uuid.uuid4().hex[:10]}"
        shard = topology.barrier_shard_of(group, SHARDS)
        if counts[shard] < per_shard:
            counts[shard] += 1
            groups.append(group)
    return groups


def _active_consumers(vhost: services.RabbitVhost) -> dict[int, str]:
    """Shard → the connection RabbitMQ delivers that shard's queue to (its active consumer)."""
    active: dict[int, str] = {}
    for shard in range(SHARDS):
        info = vhost.queue(f"{topology.BARRIER_QUEUE_NAME}.{shard}")
        for consumer in info.get("consumer_details") or []:
            if consumer.get("active", True) and consumer.get("activity_status") != "waiting":
                active[shard] = str(consumer["channel_details"]["connection_name"])
    return active


def _owners_if(
    vhost: services.RabbitVhost, good: Callable[[dict[int, str]], bool]
) -> dict[int, str] | None:
    """The active consumers, once the management API shows them as ``good`` wants."""
    owners = _active_consumers(vhost)
    return owners if good(owners) else None


def _consumers(vhost: services.RabbitVhost) -> list[int]:
    return [
        int(vhost.queue(f"{topology.BARRIER_QUEUE_NAME}.{k}").get("consumers") or 0)
        for k in range(SHARDS)
    ]


def _sync_all(
    clients: dict[str, list[CountingClient]], run: Callable[[CountingClient], Any]
) -> None:
    errors: list[BaseException] = []

    def one(c: CountingClient) -> None:
        try:
            run(c)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(c,)) for cs in clients.values() for c in cs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors[0]


def test_two_barriers_split_the_shards_and_one_takes_over_a_dead_ones(
    rabbit_vhost: services.RabbitVhost, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(topology.BARRIER_SHARDS_ENV, str(SHARDS))
    url = rabbit_vhost.url()
    with Broker(url) as admin:
        declare_topology(admin)
        assert len(topology.barrier_queues()) == SHARDS
        groups = _groups_per_shard(2)
        for group in groups:
            create_group(admin, group, MEMBERS, timeout=120)
    env = {topology.BARRIER_SHARDS_ENV: str(SHARDS)}
    barriers = [
        ServiceProcess(
            # each must consume its preferred shards before the other stands by for
            # them: the second one may start seconds after the first on a busy machine
            [
                *("barrier", "--broker", url, "--db", pg_url),
                *("--prefer-shards", prefer, "--standby-delay", "8"),
            ],
            READY_LINE,
            env=env,
            name=f"barrier-{prefer}",
        )
        for prefer in ("0,1", "2,3")
    ]
    clients = {g: [CountingClient(url, g, n, MEMBERS, timeout=60) for n in MEMBERS] for g in groups}
    try:
        for b in barriers:
            b.start()
        # both consume every shard: one active, the other standing by
        wait_for(lambda: _consumers(rabbit_vhost) == [2] * SHARDS, 30, "two consumers a shard")
        owners = wait_for(
            lambda: _owners_if(rabbit_vhost, lambda a: len(a) == SHARDS),
            30,
            "an active consumer on every shard",
        )
        assert owners[0] == owners[1] != owners[2] == owners[3], owners

        _sync_all(clients, lambda c: c.sync("first"))
        barriers[0].kill()  # SIGKILL: the owner of shards 0 and 1
        # the management API samples every few seconds: wait for what it shows
        after = wait_for(
            lambda: _owners_if(
                rabbit_vhost, lambda a: len(a) == SHARDS and set(a.values()) == {owners[2]}
            ),
            30,
            "the survivor active on every shard",
        )
        assert after == dict.fromkeys(range(SHARDS), owners[2])
        _sync_all(clients, lambda c: c.sync("second"))
    finally:
        for cs in clients.values():
            for c in cs:
                c.close()
        for b in barriers:
            b.stop()
    for cs in clients.values():
        for c in cs:
            releases = {k: n for k, n in c.seen.items() if k[0] == "release"}
            expected: set[tuple[str, ...]] = {
                ("release", "sync", "first", "1"),
                ("release", "sync", "second", "1"),
            }
            expected |= {k for k in first_sync_sends(MEMBERS, "first") if k[0] == "release"}
            expected |= {k for k in first_sync_sends(MEMBERS, "second") if k[0] == "release"}
            assert releases == dict.fromkeys(expected, 1), releases
