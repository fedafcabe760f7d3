"""An action that runs past its own deadline is an ActionTimeout (a JobError: the job
file's timeouts) naming the action; a console that stops answering before the
deadline is still the lab's fault (ConsoleTimeout, an InfrastructureError). Review
finding 6."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from device_agent.console import ConsoleClosed, ConsoleTimeout
from device_agent.devices import create_device
from dispatcher.action import ActionTimeout, JobContext
from dispatcher.actions.boot import BootAction
from dispatcher.actions.command import CommandRunAction
from dispatcher.actions.slave_boot import SlaveBootAction
from dispatcher.joblog import JobLog
from dispatcher.runner import SubJobRunner
from schemas.errors import InfrastructureError, JobError

pytestmark = pytest.mark.timeout(60)

PAST = -1.0  # a deadline offset that has already run out
FUTURE = 3600.0


def ctx_for(tmp_path: Path, **kw: Any) -> JobContext:
    return JobContext(
        job_id="1", subjob_id="2", node="n1", role="r", log=JobLog(), workdir=tmp_path, **kw
    )


class TimingOutConsole:
    """A console whose every command times out at once (no waiting in the test)."""

    def __init__(self, exc: Exception | None = None) -> None:
        self.exc = exc or ConsoleTimeout("console board-x: timed out waiting for 'RC'")

    def run(self, command: str, timeout: float) -> tuple[str, int]:
        raise self.exc

    def recent_output(self, size: int = 400) -> str:
        return "still sleeping"


class TimingOutDevice:
    name = "board-x"
    device_type = "local"

    def __init__(self, exc: Exception | None = None) -> None:
        self.exc = exc or ConsoleTimeout("console board-x: timed out waiting for 'board-x# '")

    def prepare_boot(self, request: Any) -> list[str]:
        return []

    def connect(self) -> None:
        return None

    def boot(self, timeout: float) -> Any:
        raise self.exc


class Multinode:
    def send(self, message_id: str, data: dict[str, str] | None = None) -> None:
        return None

    def wait(self, message_id: str, timeout: float | None = None) -> dict[str, dict[str, str]]:
        return {"master": {}}


# --- lava-command-run ---------------------------------------------------------------


def test_a_command_past_the_actions_deadline_is_an_action_timeout(tmp_path: Path) -> None:
    action = CommandRunAction({"commands": ["sleep 30"]}, timeout=3.0)
    with pytest.raises(ActionTimeout) as info:
        action.run(TimingOutConsole(), time.monotonic() + PAST, ctx_for(tmp_path))
    assert isinstance(info.value, JobError) and not isinstance(info.value, InfrastructureError)
    assert info.value.error_type == "job"
    assert "lava-command-run timed out" in info.value.message
    assert "'sleep 30'" in info.value.message and "still sleeping" in info.value.message


def test_a_console_timing_out_before_the_deadline_is_still_the_labs(tmp_path: Path) -> None:
    action = CommandRunAction({"commands": ["true"]}, timeout=FUTURE)
    with pytest.raises(ConsoleTimeout):
        action.run(TimingOutConsole(), time.monotonic() + FUTURE, ctx_for(tmp_path))


def test_a_command_without_a_deadline_keeps_the_consoles_error(tmp_path: Path) -> None:
    action = CommandRunAction({"commands": ["true"]})
    with pytest.raises(ConsoleTimeout):
        action.run(TimingOutConsole(), None, ctx_for(tmp_path))


def test_a_closed_console_at_the_deadline_is_still_the_labs(tmp_path: Path) -> None:
    action = CommandRunAction({"commands": ["true"]}, timeout=3.0)
    with pytest.raises(ConsoleClosed):
        action.run(
            TimingOutConsole(ConsoleClosed("console board-x: closed")),
            time.monotonic() + PAST,
            ctx_for(tmp_path),
        )


# --- boot and slave boot ------------------------------------------------------------


@pytest.mark.parametrize("cls", [BootAction, SlaveBootAction])
def test_a_boot_past_its_deadline_is_an_action_timeout(tmp_path: Path, cls: type) -> None:
    action = cls("local", {}, timeout=30.0)
    ctx = ctx_for(tmp_path, device=TimingOutDevice(), group="g", multinode=Multinode())
    with pytest.raises(ActionTimeout) as info:
        action.run(None, time.monotonic() + PAST, ctx)
    assert info.value.error_type == "job"
    assert info.value.message.startswith(f"{action.name} timed out")
    assert "board-x" in info.value.message


@pytest.mark.parametrize("cls", [BootAction, SlaveBootAction])
def test_a_boot_console_silent_before_the_deadline_is_the_labs(tmp_path: Path, cls: type) -> None:
    action = cls("local", {}, timeout=FUTURE)
    ctx = ctx_for(tmp_path, device=TimingOutDevice(), group="g", multinode=Multinode())
    with pytest.raises(ConsoleTimeout):
        action.run(None, time.monotonic() + FUTURE, ctx)


def test_other_infrastructure_errors_at_boot_are_untouched(tmp_path: Path) -> None:
    action = BootAction("local", {}, timeout=30.0)
    device = TimingOutDevice(InfrastructureError("device board-x: shell not found"))
    with pytest.raises(InfrastructureError, match="shell not found") as info:
        action.run(None, time.monotonic() + PAST, ctx_for(tmp_path, device=device))
    assert not isinstance(info.value, ActionTimeout)


# --- the whole sub-job on a real board (the review's test) --------------------------


def test_an_action_timeout_is_reported_as_the_actions_timeout(tmp_path: Path) -> None:
    dev = create_device(
        {"name": "rvboard", "device_type": "local", "settings": {"network": "none"}},
        tmp_path / "rvboard",
    )
    states: list[Any] = []
    assignment = {
        "job_id": 9001,
        "subjob_id": 90010,
        "group": None,
        "job_name": "review",
        "node": "rvboard",
        "role": "r",
        "device": "rvboard",
        "device_type": "local",
        "members": {},
        "timeouts": {"job": 120.0, "action": 60.0, "multinode": 30.0, "connection": None},
        "join_deadline": 0,
        "plan": {
            "actions": [
                {"kind": "boot", "name": "boot", "timeout": 30.0, "parameters": {}},
                {
                    "kind": "command",
                    "name": "cmd",
                    "timeout": 3.0,
                    "parameters": {"commands": ["sleep 30"]},
                },
            ]
        },
    }
    runner = SubJobRunner(
        assignment, dev, workdir=tmp_path / "job", report_state=lambda *s: states.append(s)
    )
    try:
        runner.run()
    finally:
        dev.shutdown()
    state, error_type, message = states[-1]
    assert state == "incomplete"
    assert error_type == "job", (error_type, message)
    assert "lava-command-run timed out: its timeout 00:00:03.000 ran out" in (message or "")


def test_the_message_says_when_the_jobs_deadline_cut_the_timeout_short() -> None:
    from dispatcher.action import timeout_detail

    action = CommandRunAction({"commands": ["true"]}, timeout=60.0)
    assert timeout_detail(action, 59.9) == "its timeout 00:01:00.000 ran out"
    assert timeout_detail(action, 10.0) == (
        "its timeout 00:01:00.000 ran out (cut to 00:00:10.000 by the job's deadline)"
    )
    assert timeout_detail(CommandRunAction({"commands": ["true"]}), 5.0) == (
        "its 00:00:05.000 ran out"
    )
