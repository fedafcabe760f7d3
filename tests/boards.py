"""Local boards in tests: a board's config, whether a process lives, a dispatcher
process killed with SIGKILL while its board runs, and a directory boards and the host
both see."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from device_agent.devices.local import LocalDevice, start_time


def alive(pid: int) -> bool:
    """``pid`` is a running process (not a zombie)."""
    return start_time(pid) is not None and not LocalDevice._is_zombie_or_gone(pid)


def board_config(name: str) -> dict[str, Any]:
    """A local board without networking."""
    return {"name": name, "device_type": "local", "settings": {"network": "none"}}


#: a process that ignores SIGHUP, left running by the board; it prints its pid
IGNORES_HUP = "(trap '' HUP; exec sleep 300) >/dev/null 2>&1 & echo $!"


def killed_dispatcher(workdir: Path, name: str, command: str = IGNORES_HUP) -> tuple[int, int]:
    """A dispatcher process powers a board on, runs ``command`` there (which leaves a
    process running and prints a pid), and dies by SIGKILL. Returns (board shell pid,
    the pid printed)."""
    shell, leftover = sigkilled_while_board_runs(
        workdir, name, command, "out.strip().splitlines()[-1]"
    )
    return int(shell), int(leftover)


def sigkilled_while_board_runs(
    workdir: Path, name: str, command: str, report: str
) -> tuple[str, str]:
    """A dispatcher process powers board ``name`` on, runs ``command`` on it, prints the
    board shell's pid and the Python expression ``report`` (``out``: the command's output,
    ``board``: the device), and dies by SIGKILL. Returns both, as printed."""
    script = textwrap.dedent(
        f"""
        import sys
        from device_agent.devices import create_device
        board = create_device({board_config(name)!r}, {str(workdir)!r})
        console = board.boot(timeout=20)
        out, rc = console.run({command!r}, 10)
        print(board.proc.pid, {report}, flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        shell, printed = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    return shell, printed


@contextlib.contextmanager
def shared_with_boards(prefix: str = "lavamq-test-") -> Iterator[Path]:
    """A directory that this host and every local board see, removed afterwards: not under
    /tmp, which a board in a private root has to itself (device_agent/board_root.py)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
