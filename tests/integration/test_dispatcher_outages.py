"""The dispatcher across broker outages: nothing a sub-job produced is lost for good.

- a sub-job's publisher retries its results and log batches for as long as the
  broker is unreachable (more attempts than a default ``Broker`` makes before
  giving up), in order, and delivers them once it is back;
- a publisher closed with a deadline during an outage names what it dropped,
  in the job log and in the sub-job's final state;
- a final state the journal holds but the control publisher never got out
  (the dispatcher killed during an outage) is published by the restarted
  dispatcher, and marked published in the journal;
- a journal written before the ``published`` column opens and gets it.

Outages go through ``tests/faults.py``'s ``BrokerProxy`` and are measured in
events (reconnects turned away), not seconds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import BrokerProxy, raw_channel, wait_for
from lab import control_consumer

from broker_config import topology
from broker_config.broker import Broker
from broker_config.declare import declare_topology
from dispatcher import publisher as publisher_mod
from dispatcher.daemon import Dispatcher
from dispatcher.joblog import read_records
from dispatcher.journal import Journal
from dispatcher.publisher import SubJobPublisher
from schemas.messages.jobs import (
    SubJobAssignmentSchema,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: more reconnects turned away than a default Broker (max_retries=5) survives
LONG_OUTAGE_REFUSALS = 20


def result_body(case: str) -> dict[str, Any]:
    return {
        "id": f"r-{case}",
        "job": "77",
        "subjob": "770",
        "node": "n",
        "role": "r",
        "suite": "s",
        "case": case,
        "result": "pass",
        "measurement": None,
        "units": None,
        "time": "2026-01-01T00:00:00+00:00",
        "extra": {},
    }


def record(message: str) -> str:
    return json.dumps({"time": "t", "level": "info", "message": message}) + "\n"


@pytest.fixture
def admin(rabbit_url: str) -> Iterator[Broker]:
    broker = Broker(rabbit_url)
    declare_topology(broker)
    broker.declare(topology.logs_store_queue())
    try:
        yield broker
    finally:
        broker.close()


def drain(url: str, queue_name: str) -> list[Any]:
    conn, channel = raw_channel(url)
    got = []
    try:
        while (message := channel.basic_get(queue_name, no_ack=True)) is not None:
            got.append(message)
    finally:
        conn.close()
    return got


# --------------------------------------------------------------------------- publisher


def test_subjob_publisher_delivers_everything_after_a_long_broker_outage(
    rabbit_url: str, admin: Broker
) -> None:
    """The broker is unreachable for many reconnect attempts (the old publisher dropped
    the item after 5): nothing is dropped, and once the broker is back every result and
    log record arrives, once, in order."""
    with BrokerProxy() as proxy:
        pub = SubJobPublisher(
            proxy.url(rabbit_url), job="77", subjob="770", node="n", retry_interval=0.05
        ).start()
        pub.log_json(record("before"), 1)
        wait_for(lambda: pub.published_records == 1, 10, "the first batch published")
        proxy.down()
        refused = proxy.refused
        pub.result(result_body("c1"))
        pub.log_json(record("during-1"), 1)
        pub.result(result_body("c2"))
        pub.log_json(record("during-2"), 1)
        wait_for(
            lambda: proxy.refused - refused >= LONG_OUTAGE_REFUSALS,
            60,
            f"{LONG_OUTAGE_REFUSALS} reconnects turned away",
        )
        assert pub.failures == 0, f"dropped during the outage: {pub.failures}"
        assert pub.retries >= LONG_OUTAGE_REFUSALS
        assert pub.published_results == 0
        proxy.up()
        wait_for(
            lambda: pub.published_results == 2 and pub.published_records == 3,
            30,
            "everything published after the outage",
        )
        pub.close(timeout=30)
        assert pub.failures == 0
        assert (pub.dropped_records, pub.dropped_results) == (0, 0)
    results = drain(rabbit_url, topology.RESULTS_QUEUE_NAME)
    assert [json.loads(m.body)["case"] for m in results] == ["c1", "c2"]
    batches = [json.loads(m.body) for m in drain(rabbit_url, topology.LOGS_STORE_QUEUE_NAME)]
    messages = [r["message"] for b in batches for r in b["records"]]
    assert messages == ["before", "during-1", "during-2"]
    assert [b["seq"] for b in batches] == list(range(len(batches)))
    assert batches[-1]["final"] is True


def test_publisher_closed_during_an_outage_counts_what_it_dropped(
    rabbit_url: str, admin: Broker
) -> None:
    with BrokerProxy() as proxy:
        pub = SubJobPublisher(
            proxy.url(rabbit_url), job="78", subjob="780", node="n", retry_interval=0.05
        ).start()
        pub.log_json(record("before"), 1)
        wait_for(lambda: pub.published_records == 1, 10, "the first batch published")
        proxy.down()
        refused = proxy.refused
        pub.result(result_body("c1"))
        pub.log_json(record("during-1") + record("during-2"), 2)
        wait_for(lambda: proxy.refused - refused >= 2, 20, "reconnects turned away")
        started = time.monotonic()
        pub.close(timeout=0.5)
        assert time.monotonic() - started < 5
        assert (pub.dropped_records, pub.dropped_results) == (2, 1)
        assert pub.failures >= 2


# --------------------------------------------------------------------------- daemon


class Control:
    """Collects subjob-state messages from lava.control (directly on the broker)."""

    def __init__(self, url: str) -> None:
        self.broker = Broker(url)
        declare_topology(self.broker)
        self.broker.declare(topology.logs_store_queue())
        self.states: list[dict[str, Any]] = []

        def on_control(d: Any) -> None:
            if d.message_type == "subjob-state":
                self.states.append(d.body)

        self.consumer = control_consumer(url, on_control, "outage-control")

    def assign(self, a: dict[str, Any]) -> None:
        self.broker.publish(
            topology.DEVICE_EXCHANGE_NAME,
            topology.device_routing_key(a["device"]),
            SubJobAssignmentSchema(),
            a,
        )

    def of(self, subjob: int) -> list[dict[str, Any]]:
        return [s for s in list(self.states) if s["subjob_id"] == subjob]

    def close(self) -> None:
        self.consumer.stop()
        self.broker.close()


def dispatcher(url: str, tmp_path: Path) -> Dispatcher:
    config = {
        "host": {"name": "outhost", "broker_url": url, "workdir": str(tmp_path / "outhost")},
        "device": [{"name": "outboard", "device_type": "local", "settings": {"network": "none"}}],
    }
    return Dispatcher(config, heartbeat_interval=1.0, multinode=False)


def start(d: Dispatcher) -> threading.Thread:
    ready = threading.Event()
    t = threading.Thread(target=d.run, kwargs={"on_ready": ready.set}, daemon=True)
    t.start()
    assert ready.wait(30), "dispatcher not ready"
    return t


def assignment(subjob: int, seconds: float) -> dict[str, Any]:
    return {
        "job_id": 9101,
        "subjob_id": subjob,
        "group": "outgroup",
        "job_name": "outage",
        "node": "outboard",
        "role": "r",
        "device": "outboard",
        "device_type": "local",
        "members": {"outboard": "r"},
        "timeouts": {"job": 120.0, "action": 60.0, "multinode": 30.0, "connection": None},
        "join_deadline": time.time() + 600,
        "plan": {
            "actions": [
                {"kind": "boot", "name": "boot", "timeout": 30.0, "parameters": {}},
                {
                    "kind": "command",
                    "name": "cmd",
                    "timeout": 60.0,
                    "parameters": {"commands": [f"sleep {seconds}"]},
                },
            ]
        },
    }


def test_final_state_is_published_after_a_restart_during_a_broker_outage(
    rabbit_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sub-job ends while the broker is away; the dispatcher is then abandoned behind
    a proxy that stays down (like SIGKILL) and a new one starts on the same workdir: it
    publishes the journal's 'complete' (naming what the sub-job's publisher dropped) and
    marks it published."""
    # the runner closes its publisher with the default 30 s deadline: shorten it
    close = SubJobPublisher.close
    monkeypatch.setattr(
        publisher_mod.SubJobPublisher, "close", lambda self, timeout=30.0: close(self, 1.0)
    )
    control = Control(rabbit_url)
    first_d: Dispatcher | None = None
    try:
        with BrokerProxy() as first, BrokerProxy() as second:
            first_d = dispatcher(first.url(rabbit_url), tmp_path)
            start(first_d)
            control.assign(assignment(91010, 1))
            wait_for(lambda: any(s["state"] == "running" for s in control.of(91010)), 30, "running")
            first.down()  # stays down: the first dispatcher is "killed" from here on
            entry = wait_for(
                lambda: (e := first_d.journal.get(91010)) and e["state"] == "complete" and e,
                60,
                "the sub-job complete in the journal",
            )
            assert entry["published"] is False
            assert "not published" in (entry["message"] or "")
            # the job log says so too
            job_logs = list((tmp_path / "outhost" / "jobs").glob("*/job.log"))
            assert len(job_logs) == 1
            notes = [
                r["message"] for r in read_records(job_logs[0]) if "not published" in r["message"]
            ]
            assert len(notes) == 1 and "log record(s)" in notes[0], notes

            assert first_d.workdir_lock is not None
            first_d.workdir_lock.close()  # what the kill of its process would release
            second_d = dispatcher(second.url(rabbit_url), tmp_path)
            t2 = start(second_d)
            try:
                final = wait_for(
                    lambda: [s for s in control.of(91010) if s["state"] == "complete"],
                    20,
                    "'complete' on lava.control after the restart",
                )
                assert "not published" in (final[0]["message"] or "")
                wait_for(
                    lambda: (second_d.journal.get(91010) or {}).get("published"),
                    20,
                    "the final state marked published",
                )
                assert second_d.journal.unpublished() == []
            finally:
                second_d.stop()
                t2.join(60)
            assert not t2.is_alive()
            # one start more publishes nothing again
            reopened = Journal(tmp_path / "outhost" / "journal.sqlite")
            try:
                assert reopened.unpublished() == []
            finally:
                reopened.close()
    finally:
        if first_d is not None:
            first_d.stop()
        control.close()


# --------------------------------------------------------------------------- journal


def test_a_sub_job_outliving_the_shutdown_wait_still_records_its_final_state(
    rabbit_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while a long command runs (commands do not look at the cancel): the
    shutdown's wait for workers runs out; the journal and the control publisher were
    closed under the worker, whose final state was then lost (and reported
    'restarted while running' at the next start). Now the boards are shut down, the
    worker finalizes, and its state is journalled and published."""
    control = Control(rabbit_url)
    try:
        d = dispatcher(rabbit_url, tmp_path)
        monkeypatch.setattr(d, "shutdown", lambda: Dispatcher.shutdown(d, 0.5))
        real_report = d.report

        def slow_final_report(a: dict[str, Any], state: str, *args: Any) -> None:
            # widens the window: the board is down, the worker is finalizing
            if state in ("canceled", "incomplete"):
                time.sleep(1.0)
            real_report(a, state, *args)

        monkeypatch.setattr(d, "report", slow_final_report)
        t = start(d)
        control.assign(assignment(91020, 60))
        wait_for(lambda: any(s["state"] == "running" for s in control.of(91020)), 30, "running")
        started = time.monotonic()
        d.stop()
        t.join(40)
        assert not t.is_alive()
        assert time.monotonic() - started < 30  # not the command's 60 s
        final = wait_for(
            lambda: [s for s in control.of(91020) if s["state"] in ("canceled", "incomplete")],
            10,
            "the final state published",
        )
        assert final
        journal = Journal(tmp_path / "outhost" / "journal.sqlite")
        try:
            entry = journal.get(91020)
            assert entry is not None and entry["state"] in ("canceled", "incomplete"), entry
        finally:
            journal.close()
    finally:
        control.close()


def test_a_journal_from_before_the_published_column_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        """CREATE TABLE subjobs (
            subjob_id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, device TEXT NOT NULL,
            state TEXT NOT NULL, accepted_at REAL NOT NULL, updated_at REAL NOT NULL,
            error_type TEXT, message TEXT, assignment TEXT NOT NULL)"""
    )
    old = {"subjob_id": 1, "job_id": 1, "device": "d"}
    db.execute(
        "INSERT INTO subjobs VALUES (1, 1, 'd', 'complete', 0, 0, NULL, NULL, ?)",
        (json.dumps(old),),
    )
    db.execute(
        "INSERT INTO subjobs VALUES (2, 1, 'd', 'running', 0, 0, NULL, NULL, ?)",
        (json.dumps({**old, "subjob_id": 2}),),
    )
    db.commit()
    db.close()

    journal = Journal(path)
    try:
        # old entries count as published; the unfinished one is still found
        assert journal.get(1)["published"] is True  # type: ignore[index]
        assert journal.unpublished() == []
        assert [e["subjob_id"] for e in journal.unfinished()] == [2]
        assert journal.accept({"subjob_id": 3, "job_id": 2, "device": "d"})
        assert journal.get(3)["published"] is False  # type: ignore[index]
        journal.set_state(3, "complete")
        journal.set_state(2, "incomplete", error_type="infrastructure", message="restarted")
        assert [e["subjob_id"] for e in journal.unpublished()] == [2, 3]
        # a confirmation of an older state does not mark a newer one
        journal.mark_published(3, "running")
        journal.mark_published(2, "incomplete")
        assert [e["subjob_id"] for e in journal.unpublished()] == [3]
        journal.mark_published(3, "complete")
        assert journal.unpublished() == []
    finally:
        journal.close()
    journal.mark_published(3, "complete")  # closed: ignored
    # opening it again (column present) keeps everything
    again = Journal(path)
    try:
        assert [e["state"] for e in again.all()] == ["complete", "incomplete", "complete"]
        assert again.unpublished() == []
    finally:
        again.close()
