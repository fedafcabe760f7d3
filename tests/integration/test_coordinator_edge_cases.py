"""Coordinator edge cases found in review: a node ending before its peer joins, a
canceled node, a store outage while handling a state, a device its host stopped
announcing. Each failed before its fix."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.scheduler import schedule
from coordinator.store import Store

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0
DEVICES = [
    {"name": "panda01", "device_type": "panda", "tags": []},
    {"name": "panda02", "device_type": "panda", "tags": []},
]


def plan(n: int = 2) -> dict[str, object]:
    return {
        "job_name": "review",
        "format": "json-2014",
        "priority": 50,
        "timeouts": {"job": 900, "action": 900, "multinode": 900, "connection": None},
        "roles": [],
        "subjobs": [
            {
                "role": f"r{i}",
                "index": 0,
                "device_type": "panda",
                "device": None,
                "tags": [],
                "is_slave": False,
                "essential": False,
                "actions": [],
            }
            for i in range(n)
        ],
        "actions": [],
    }


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    st = Store(sqlite_url)
    try:
        yield st
    finally:
        st.close()


def start(store: Store) -> tuple[int, list[int]]:
    store.register_host("lab1", DEVICES, T0)
    receipt = store.submit(plan(), "{}", "j.json", "alice", T0 + 1)
    res = schedule(store.lab_devices(), store.queued_groups(), T0 + 2)
    assert store.start_groups(res.allocations, T0 + 2, join_timeout=90)
    return receipt.job_id, receipt.subjob_ids


def test_node_that_finished_before_its_peer_joined_does_not_get_the_group_canceled(
    store: Store,
) -> None:
    """Node A accepts, runs and completes before node B's dispatcher accepts.
    B then accepts and runs: the group has joined (every node was accepted), so
    it must not stay 'joining' and must not be canceled by the join deadline."""
    job_id, (a, b) = start(store)
    store.subjob_state(a, "accepted", T0 + 3)
    store.subjob_state(a, "running", T0 + 4)
    store.subjob_state(a, "complete", T0 + 5)
    store.subjob_state(b, "accepted", T0 + 10)
    store.subjob_state(b, "running", T0 + 11)
    show = store.job(job_id)
    assert show["group_state"] == "running", show
    assert show["state"] == "running", show
    # past the join deadline nothing is late
    assert store.expired_joins(T0 + 200) == [], store.expired_joins(T0 + 200)


def test_node_failed_before_peer_joined_job_ends_incomplete_naming_the_node(
    store: Store,
) -> None:
    """Node A fails before B accepts; B accepts and is still busy when the join
    deadline passes. The job must end naming A's failure, not be canceled for
    'sub-jobs not accepted within the join deadline: ' with nobody named."""
    _job_id, (a, b) = start(store)
    store.subjob_state(a, "accepted", T0 + 3)
    store.subjob_state(a, "incomplete", T0 + 4, error_type="job", message="deploy failed: no image")
    store.subjob_state(b, "accepted", T0 + 10)
    late = store.expired_joins(T0 + 200)
    # every sub-job was accepted: nobody is late, the join deadline must not fire
    assert late == [], late


# ------------------------------------------------------------ real coordinator


def _queue_exists(url: str, name: str) -> bool:
    from kombu import Connection

    with Connection(url) as conn:
        ch = conn.channel()
        try:
            ch.queue_declare(queue=name, passive=True)
            return True
        except Exception:
            return False


def _group_messages(url: str, group: str, node: str) -> list[dict[str, object]]:
    import json

    from kombu import Connection

    from broker_config import topology

    out = []
    with Connection(url) as conn:
        q = topology.group_queue(group, node)(conn.default_channel)
        while (msg := q.get(no_ack=True)) is not None:
            out.append({"type": msg.properties.get("type"), **json.loads(msg.body)})
    return out


def test_node_canceled_by_its_stopping_dispatcher_fails_the_group_for_its_peers(
    rabbit_url: str, tmp_path: Path
) -> None:
    """Every node joined and runs; panda02's dispatcher is stopped (SIGTERM) and
    reports its sub-job 'canceled' (dispatcher/runner.py: cancelled() -> canceled).
    The peers must be told (group-failed naming panda02), as for 'incomplete';
    otherwise they wait at their next lava-sync until the MultiNode timeout."""

    from lab import BEAGLE, PANDAS, SEED, FakeHost, coordinator_process, wait_for

    from coordinator.rpc import CoordinatorClient

    coord = coordinator_process(rabbit_url, f"sqlite:///{tmp_path / 'lab.sqlite'}").start()
    host = FakeHost(rabbit_url, "rv-host2")
    client = CoordinatorClient(rabbit_url)
    try:
        host.register([*PANDAS, BEAGLE])
        wait_for(lambda: len(client.devices()) == 3, what="devices registered")
        job = client.submit(SEED.read_text(), str(SEED), "tester")["job_id"]
        got = {d: host.take(d) for d in ("panda01", "panda02", "beagle01")}
        for a in got.values():
            host.report(a["subjob_id"], "accepted")
            host.report(a["subjob_id"], "running")
        wait_for(lambda: client.job(job)["state"] == "running", what="running")
        group = got["panda01"]["group"]
        host.report(got["panda02"]["subjob_id"], "canceled", error_type="infrastructure",
                    message="dispatcher rv-host2 is stopping")  # fmt: skip
        wait_for(
            lambda: [s["state"] for s in client.job(job)["subjobs"]].count("canceled") == 1,
            what="panda02 canceled",
        )
        msgs: list[dict[str, object]] = []

        def collected() -> list[dict[str, object]]:
            msgs.extend(_group_messages(rabbit_url, group, "panda01"))
            return msgs

        with contextlib.suppress(AssertionError):  # the assertion below says what is missing
            wait_for(
                collected,
                5,
                "a message to panda01",
            )
        assert [m["type"] for m in msgs] == ["group-failed"], (
            f"panda01 was not told that panda02 ended (job state {client.job(job)['state']}); "
            f"it waits for the MultiNode timeout. Messages: {msgs}"
        )
    finally:
        client.close()
        host.close()
        assert coord.stop() == 0


def test_a_store_outage_while_handling_a_final_state_does_not_lose_it(
    rabbit_url: str, tmp_path: Path
) -> None:
    """The store is briefly away (PostgreSQL restarting, connection cut, SQLite
    busy) while the coordinator handles panda01's 'complete'. The barrier turns
    such errors into TransientError and retries; the coordinator lets the
    SQLAlchemy error escape, so QueueConsumer dead-letters the subjob-state as a
    'bug'. The sub-job stays 'running' forever: the job never ends, its group
    is never ended, its devices stay reserved."""
    import threading

    from lab import BEAGLE, PANDAS, SEED, FakeHost, wait_for
    from sqlalchemy.exc import OperationalError

    from coordinator.rpc import CoordinatorClient
    from coordinator.service import CoordinatorService, CoordinatorSettings

    service = CoordinatorService(
        CoordinatorSettings(rabbit_url, f"sqlite:///{tmp_path / 'c.sqlite'}", schedule_interval=0.2)
    )
    ready = threading.Event()
    thread = threading.Thread(target=lambda: service.run(ready.set), daemon=True)
    thread.start()
    assert ready.wait(30)
    host = FakeHost(rabbit_url, "rv-host3")
    client = CoordinatorClient(rabbit_url)
    try:
        host.register([*PANDAS, BEAGLE])
        wait_for(lambda: len(client.devices()) == 3, what="devices registered")
        job = client.submit(SEED.read_text(), str(SEED), "tester")["job_id"]
        got = {d: host.take(d) for d in ("panda01", "panda02", "beagle01")}
        for a in got.values():
            host.report(a["subjob_id"], "accepted")
            host.report(a["subjob_id"], "running")
        wait_for(lambda: client.job(job)["state"] == "running", what="running")

        store = service.store
        assert store is not None
        real = store.subjob_state
        failures = [1]

        def flaky(*args: Any, **kwargs: Any) -> Any:  # the database is away for one call
            if failures and args[1] == "complete":
                failures.pop()
                raise OperationalError(
                    "UPDATE subjobs ...", {}, Exception("server closed the connection unexpectedly")
                )
            return real(*args, **kwargs)

        store.subjob_state = flaky  # type: ignore[method-assign]
        for a in got.values():
            host.report(a["subjob_id"], "complete")
        wait_for(lambda: not failures, what="the outage hit")
        try:
            wait_for(lambda: client.job(job)["state"] == "complete", timeout=10,
                     what="job complete")  # fmt: skip
        except AssertionError:
            shown = client.job(job)
            raise AssertionError(
                "job stuck after one store error: "
                f"{shown['state']}, sub-jobs "
                f"{[(s['device'], s['state']) for s in shown['subjobs']]}"
            ) from None
    finally:
        client.close()
        host.close()
        service.stop()
        thread.join(15)


def test_a_device_its_host_no_longer_announces_stays_offline_after_a_heartbeat_outage(
    store: Store,
) -> None:
    """lab1 re-registers without panda02 (panda02 goes offline: the host has no
    such device any more). Later lab1 misses heartbeats (host offline) and comes
    back with a heartbeat: heartbeat() brings *every* offline device of the host
    back to idle, panda02 included, so jobs are scheduled on a device nobody
    consumes (canceled by the join deadline 90 s later)."""
    store.register_host("lab1", DEVICES, T0)
    store.register_host("lab1", DEVICES[:1], T0 + 1)
    assert {d["name"]: d["state"] for d in store.devices()}["panda02"] == "offline"
    assert store.silent_hosts(T0 + 100, 30) == ["lab1"]
    store.host_lost("lab1", T0 + 100, "stopped heartbeating (no heartbeat for 30 s)")
    assert store.heartbeat("lab1", T0 + 101)
    states = {d["name"]: d["state"] for d in store.devices()}
    assert states == {"panda01": "idle", "panda02": "offline"}, states
