"""A local board's shell left by a dispatcher killed with SIGKILL is found (board.pid)
and killed at the next power_on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from device_agent.devices import create_device
from device_agent.devices.local import LocalDevice, start_time

pytestmark = pytest.mark.timeout(60)


def alive(pid: int) -> bool:
    return start_time(pid) is not None and not LocalDevice._is_zombie_or_gone(pid)


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def board_config(name: str) -> dict[str, Any]:
    return {"name": name, "device_type": "local", "settings": {"network": "none"}}


def killed_dispatcher(workdir: Path, name: str) -> tuple[int, int]:
    """A dispatcher process powers a board on, starts a process there that ignores
    SIGHUP, and dies by SIGKILL. Returns (board shell pid, leftover pid)."""
    script = textwrap.dedent(
        f"""
        import sys
        from device_agent.devices import create_device
        board = create_device({board_config(name)!r}, {str(workdir)!r})
        console = board.boot(timeout=20)
        out, rc = console.run("(trap '' HUP; exec sleep 300) >/dev/null 2>&1 & echo $!", 10)
        print(board.proc.pid, out.strip().splitlines()[-1], flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    shell, leftover = (int(x) for x in line.split())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return shell, leftover


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
        assert wait_until(lambda: not alive(leftover)), f"leftover {leftover} still running"
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
