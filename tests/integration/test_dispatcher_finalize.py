"""Finalize always powers the board off, and a stopping dispatcher stops.

Found in review: finalize ran through the pipeline's deadline and cancel
checks, so after a job timeout ("no time left") or a cancel ("cancelled
before it started") the board stayed powered on; a plan item that could not
be built escaped the runner before finalize; ``stop()`` during a broker
outage never returned (kombu's reconnect loop did not look at it).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from faults import BrokerProxy
from lab import wait_for

from device_agent.devices import create_device
from dispatcher.daemon import Dispatcher
from dispatcher.joblog import read_records
from dispatcher.runner import SubJobRunner

pytestmark = pytest.mark.integration

BOOT = {"kind": "boot", "name": "boot", "timeout": 30.0, "parameters": {}}


def board(tmp_path: Path) -> Any:
    return create_device(
        {"name": "rvboard", "device_type": "local", "settings": {"network": "none"}},
        tmp_path / "rvboard",
    )


def assignment(actions: list[dict[str, Any]], *, job_timeout: float = 120.0) -> dict[str, Any]:
    return {
        "job_id": 9001,
        "subjob_id": 90010,
        "group": None,
        "job_name": "finalize",
        "node": "rvboard",
        "role": "r",
        "device": "rvboard",
        "device_type": "local",
        "members": {},
        "timeouts": {"job": job_timeout, "action": 60.0, "multinode": 30.0, "connection": None},
        "join_deadline": 0,
        "plan": {"actions": actions},
    }


def command(line: str) -> dict[str, Any]:
    return {"kind": "command", "name": "cmd", "timeout": 60.0, "parameters": {"commands": [line]}}


def test_finalize_powers_off_after_the_job_timeout(tmp_path: Path) -> None:
    dev = board(tmp_path)
    states: list[Any] = []
    runner = SubJobRunner(
        assignment([BOOT, command("sleep 30")], job_timeout=4.0),
        dev,
        workdir=tmp_path / "job",
        report_state=lambda *s: states.append(s),
    )
    try:
        outcome = runner.run()
        assert outcome.state == "incomplete"
        messages = [r["message"] for r in read_records(outcome.log_path)]
        assert dev.powered is False, f"board left on after a job timeout: {messages[-4:]!r}"
        assert any("powered off" in m for m in messages)
    finally:
        dev.shutdown()


def test_finalize_powers_off_when_the_dispatcher_cancels(
    tmp_path: Path, board_shared: Path
) -> None:
    dev = board(tmp_path)
    cancel = threading.Event()
    # the command itself cancels the sub-job once it runs: no timing guess
    marker = board_shared / "running"
    runner = SubJobRunner(
        assignment([BOOT, command(f"touch {marker}; sleep 3"), command("sleep 3")]),
        dev,
        workdir=tmp_path / "job",
        cancelled=cancel.is_set,
    )

    def cancel_once_running() -> None:
        wait_for(marker.exists, 30, "the first command running")
        cancel.set()

    watcher = threading.Thread(target=cancel_once_running)
    watcher.start()
    try:
        outcome = runner.run()
        watcher.join(10)
        messages = [r["message"] for r in read_records(outcome.log_path)]
        assert outcome.state == "canceled"
        assert dev.powered is False, f"board left on after a cancel: {messages[-4:]!r}"
    finally:
        dev.shutdown()


def test_a_malformed_plan_item_still_finalizes_and_names_the_action(tmp_path: Path) -> None:
    dev = board(tmp_path)
    states: list[Any] = []
    bad = {
        "kind": "deploy",
        "name": "deploy",
        "timeout": 30.0,
        # an image given as a bare string, not a mapping with a url
        "parameters": {"images": {"rootfs": "http://example.invalid/rootfs.img"}},
    }
    runner = SubJobRunner(
        assignment([bad, BOOT]),
        dev,
        workdir=tmp_path / "job",
        report_state=lambda *s: states.append(s),
    )
    try:
        outcome = runner.run()
        assert outcome.state == "incomplete"
        state, error_type, message = states[-1]
        assert (state, error_type) == ("incomplete", "job")
        assert "actions[0] (deploy)" in (message or ""), message
        assert dev.powered is False
    finally:
        dev.shutdown()


def test_stop_while_the_broker_is_down_stops_the_dispatcher(
    rabbit_url: str, tmp_path: Path
) -> None:
    with BrokerProxy() as proxy:
        config = {
            "host": {
                "name": "rvhost",
                "broker_url": proxy.url(rabbit_url),
                "workdir": str(tmp_path / "rvhost"),
            },
            "device": [
                {"name": "rvboard", "device_type": "local", "settings": {"network": "none"}},
            ],
        }
        d = Dispatcher(config, heartbeat_interval=1.0, multinode=False)
        ready = threading.Event()
        t = threading.Thread(target=d.run, kwargs={"on_ready": ready.set}, daemon=True)
        t.start()
        assert ready.wait(30), "dispatcher not ready"
        proxy.down()
        wait_for(lambda: not d.consumer._consuming, 20, "the consumer noticed the outage")
        d.stop()
        t.join(30)
        alive = t.is_alive()
        proxy.up()
        t.join(30)
        assert not alive, "Dispatcher.run() did not return within 30 s of stop() (broker down)"
