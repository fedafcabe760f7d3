"""A local board's shell left by a dispatcher killed with SIGKILL is found (board.pid)
and killed at the next power_on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from boards import alive, board_config, killed_dispatcher
from lab import wait_for

from device_agent.devices import create_device
from device_agent.devices.local import LocalDevice

pytestmark = pytest.mark.timeout(60)


def test_power_on_reaps_the_shell_a_killed_dispatcher_left(tmp_path: Path) -> None:
    workdir = tmp_path / "devices" / "board-1"
    shell, leftover = killed_dispatcher(workdir, "board-1")
    # the gap: the board's processes outlive the dispatcher, and board.pid names them
    assert alive(leftover)
    record = json.loads((workdir / "board.pid").read_text())
    assert record["pid"] == shell and record["start"] is not None
    board = create_device(board_config("board-1"), workdir)
    assert isinstance(board, LocalDevice)
    try:
        board.power_on()
        wait_for(lambda: not alive(leftover), 10, f"leftover {leftover} to be killed")
        assert board.proc is not None
        assert json.loads((workdir / "board.pid").read_text())["pid"] == board.proc.pid
        # this device's own board is not a leftover
        assert board.reap_leftover() == [] and board.powered
    finally:
        board.power_off()
    assert not (workdir / "board.pid").exists()


def test_a_reused_pid_is_not_killed(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        (tmp_path / "board.pid").write_text(
            json.dumps({"pid": bystander.pid, "start": 1, "netns": None})
        )
        board = create_device(board_config("board-2"), tmp_path)
        assert isinstance(board, LocalDevice)
        assert board.reap_leftover() == []
        assert bystander.poll() is None
        assert not (tmp_path / "board.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_the_pty_relay_exits_when_the_dispatcher_is_killed(tmp_path: Path) -> None:
    workdir = tmp_path / "board-3"
    script = textwrap.dedent(
        f"""
        import sys
        from device_agent.devices import create_device
        board = create_device({board_config("board-3")!r}, {str(workdir)!r})
        board.boot(timeout=20)
        print(board._relay.pid, flush=True)
        sys.stdin.read()
        """
    )
    dispatcher = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert dispatcher.stdout is not None
    relay = int(dispatcher.stdout.readline())
    assert alive(relay)
    dispatcher.send_signal(signal.SIGKILL)
    dispatcher.wait(10)
    try:
        # nobody powers the board off: the relay sees its lifeline end and exits
        wait_for(lambda: not alive(relay), 10, f"pty relay {relay} to exit")
    finally:
        board = create_device(board_config("board-3"), workdir)
        assert isinstance(board, LocalDevice)
        board.reap_leftover()
