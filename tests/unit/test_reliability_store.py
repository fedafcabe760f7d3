"""The store's crash-safety helpers: what a restarted coordinator redoes, and nothing twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.scheduler import schedule
from coordinator.store import Store

T0 = 1_800_000_000.0
DEVICES = {
    "host-a": [{"name": "a01", "device_type": "local", "tags": []}],
    "host-b": [{"name": "b01", "device_type": "local", "tags": []}],
}


def plan() -> dict[str, object]:
    return {
        "job_name": "crash",
        "format": "yaml",
        "priority": 50,
        "timeouts": {"job": 60, "action": 60, "multinode": 60, "connection": None},
        "roles": [],
        "subjobs": [
            {
                "role": role,
                "index": 0,
                "device_type": "local",
                "device": None,
                "tags": [],
                "is_slave": False,
                "essential": False,
                "actions": [],
            }
            for role in ("left", "right")
        ],
        "actions": [],
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    for host, devices in DEVICES.items():
        st.register_host(host, devices, T0)
    try:
        yield st
    finally:
        st.close()


def start(store: Store) -> int:
    receipt = store.submit(plan(), "definition", "job.yaml", "me", T0, request_id="req-1")
    result = schedule(store.lab_devices(), store.queued_groups(), T0)
    (group,) = store.start_groups(result.allocations, T0, join_timeout=90)
    assert group.hosts == {"a01": "host-a", "b01": "host-b"}
    return receipt.job_id


def test_a_submit_redelivered_makes_no_second_job(store: Store) -> None:
    first = store.submit(plan(), "definition", "job.yaml", "me", T0, request_id="req-1")
    again = store.submit(plan(), "definition", "job.yaml", "me", T0 + 1, request_id="req-1")
    other = store.submit(plan(), "definition", "job.yaml", "me", T0 + 2, request_id="req-2")
    assert again == first
    assert other.job_id != first.job_id
    assert len(store.jobs()) == 2


def test_joining_group_is_resumed_with_its_unaccepted_subjobs(store: Store) -> None:
    job_id = start(store)
    sub_a, sub_b = (s["id"] for s in store.job(job_id)["subjobs"])
    store.subjob_state(sub_a, "accepted", T0 + 1)
    joining, failed = store.unfinished_groups()
    assert failed == []
    (group,) = joining
    states = {s.device: s.state for s in group.subjobs}
    assert states == {"a01": "accepted", "b01": "assigned"}
    assert group.members == {"a01": "left", "b01": "right"}
    assert group.hosts == {"a01": "host-a", "b01": "host-b"}
    store.subjob_state(sub_b, "accepted", T0 + 2)
    assert store.unfinished_groups() == ([], [])  # running, nothing failed: nothing to redo


def test_failed_group_is_failed_again_and_a_redelivered_end_replays(store: Store) -> None:
    job_id = start(store)
    sub_a, sub_b = (s["id"] for s in store.job(job_id)["subjobs"])
    for sub in (sub_a, sub_b):
        store.subjob_state(sub, "running", T0 + 1)
    first = store.subjob_state(sub_b, "incomplete", T0 + 2, error_type="infrastructure",
                               message="dispatcher host-b restarted")  # fmt: skip
    assert first is not None and first.fail_node == "b01"
    # the report again, not a redelivery: nothing to do
    assert store.subjob_state(sub_b, "incomplete", T0 + 3) is None
    # a redelivery (the coordinator may have died before failing the group on the broker)
    replay = store.subjob_state(sub_b, "incomplete", T0 + 3, replay=True)
    assert replay is not None and replay.fail_node == "b01" and not replay.ended
    assert "dispatcher host-b restarted" in (replay.fail_reason or "")
    _, failed = store.unfinished_groups()
    assert [(o.job_id, o.fail_node) for o in failed] == [(job_id, "b01")]
    assert store.job(job_id)["subjobs"][1]["state"] == "incomplete"
    store.subjob_state(sub_a, "complete", T0 + 4)
    assert store.unfinished_groups() == ([], [])  # ended
    ended = store.subjob_state(sub_a, "complete", T0 + 5, replay=True)
    assert ended is not None and ended.ended and ended.fail_reason is None
