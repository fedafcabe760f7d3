"""The store on SQLite and on the real PostgreSQL: the same tests on both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import inspect

from coordinator.scheduler import SubJobRequest, check_fits, schedule
from coordinator.store import Store
from schemas.errors import JobError

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0

SEED_DEVICES = [
    {"name": "panda01", "device_type": "panda", "tags": ["usb-flash"]},
    {"name": "panda02", "device_type": "panda", "tags": ["usb-flash"]},
    {"name": "beagle01", "device_type": "beaglexm", "tags": ["audio-loopback"]},
]


def plan(name: str = "seed", priority: int = 50, pandas: int = 2) -> dict[str, object]:
    subjobs = [
        {"role": "omap4", "index": i, "device_type": "panda", "device": None,
         "tags": ["usb-flash"], "is_slave": False, "essential": False, "actions": []}
        for i in range(pandas)
    ]  # fmt: skip
    subjobs.append(
        {"role": "omap3", "index": 0, "device_type": "beaglexm", "device": None,
         "tags": ["audio-loopback"], "is_slave": False, "essential": False, "actions": []}
    )  # fmt: skip
    return {
        "job_name": name,
        "format": "json-2014",
        "priority": priority,
        "timeouts": {"job": 900, "action": 900, "multinode": 900, "connection": None},
        "roles": [],
        "subjobs": subjobs,
        "actions": [],
    }


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    st = Store(db_url)
    try:
        yield st
    finally:
        st.close()


def test_migrations_create_every_table(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {
        "device_types", "hosts", "devices", "jobs", "groups", "subjobs", "results", "events",
    } <= tables  # fmt: skip
    # the models and the migration agree
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from coordinator.db import Base

    mine = {"device_types", "hosts", "devices", "jobs", "groups", "subjobs", "results", "events"}
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    # (other engineers' tables, e.g. the barrier's, are not in this metadata: ignore them)
    ours = [d for d in diff if any(f"'{t}'" in repr(d) or f"<{t}>" in repr(d) for t in mine)]
    assert ours == []


def test_register_host_devices_and_heartbeat(store: Store) -> None:
    store.register_host("lab1", SEED_DEVICES, T0)
    devices = store.devices()
    assert [(d["name"], d["device_type"], d["tags"], d["host"], d["state"]) for d in devices] == [
        ("beagle01", "beaglexm", ["audio-loopback"], "lab1", "idle"),
        ("panda01", "panda", ["usb-flash"], "lab1", "idle"),
        ("panda02", "panda", ["usb-flash"], "lab1", "idle"),
    ]
    assert store.heartbeat("lab1", T0 + 5)
    assert not store.heartbeat("nobody", T0 + 5)
    assert store.silent_hosts(T0 + 20, 30) == []
    assert store.silent_hosts(T0 + 40, 30) == ["lab1"]
    # a re-registration without panda02 takes it offline; registering it again brings it back
    store.register_host("lab1", SEED_DEVICES[:1] + SEED_DEVICES[2:], T0 + 50)
    assert {d["name"]: d["state"] for d in store.devices()}["panda02"] == "offline"
    store.register_host("lab1", SEED_DEVICES, T0 + 60)
    assert {d["name"]: d["state"] for d in store.devices()}["panda02"] == "idle"
    kinds = [(e["kind"], e["state"]) for e in store.drain_events()]
    assert ("host", "online") in kinds and ("device", "offline") in kinds
    assert store.drain_events() == []


def test_full_lifecycle_submit_schedule_join_complete(store: Store) -> None:
    store.register_host("lab1", SEED_DEVICES, T0)
    receipt = store.submit(plan(), "{...}", "seed.json", "alice", T0 + 1)
    assert receipt.job_id >= 1 and len(receipt.subjob_ids) == 3
    queue = store.queued_groups()
    assert [(g.job_id, len(g.subjobs)) for g in queue] == [(receipt.job_id, 3)]
    lab = store.lab_devices()
    assert check_fits(lab, queue[0].subjobs) == []
    res = schedule(lab, queue, T0 + 2)
    started = store.start_groups(res.allocations, T0 + 2, join_timeout=90)
    assert len(started) == 1
    g = started[0]
    assert g.group == receipt.group and g.join_deadline == T0 + 92
    assert g.members == {"panda01": "omap4", "panda02": "omap4", "beagle01": "omap3"}
    assert {d["name"]: (d["state"], d["current_job"]) for d in store.devices()} == {
        "panda01": ("reserved", receipt.job_id),
        "panda02": ("reserved", receipt.job_id),
        "beagle01": ("reserved", receipt.job_id),
    }
    assert store.job(receipt.job_id)["state"] == "scheduled"
    # a duplicate start is refused (job no longer queued)
    assert store.start_groups(res.allocations, T0 + 3, join_timeout=90) == []

    for sid in receipt.subjob_ids:
        out = store.subjob_state(sid, "accepted", T0 + 3)
        assert out is not None
    assert store.job(receipt.job_id)["state"] == "running"
    assert store.job(receipt.job_id)["group_state"] == "running"
    assert store.expired_joins(T0 + 1000) == []
    # a repeated or backwards report changes nothing
    assert store.subjob_state(receipt.subjob_ids[0], "accepted", T0 + 4) is None

    store.add_result(receipt.subjob_ids[0], "smoke", "linux-pwd", "pass", T0 + 5)
    store.add_result(
        receipt.subjob_ids[1], "smoke", "net", "pass", T0 + 5, measurement=93.5, units="Mb/s"
    )
    results = store.results(receipt.job_id)
    assert [(r["node"], r["test_case"], r["measurement"]) for r in results] == [
        ("panda01", "linux-pwd", None),
        ("panda02", "net", 93.5),
    ]
    with pytest.raises(JobError):
        store.add_result(999_999, "smoke", "x", "pass", T0)

    outs = [store.subjob_state(sid, "complete", T0 + 10) for sid in receipt.subjob_ids]
    assert [o.ended for o in outs if o] == [False, False, True]
    job = store.job(receipt.job_id)
    assert job["state"] == "complete" and job["group_state"] == "ended"
    assert all(d["state"] == "idle" and d["current_job"] is None for d in store.devices())
    assert store.subjob_state(receipt.subjob_ids[0], "incomplete", T0 + 11) is None


def test_incomplete_node_fails_group_and_frees_devices(store: Store) -> None:
    store.register_host("lab1", SEED_DEVICES, T0)
    r = store.submit(plan(), "{}", "seed.json", "bob", T0)
    res = schedule(store.lab_devices(), store.queued_groups(), T0)
    store.start_groups(res.allocations, T0, join_timeout=90)
    for sid in r.subjob_ids:
        store.subjob_state(sid, "accepted", T0 + 1)
    out = store.subjob_state(
        r.subjob_ids[2], "incomplete", T0 + 2, error_type="infrastructure", message="boot failed"
    )
    assert out is not None and not out.ended
    assert out.fail_reason == "node beagle01 (role omap3) failed: boot failed"
    assert out.fail_node == "beagle01"
    for sid in r.subjob_ids[:2]:
        out = store.subjob_state(
            sid, "incomplete", T0 + 3, error_type="group-failed", message="group failed"
        )
    assert out is not None and out.ended and out.job_state == "incomplete"
    job = store.job(r.job_id)
    assert job["failure_type"] == "infrastructure"
    assert job["failure_cause"] == "omap3 on beagle01: boot failed"


def test_join_deadline_and_cancel(store: Store) -> None:
    store.register_host("lab1", SEED_DEVICES, T0)
    r = store.submit(plan(), "{}", "seed.json", "bob", T0)
    res = schedule(store.lab_devices(), store.queued_groups(), T0)
    store.start_groups(res.allocations, T0, join_timeout=90)
    store.subjob_state(r.subjob_ids[0], "accepted", T0 + 1)
    assert store.expired_joins(T0 + 50) == []
    assert store.expired_joins(T0 + 91) == [(r.job_id, ["beagle01 (omap3)", "panda02 (omap4)"])]
    out = store.cancel(r.job_id, "not joined within 90 s", T0 + 91, error_type="infrastructure")
    assert out.fail_reason and "not joined" in out.fail_reason and not out.ended
    devs = {d["name"]: d["state"] for d in store.devices()}
    # never-accepted sub-jobs are ended and their devices freed; the accepted one waits
    # for its dispatcher to report
    assert devs == {"panda01": "running", "panda02": "idle", "beagle01": "idle"}
    out2 = store.subjob_state(r.subjob_ids[0], "canceled", T0 + 92)
    assert out2 is not None and out2.ended
    job = store.job(r.job_id)
    assert job["state"] == "canceled" and job["failure_cause"] == "not joined within 90 s"
    assert all(d["state"] == "idle" for d in store.devices())
    # cancel of a queued job, and of an unknown one
    r2 = store.submit(plan(), "{}", "seed.json", "bob", T0 + 100)
    out3 = store.cancel(r2.job_id, "canceled by user", T0 + 101)
    assert out3.ended and out3.fail_reason is None
    assert store.job(r2.job_id)["state"] == "canceled"
    with pytest.raises(JobError, match="no job 424242"):
        store.cancel(424242, "x", T0)


def test_host_lost_fails_running_groups_naming_the_host(store: Store) -> None:
    store.register_host("lab1", SEED_DEVICES[:2], T0)
    store.register_host("lab2", SEED_DEVICES[2:], T0)
    r = store.submit(plan(), "{}", "seed.json", "bob", T0)
    res = schedule(store.lab_devices(), store.queued_groups(), T0)
    store.start_groups(res.allocations, T0, join_timeout=90)
    for sid in r.subjob_ids:
        store.subjob_state(sid, "running", T0 + 1)
    outcomes = store.host_lost("lab2", T0 + 40, "stopped heartbeating (last 40 s ago)")
    assert len(outcomes) == 1
    assert outcomes[0].fail_reason == (
        "host lab2 stopped heartbeating (last 40 s ago); device beagle01 is offline"
    )
    devs = {d["name"]: d["state"] for d in store.devices()}
    assert devs["beagle01"] == "offline"
    sub = next(s for s in store.job(r.job_id)["subjobs"] if s["device"] == "beagle01")
    assert sub["state"] == "incomplete" and sub["error_type"] == "infrastructure"
    # the lab's non-retired devices still include the offline one; a retired one is gone
    assert len(store.lab_devices()) == 3
    store.retire_device("panda02", T0 + 50)
    seed = [
        SubJobRequest(1, "panda", frozenset({"usb-flash"})),
        SubJobRequest(2, "panda", frozenset({"usb-flash"})),
    ]
    assert check_fits(store.lab_devices(), seed) == [
        "needs 2 \N{MULTIPLICATION SIGN} panda [usb-flash], the lab has 1"
    ]
    assert sorted(d.name for d in store.lab_devices()) == ["beagle01", "panda01"]
    assert store.heartbeat("lab2", T0 + 60)
    assert {d["name"]: d["state"] for d in store.devices()}["beagle01"] == "idle"


def test_waiting_reasons_and_listing(store: Store) -> None:
    store.register_host("lab1", SEED_DEVICES, T0)
    a = store.submit(plan("a"), "{}", "a.json", "x", T0)
    b = store.submit(plan("b"), "{}", "b.json", "x", T0 + 1)
    res = schedule(store.lab_devices(), store.queued_groups(), T0 + 2)
    store.start_groups(res.allocations, T0 + 2, join_timeout=90)
    store.set_waiting_reasons(res.waiting_reasons)
    jobs = store.jobs()
    assert [j["id"] for j in jobs] == [b.job_id, a.job_id]
    assert jobs[0]["waiting_reason"] == res.waiting_reasons[b.job_id]
    assert (
        "starting job" in jobs[0]["waiting_reason"] or "reserved job" in jobs[0]["waiting_reason"]
    )
    assert [j["id"] for j in store.jobs(states=["queued"])] == [b.job_id]
    assert store.events(job_id=a.job_id)[0]["state"] == "queued"
