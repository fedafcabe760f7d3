"""Result aggregation: idempotent recording of test results and the bundle built from the store."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregate import ResultsAggregator
from coordinator.results import bundle_junit, bundle_table
from coordinator.scheduler import schedule
from coordinator.store import Store, SubmitReceipt
from schemas.errors import JobError, Unauthorized

T0 = 1_800_000_000.0

DEVICES = [
    {"name": "board01", "device_type": "local", "tags": []},
    {"name": "board02", "device_type": "local", "tags": []},
]


def plan() -> dict[str, Any]:
    def sub(role: str) -> dict[str, Any]:
        return {"role": role, "index": 0, "device_type": "local", "device": None, "tags": [],
                "is_slave": False, "essential": False, "actions": []}  # fmt: skip

    return {
        "job_name": "client-server",
        "format": "lava-yaml",
        "priority": 50,
        "timeouts": {"job": 600, "action": 300, "multinode": 300, "connection": None},
        "roles": [],
        "subjobs": [sub("server"), sub("client")],
        "actions": [],
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    try:
        yield st
    finally:
        st.close()


def started_job(store: Store) -> SubmitReceipt:
    store.register_host("lab1", DEVICES, T0)
    receipt = store.submit(plan(), "{}", "cs.yaml", "tester", T0)
    res = schedule(store.lab_devices(), store.queued_groups(), T0)
    store.start_groups(res.allocations, T0, join_timeout=90)
    for sid in receipt.subjob_ids:
        store.subjob_state(sid, "accepted", T0 + 1)
    return receipt


def node_of(store: Store, receipt: SubmitReceipt, index: int) -> str:
    """The device (node name) the scheduler gave sub-job ``index``."""
    subs = {s["id"]: s["device"] for s in store.job(receipt.job_id)["subjobs"]}
    return str(subs[receipt.subjob_ids[index]])


def result(receipt: SubmitReceipt, index: int, suite: str, case: str, outcome: str,
           **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "id": str(uuid.uuid4()),
        "job": str(receipt.job_id),
        "subjob": str(receipt.subjob_ids[index]),
        "node": "?",
        "suite": suite,
        "case": case,
        "result": outcome,
        "measurement": extra.get("measurement"),
        "units": extra.get("units"),
        "time": "2026-11-25T00:00:00Z",
        "extra": {},
    }


def test_a_redelivered_result_is_stored_once(store: Store) -> None:
    receipt = started_job(store)
    agg = ResultsAggregator(store)
    body = result(receipt, 0, "smoke", "ping", "pass")
    assert agg.record(body, T0 + 2) is True
    assert agg.record(body, T0 + 3) is False
    assert agg.record(dict(body), T0 + 4) is False
    assert [(r["test_run"], r["test_case"]) for r in store.results(receipt.job_id)] == [
        ("smoke", "ping")
    ]
    assert (agg.recorded, agg.duplicates) == (1, 2)


def test_results_for_unknown_or_foreign_subjobs_are_refused(store: Store) -> None:
    receipt = started_job(store)
    agg = ResultsAggregator(store)
    body = result(receipt, 0, "smoke", "ping", "pass")
    with pytest.raises(JobError, match="no sub-job 99999"):
        agg.record({**body, "subjob": "99999"})
    with pytest.raises(JobError, match="belongs to job"):
        agg.record({**body, "job": str(receipt.job_id + 1)})
    with pytest.raises(JobError, match="not a number"):
        agg.record({**body, "subjob": "abc"})
    assert store.results(receipt.job_id) == []


def test_result_ids_are_scoped_by_subjob_and_sender(store: Store) -> None:
    """An id one sender used first does not make another's genuine result a duplicate:
    receipts are keyed by (sub-job, sender, id), not by the id alone."""
    receipt = started_job(store)
    agg = ResultsAggregator(store)
    first = result(receipt, 0, "smoke", "ping", "pass")
    same_id_other_subjob = {**result(receipt, 1, "smoke", "pong", "pass"), "id": first["id"]}
    assert agg.record(first, T0 + 2, sender="lavamq-host-lab1") is True
    assert agg.record(same_id_other_subjob, T0 + 2, sender="lavamq-host-lab1") is True
    # the same id for the same sub-job from another sender (an operator's tool)
    assert agg.record({**first, "case": "again"}, T0 + 3, sender="admin") is True
    # a redelivery of the first: once
    assert agg.record(first, T0 + 4, sender="lavamq-host-lab1") is False
    cases = sorted(r["test_case"] for r in store.results(receipt.job_id))
    assert cases == ["again", "ping", "pong"]


def test_a_result_id_longer_than_its_receipt_is_refused_at_the_edge() -> None:
    from schemas.messages.base import InvalidMessage, decode
    from schemas.messages.console import TestResultSchema

    body = {"id": "x" * 101, "job": "1", "subjob": "2", "node": "n", "suite": "s",
            "case": "c", "result": "pass", "time": "2026-12-01T00:00:00Z"}  # fmt: skip
    with pytest.raises(InvalidMessage, match="id"):
        decode(TestResultSchema(), body)


def test_a_host_may_record_results_only_for_its_own_subjobs(store: Store) -> None:
    receipt = started_job(store)  # both sub-jobs run on lab1's boards
    agg = ResultsAggregator(store)
    body = result(receipt, 0, "smoke", "ping", "pass")
    with pytest.raises(Unauthorized, match=r"runs on device board0[12] of host 'lab1'"):
        agg.record(body, T0 + 2, sender="lavamq-host-lab2", host="lab2")
    assert store.results(receipt.job_id) == []
    assert agg.record(body, T0 + 2, sender="lavamq-host-lab1", host="lab1") is True


def test_bundle_of_a_passing_group_is_complete_only_after_every_last_result(
    store: Store,
) -> None:
    receipt = started_job(store)
    agg = ResultsAggregator(store)
    agg.record(result(receipt, 0, "server", "listen", "pass"), T0 + 2)
    agg.record(
        result(receipt, 1, "client", "throughput", "pass", measurement=93.5, units="Mb/s"),
        T0 + 2,
    )
    agg.record(result(receipt, 0, "lava", "job", "pass"), T0 + 3)
    for sid in receipt.subjob_ids:
        store.subjob_state(sid, "complete", T0 + 4)
    bundle = agg.bundle(receipt.job_id, now=T0 + 5)
    head = bundle["job"]
    assert head["status"] == "complete" and head["passed"] is True
    # the client's last result has not arrived yet
    assert head["results_complete"] is False and head["results_missing"] == [
        node_of(store, receipt, 1)
    ]
    agg.record(result(receipt, 1, "lava", "job", "pass"), T0 + 6)
    bundle = agg.bundle(receipt.job_id, now=T0 + 6)
    assert bundle["job"]["results_complete"] is True
    assert bundle["summary"] == {"pass": 4, "fail": 0, "skip": 0, "unknown": 0}
    by_node = {n["node"]: n for n in bundle["nodes"]}
    client = by_node[node_of(store, receipt, 1)]
    assert client["role"] == "client"
    assert client["subjob_id"] == receipt.subjob_ids[1]
    runs = {r["name"]: r["cases"] for r in client["test_runs"]}
    assert runs["client"] == [
        {"name": "throughput", "result": "pass", "measurement": 93.5, "units": "Mb/s"}
    ]
    table = bundle_table(bundle)
    assert "93.5 Mb/s" in table and "complete" in table
    root = ET.fromstring(bundle_junit(bundle))
    assert root.get("tests") == "4" and root.get("failures") == "0"


def test_bundle_names_the_first_failed_node_and_why(store: Store) -> None:
    receipt = started_job(store)
    agg = ResultsAggregator(store, grace=10)
    store.subjob_state(
        receipt.subjob_ids[0], "incomplete", T0 + 2,
        error_type="infrastructure", message="boot-local: no prompt",
    )  # fmt: skip
    agg.record(result(receipt, 1, "client", "multinode-sync-ready", "fail"), T0 + 3)
    store.subjob_state(receipt.subjob_ids[1], "complete", T0 + 4)
    bundle = agg.bundle(receipt.job_id, now=T0 + 5)
    head = bundle["job"]
    assert head["status"] == "incomplete" and head["passed"] is False
    assert head["first_failure"] == {
        "node": node_of(store, receipt, 0),
        "role": "server",
        "error_type": "infrastructure",
        "message": "boot-local: no prompt",
    }
    # neither sub-job sent its last result; after the grace period the bundle is final anyway
    assert head["results_complete"] is False
    assert agg.bundle(receipt.job_id, now=T0 + 20)["job"]["results_complete"] is True
    root = ET.fromstring(bundle_junit(bundle))
    errors = root.findall(".//testcase/error")
    assert [e.get("type") for e in errors] == ["infrastructure"]
    assert root.get("failures") == "1"


def test_bundle_of_an_unknown_job_is_a_job_error(store: Store) -> None:
    with pytest.raises(JobError, match="no job 42"):
        ResultsAggregator(store).bundle(42)


def test_details_and_attachments_reach_the_bundle_on_their_test_run(store: Store) -> None:
    from schemas.messages.base import decode, encode
    from schemas.messages.console import TestResultSchema

    receipt = started_job(store)
    agg = ResultsAggregator(store)
    in_set = {**result(receipt, 0, "0_smoke", "ping", "pass"), "extra": {"set": "network"}}
    files = [
        {"pathname": "boot.log", "mime_type": "text/plain", "case": "ping", "content": "aGk="},
        {"pathname": "/tmp/x", "mime_type": None, "case": None, "content": ""},
    ]
    run_end = {**result(receipt, 0, "lava", "0_smoke", "pass"), "attachments": files}
    for body in (in_set, run_end):
        # as they travel: through the message schema
        agg.record(decode(TestResultSchema(), encode(TestResultSchema(), body)), T0 + 2)
    bundle = agg.bundle(receipt.job_id, T0 + 3)
    node = next(n for n in bundle["nodes"] if n["node"] == node_of(store, receipt, 0))
    runs = {r["name"]: r for r in node["test_runs"]}
    assert runs["0_smoke"]["cases"][0]["extra"] == {"set": "network"}
    assert runs["0_smoke"]["attachments"] == files
    assert "attachments" not in runs["lava"] and "extra" not in runs["lava"]["cases"][0]
