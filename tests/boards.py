"""Local boards in tests: a board's config, whether a process lives, and a
dispatcher process killed with SIGKILL while its board runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from device_agent.devices.local import LocalDevice, start_time


def alive(pid: int) -> bool:
    """``pid`` is a running process (not a zombie)."""
    return start_time(pid) is not None and not LocalDevice._is_zombie_or_gone(pid)


def board_config(name: str) -> dict[str, Any]:
    """A local board without networking."""
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
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    shell, leftover = (int(x) for x in line.split())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return shell, leftover
