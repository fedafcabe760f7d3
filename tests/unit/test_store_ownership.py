"""What the store says a host owns: the coordinator's ownership checks rely on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.scheduler import schedule
from coordinator.store import Store
from schemas.errors import Unauthorized

T0 = 1_800_000_000.0


def dev(name: str) -> dict[str, Any]:
    return {"name": name, "device_type": "local", "tags": []}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    try:
        yield st
    finally:
        st.close()


def hosts_of(store: Store) -> dict[str, str | None]:
    return {d["name"]: d["host"] for d in store.devices()}


def test_a_host_cannot_take_the_device_of_an_online_host(store: Store) -> None:
    store.register_host("hosta", [dev("a-01")], T0)
    store.register_host("hostb", [dev("b-01")], T0)
    # host A announces B's board too: B is alive, so the board stays B's
    store.register_host("hosta", [dev("a-01"), dev("b-01")], T0 + 1)
    assert hosts_of(store) == {"a-01": "hosta", "b-01": "hostb"}
    # B is gone (no heartbeat): its board may move, as when an admin moves it
    store.host_lost("hostb", T0 + 60, "stopped heartbeating")
    store.register_host("hosta", [dev("a-01"), dev("b-01")], T0 + 61)
    assert hosts_of(store) == {"a-01": "hosta", "b-01": "hosta"}


def test_only_the_host_of_a_subjobs_device_owns_it(store: Store) -> None:
    store.register_host("hosta", [dev("a-01")], T0)
    store.register_host("hostb", [dev("b-01")], T0)
    sub = {"role": "r", "index": 0, "device_type": "local", "device": None, "tags": [],
           "is_slave": False, "essential": False, "actions": []}  # fmt: skip
    plan = {
        "job_name": "two", "format": "lava-yaml", "priority": 50,
        "timeouts": {"job": 60, "action": 60, "multinode": 60, "connection": None},
        "roles": [], "subjobs": [sub, {**sub, "index": 1}], "actions": [],
    }  # fmt: skip
    receipt = store.submit(plan, "{}", "two.yaml", "t", T0)
    store.start_groups(schedule(store.lab_devices(), store.queued_groups(), T0).allocations, T0, 90)
    by_device = {s["device"]: s["id"] for s in store.job(receipt.job_id)["subjobs"]}
    store.check_subjob_owner(by_device["a-01"], "hosta", "subjob-state")
    with pytest.raises(Unauthorized, match="runs on device b-01 of host 'hostb'"):
        store.check_subjob_owner(by_device["b-01"], "hosta", "subjob-state", "lavamq-host-hosta")
    with pytest.raises(Unauthorized, match="no such sub-job"):
        store.check_subjob_owner(999_999, "hosta", "subjob-state")
