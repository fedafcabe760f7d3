"""Device type ``serial``: power commands and a socket:// console (a fake ser2net board)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from device_agent.console import ConsoleTimeout
from device_agent.devices import create_device
from schemas.errors import InfrastructureError


class FakeBoard:
    """Serves a board's console on 127.0.0.1: boots when the 'power' file appears."""

    def __init__(self, power_file: Path) -> None:
        self.power_file = power_file
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode()
                self.lines.append(line)
                if line == "boot-check":
                    if self.power_file.exists():
                        conn.sendall(b"U-Boot\r\nStarting kernel\r\nbbb login: ")
                elif line == "root":
                    conn.sendall(b"\r\nroot@bbb:~# \x1b[6n")
                elif line.startswith("echo "):
                    conn.sendall(line[5:].encode() + b"\r\nroot@bbb:~# ")


def config(tmp_path: Path, port: int) -> dict[str, object]:
    power = tmp_path / "power"
    return {
        "name": "bbb-01",
        "device_type": "serial",
        "console": f"socket://127.0.0.1:{port}",
        # the fake board prints its boot log when poked after power on
        "power_on": [f"touch {power}"],
        "power_off": [f"rm -f {power}"],
        "prompts": [r"root@bbb:~# "],
        "login": [{"expect": "login: ", "send": "root"}],
    }


def test_boot_power_cycles_logs_in_and_reaches_the_prompt(tmp_path: Path) -> None:
    board = FakeBoard(tmp_path / "power")
    device = create_device(config(tmp_path, board.port), tmp_path / "work")
    console = device.connect()

    # poke the fake board once power is on (a real board prints by itself)
    def power_on_then_poke() -> None:
        type(device).power_on(device)
        console.sendline("boot-check")

    device.power_on = power_on_then_poke  # type: ignore[method-assign]
    try:
        console = device.boot(timeout=10, setup=["echo setup-done"])
        assert (tmp_path / "power").exists()
        assert "setup-done" in console.before
        assert board.lines == ["boot-check", "root", "echo setup-done"]
    finally:
        device.shutdown()
    assert not (tmp_path / "power").exists()


def test_boot_timeout_names_the_device_and_prompt(tmp_path: Path) -> None:
    board = FakeBoard(tmp_path / "power")
    cfg = config(tmp_path, board.port)
    cfg["login"] = []
    device = create_device(cfg, tmp_path / "work")
    try:
        with pytest.raises(ConsoleTimeout, match=r"bbb-01.*root@bbb"):
            device.boot(timeout=0.3)
    finally:
        device.shutdown()


def test_failing_power_command_is_an_infrastructure_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, 1)
    cfg["power_on"] = ["echo 'PDU port 3 unreachable' >&2; exit 3"]
    device = create_device(cfg, tmp_path / "work")
    with pytest.raises(
        InfrastructureError, match=r"bbb-01: power on command .* exited with 3: PDU"
    ):
        device.power_on()
