"""A dispatcher starting kills what one killed with SIGKILL left: local boards' shells
(board.pid) and, on a host with QEMU devices, those devices' VMs (their -pidfile)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from boards import alive, board_config, killed_dispatcher
from lab import wait_for

from dispatcher.daemon import Dispatcher

pytestmark = pytest.mark.timeout(60)


def fake_vm(pidfile: Path) -> subprocess.Popen[bytes]:
    """A process that looks like a QEMU holding ``-pidfile`` (argv[0] qemu-system-*)."""
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-c", "import time; time.sleep(300)", "-pidfile", str(pidfile)],
        executable=sys.executable,
    )
    pidfile.write_text(f"{proc.pid}\n")
    return proc


def test_dispatcher_start_reaps_boards_and_its_own_vms(tmp_path: Path) -> None:
    host = tmp_path / "host"
    runtime = tmp_path / "rt"
    runtime.mkdir()
    _, leftover = killed_dispatcher(host / "devices" / "board-3", "board-3")
    vm = fake_vm(runtime / "vm-1.pid")
    # another host's VM in the same runtime directory is not this dispatcher's to kill
    other = fake_vm(runtime / "vm-of-another-host.pid")
    config: dict[str, Any] = {
        "host": {"name": "reap-host", "broker_url": "memory://", "workdir": str(host)},
        "device": [
            board_config("board-3"),
            {"name": "vm-1", "device_type": "qemu", "settings": {"runtime_dir": str(runtime)}},
        ],
    }
    try:
        assert alive(leftover) and vm.poll() is None
        dispatcher = Dispatcher(config)
        killed = dispatcher.reap_leftovers()
        assert vm.pid in killed and leftover in killed
        assert vm.wait(10) == -signal.SIGKILL
        wait_for(lambda: not alive(leftover), 10, f"leftover {leftover} to be killed")
        assert other.poll() is None
        assert not (runtime / "vm-1.pid").exists()
        assert (runtime / "vm-of-another-host.pid").exists()
        # nothing is left for a second start
        assert dispatcher.reap_leftovers() == []
    finally:
        for proc in (vm, other):
            proc.kill()
            proc.wait()
        if alive(leftover):
            os.kill(leftover, signal.SIGKILL)
