"""Service crashes in the middle of a running MultiNode group.

A lab of real processes (``lavamq coordinator``, ``lavamq barrier``, two
``lavamq dispatcher`` hosts with a local board each) in a vhost of its own,
the store in PostgreSQL. A two-node job runs ``ROUNDS`` times a test case and
a ``lava-sync``. Services are SIGKILLed at seeded random points of the group
(after the k-th event the store recorded for the job, after the k-th sync a
node completed) and restarted; the store and the dispatchers' job logs are
then counted. ``LAVAMQ_FAULT_SEED`` picks other points.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from crashlab import DEFAULT_HOSTS, CrashLab, rounds_job
from faults import record_reliability, wait_for

import services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROUNDS = 8
SEED = int(os.environ.get("LAVAMQ_FAULT_SEED", "11"))
HOST_A, HOST_B = "crash-a", "crash-b"
NODE_A, NODE_B = DEFAULT_HOSTS[HOST_A][0][0], DEFAULT_HOSTS[HOST_B][0][0]
HOST_OF = {NODE_A: HOST_A, NODE_B: HOST_B}


@pytest.fixture
def lab(rabbit_url: str, pg_url: str, tmp_path: Path) -> Iterator[CrashLab]:
    if not services.rabbit_available():
        services.missing_service("RabbitMQ")
    lab = CrashLab(tmp_path, rabbit_url, pg_url, heartbeat_timeout=3.0).start()
    try:
        yield lab
    finally:
        lab.stop()


def expected_cases() -> set[str]:
    return {f"case-{i}" for i in range(1, ROUNDS + 1)} | {
        f"multinode-sync-step-{i}" for i in range(1, ROUNDS + 1)
    }


def count_results(lab: CrashLab, job_id: int) -> tuple[int, int, Counter[tuple[int, str, str]]]:
    """(expected rows missing, rows stored twice, rows) for the round cases of every sub-job."""
    rows = Counter(lab.result_rows(job_id))
    subjobs = [s["id"] for s in lab.job(job_id)["subjobs"]]
    seen = {(sid, case) for sid, _, case in rows}
    missing = sum(1 for sid in subjobs for case in expected_cases() if (sid, case) not in seen)
    duplicated = sum(n - 1 for n in rows.values() if n > 1)
    return missing, duplicated, rows


def test_coordinator_sigkill_mid_group_records_everything_once(lab: CrashLab) -> None:
    """Failure covered: the coordinator is SIGKILLed twice while a group runs —
    once at a random point of its start (after the k-th event of the job: it
    may be between reserving the devices and publishing the assignments, or
    between a state change and its ack) and once mid-group (after the k-th
    sync) — and restarted each time. It resumes the group from the store; the
    group completes; every barrier releases once per node; every test result
    is stored exactly once; each sub-job has one final state and ran once.
    """
    rng = random.Random(SEED)
    first_kill_event = rng.randint(1, 7)
    second_kill_sync = rng.randint(2, ROUNDS - 2)
    started = time.monotonic()
    job_id = lab.submit(rounds_job(ROUNDS))

    wait_for(
        lambda: len(lab.store.events(job_id=job_id)) >= first_kill_event,  # type: ignore[union-attr]
        30,
        f"event {first_kill_event} of job {job_id}",
    )
    lab.coordinator.restart(60)
    wait_for(
        lambda: lab.sync_completions(HOST_A, job_id, NODE_A) >= second_kill_sync,
        60,
        f"sync {second_kill_sync} of {NODE_A}\n{lab.output()}",
    )
    lab.coordinator.restart(60)

    job = lab.wait_job_end(job_id, 90)
    lab.wait_last_results(job_id, 30)
    assert job["state"] == "complete", job
    missing, duplicated, rows = count_results(lab, job_id)
    assert missing == 0, sorted(rows)
    assert duplicated == 0, [r for r, n in rows.items() if n > 1]

    transitions = lab.subjob_transitions(job_id)
    for sub in job["subjobs"]:
        assert sub["state"] == "complete", sub
        finals = sum(transitions[(sub["id"], s)] for s in ("complete", "incomplete", "canceled"))
        assert finals == 1, transitions
        assert transitions[(sub["id"], "running")] == 1, transitions
        host = HOST_OF[sub["device"]]
        assert lab.runner_starts(host, job_id, sub["device"]) == 1
        # each barrier released this node exactly once
        assert lab.sync_completions(host, job_id, sub["device"]) == ROUNDS
    assert lab.coordinator.kills == 2
    record_reliability(
        {
            "test": "coordinator-sigkill mid-group",
            "fault": f"coordinator SIGKILLed and restarted 2 times (seed {SEED}: after "
            f"event {first_kill_event} of the job, after sync {second_kill_sync})",
            "faults": 2,
            "sent": f"2 nodes x {ROUNDS} lava-sync + {ROUNDS} test cases, {len(rows)} test results",
            "deliveries_expected": len(expected_cases()) * 2,
            "lost": missing,
            "duplicated": duplicated,
            "duplicates_dropped": "-",
            "seconds": round(time.monotonic() - started, 1),
        }
    )


def test_dispatcher_sigkill_mid_group_fails_the_group_once(lab: CrashLab) -> None:
    """Failure covered: a dispatcher is SIGKILLed while its node is in the
    middle of the group (after a random k-th sync) and restarted. The
    interrupted sub-job is not run again: the restarted dispatcher reports it
    incomplete, the coordinator fails the group naming that node, the peer on
    the other host is released (not left to time out), and every sub-job has
    exactly one final state, one ``running`` transition and one runner start;
    no result is stored twice.
    """
    rng = random.Random(SEED + 1)
    kill_after = rng.randint(1, ROUNDS - 2)
    started = time.monotonic()
    job_id = lab.submit(rounds_job(ROUNDS))
    wait_for(
        lambda: lab.sync_completions(HOST_B, job_id, NODE_B) >= kill_after,
        60,
        f"sync {kill_after} of {NODE_B}\n{lab.output()}",
    )
    lab.dispatchers[HOST_B].restart(60)

    job = lab.wait_job_end(job_id, 60)
    assert job["state"] == "incomplete", job
    by_node = {s["device"]: s for s in job["subjobs"]}
    victim = by_node[NODE_B]
    assert victim["state"] == "incomplete" and victim["error_type"] == "infrastructure", victim
    assert f"dispatcher {HOST_B} restarted" in victim["message"], victim
    assert "not run again" in victim["message"]
    assert NODE_B in job["failure_cause"], job
    assert by_node[NODE_A]["state"] in ("complete", "incomplete"), by_node[NODE_A]

    transitions = lab.subjob_transitions(job_id)
    for sub in job["subjobs"]:
        finals = sum(transitions[(sub["id"], s)] for s in ("complete", "incomplete", "canceled"))
        assert finals == 1, transitions
        assert transitions[(sub["id"], "running")] == 1, transitions
        assert lab.runner_starts(HOST_OF[sub["device"]], job_id, sub["device"]) == 1
    # the peer was released by the failure, not by its MultiNode timeout (60 s)
    peer_log = lab.job_log(HOST_A, job_id, NODE_A)
    assert any(
        r.get("level") == "input" and "<LAVA_SYNC_COMPLETE nack>" in str(r.get("message"))
        for r in peer_log
    ), peer_log[-20:]
    assert time.monotonic() - started < 50
    # the restarted dispatcher's journal: the sub-job, once, ended incomplete
    journal = sqlite3.connect(str(lab.tmp / HOST_B / "journal.sqlite"))
    try:
        states = journal.execute("SELECT subjob_id, state FROM subjobs").fetchall()
    finally:
        journal.close()
    assert states == [(victim["id"], "incomplete")], states
    # the peer's last result (the killed node never sent its own) is in: count now
    peer = by_node[NODE_A]["id"]
    wait_for(
        lambda: (peer, "lava", "job") in lab.result_rows(job_id), 30, f"{NODE_A}'s last result"
    )
    _, duplicated, rows = count_results(lab, job_id)
    assert duplicated == 0, [r for r, n in rows.items() if n > 1]
    record_reliability(
        {
            "test": "dispatcher-sigkill mid-group",
            "fault": f"dispatcher {HOST_B} SIGKILLed after sync {kill_after} "
            f"(seed {SEED + 1}) and restarted",
            "faults": 1,
            "sent": f"2 nodes x {ROUNDS} lava-sync + {ROUNDS} test cases (cut short)",
            "deliveries_expected": len(job["subjobs"]),
            "lost": 0,
            "duplicated": duplicated,
            "duplicates_dropped": "-",
            "seconds": round(time.monotonic() - started, 1),
        }
    )


def test_dispatcher_that_never_returns_fails_its_group_within_the_heartbeat_deadline(
    lab: CrashLab,
) -> None:
    """Failure covered: a dispatcher is SIGKILLed mid-group and never comes
    back. Within the coordinator's heartbeat deadline (3 s here) its host goes
    offline and its group fails with the host named; the peer on the other
    host is released and its sub-job ends.
    """
    rng = random.Random(SEED + 2)
    kill_after = rng.randint(1, ROUNDS - 2)
    started = time.monotonic()
    job_id = lab.submit(rounds_job(ROUNDS))
    wait_for(
        lambda: lab.sync_completions(HOST_B, job_id, NODE_B) >= kill_after,
        60,
        f"sync {kill_after} of {NODE_B}\n{lab.output()}",
    )
    killed_at = time.time()
    lab.dispatchers[HOST_B].kill()

    job = lab.wait_job_end(job_id, 30)
    assert job["state"] == "incomplete", job
    by_node = {s["device"]: s for s in job["subjobs"]}
    victim = by_node[NODE_B]
    assert victim["state"] == "incomplete" and victim["error_type"] == "infrastructure", victim
    assert f"host {HOST_B} stopped heartbeating" in victim["message"], victim
    assert HOST_B in job["failure_cause"], job
    failed_at = min(
        e["time"]
        for e in lab.subjob_events(job_id)
        if e["subjob_id"] == victim["id"] and e["state"] == "incomplete"
    )
    detection = failed_at - killed_at
    # the last heartbeat came at most one interval before the kill
    assert 0 < detection <= lab.heartbeat_timeout + 1.0, detection
    offline = {d["name"]: d["state"] for d in lab.devices()}
    assert offline[NODE_B] == "offline", offline
    transitions = lab.subjob_transitions(job_id)
    for sub in job["subjobs"]:
        finals = sum(transitions[(sub["id"], s)] for s in ("complete", "incomplete", "canceled"))
        assert finals == 1, transitions
    record_reliability(
        {
            "test": "dispatcher-gone mid-group",
            "fault": f"dispatcher {HOST_B} SIGKILLed after sync {kill_after} (seed {SEED + 2}), "
            f"never restarted: group failed {detection:.1f} s later naming the host "
            f"(heartbeat deadline {lab.heartbeat_timeout:g} s)",
            "faults": 1,
            "sent": f"2 nodes x {ROUNDS} lava-sync + {ROUNDS} test cases (cut short)",
            "deliveries_expected": len(job["subjobs"]),
            "lost": 0,
            "duplicated": 0,
            "duplicates_dropped": "-",
            "seconds": round(time.monotonic() - started, 1),
        }
    )
