"""A restarted dispatcher reaps what a local board left, processes that left the
board's session (``setsid cmd &``) included: they carry the board's LAVAMQ_BOARD
marker, which board.pid records (review finding 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from boards import alive, board_config, sigkilled_while_board_runs
from lab import wait_for

from device_agent.devices import create_device
from device_agent.devices.local import LocalDevice, start_time

pytestmark = pytest.mark.timeout(60)


def _pids_running(argv_marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if argv_marker in cmd and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _kill_all(argv_marker: str) -> None:
    for pid in _pids_running(argv_marker):
        os.kill(pid, signal.SIGKILL)


def test_restart_reaps_a_process_that_left_the_board_session(tmp_path: Path) -> None:
    """(The review's test.) The old dispatcher's objects are gone; a new one on the same
    work dir reaps the board's daemon, which left the board's session."""
    old = create_device(board_config("rvboard"), tmp_path / "rvboard")
    console = old.boot(30.0)
    try:
        console.run("(setsid sleep 4242.5 </dev/null >/dev/null 2>&1 &)", 10.0)
        wait_for(lambda: _pids_running("sleep 4242.5"), 5, "the daemon to start")
        new = create_device(board_config("rvboard"), tmp_path / "rvboard")
        assert isinstance(new, LocalDevice)
        killed = new.reap_leftover()
        wait_for(
            lambda: not _pids_running("sleep 4242.5"),
            5,
            f"the escaped daemon to be reaped (reap killed {killed})",
        )
        assert not (tmp_path / "rvboard" / "board.pid").exists()
    finally:
        old.shutdown()
        _kill_all("sleep 4242.5")


def test_a_sigkilled_dispatchers_daemon_is_reaped_at_the_next_power_on(tmp_path: Path) -> None:
    """A real dispatcher process is SIGKILLed while its board runs a daemon outside the
    board's session; the next power on (a new process, a new marker) kills it."""
    workdir = tmp_path / "devices" / "board-d"
    board = None
    try:
        shell, marker = sigkilled_while_board_runs(
            workdir, "board-d", "(setsid sleep 4243.5 </dev/null >/dev/null 2>&1 &)", "board.marker"
        )
        daemons = wait_for(lambda: _pids_running("sleep 4243.5"), 5, "the daemon to start")
        # it left the board's session: only the marker leads back to the board
        assert all(os.getsid(pid) != int(shell) for pid in daemons)
        assert json.loads((workdir / "board.pid").read_text())["marker"] == marker
        board = create_device(board_config("board-d"), workdir)
        assert isinstance(board, LocalDevice) and board.marker != marker
        board.power_on()
        wait_for(lambda: not _pids_running("sleep 4243.5"), 10, "the daemon to be reaped")
        assert json.loads((workdir / "board.pid").read_text())["marker"] == board.marker
    finally:
        if board is not None:
            board.power_off()
        _kill_all("sleep 4243.5")


def test_a_pid_file_without_a_marker_is_still_honoured(tmp_path: Path) -> None:
    """board.pid written before the marker was recorded: the session is still reaped."""
    leftover = subprocess.Popen(["sleep", "4244.5"], start_new_session=True)
    try:
        (tmp_path / "board.pid").write_text(
            json.dumps({"pid": leftover.pid, "start": start_time(leftover.pid), "netns": None})
            + "\n"
        )
        board = create_device(board_config("board-o"), tmp_path)
        assert isinstance(board, LocalDevice)
        assert board.reap_leftover() == [leftover.pid]
        assert leftover.wait(10) == -signal.SIGKILL
        assert not (tmp_path / "board.pid").exists()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_the_marker_finds_escapees_after_the_shells_pid_was_reused(tmp_path: Path) -> None:
    """The board shell's pid is someone else's now (start time differs): that process is
    spared, but whatever carries the recorded marker is still the old board's."""
    marker = "board-m.1.0123456789ab"
    env = {**os.environ, "LAVAMQ_BOARD": marker}
    escapee = subprocess.Popen(["sleep", "4245.5"], start_new_session=True, env=env)
    bystander = subprocess.Popen(["sleep", "4246.5"])
    try:
        (tmp_path / "board.pid").write_text(
            json.dumps({"pid": bystander.pid, "start": 1, "netns": None, "marker": marker})
        )
        board = create_device(board_config("board-m"), tmp_path)
        assert isinstance(board, LocalDevice)
        assert board.reap_leftover() == [escapee.pid]
        assert escapee.wait(10) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for p in (escapee, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()
