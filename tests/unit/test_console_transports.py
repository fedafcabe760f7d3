"""The real Console driver over a pseudo-terminal pair and over socket:// on 127.0.0.1."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from device_agent.console import Console, ConsoleClosed, ConsoleTimeout


def read_fd_until(fd: int, wanted: bytes, timeout: float = 5) -> bytes:
    deadline = time.monotonic() + timeout
    got = b""
    while wanted not in got:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"did not get {wanted!r}, got {got!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            got += os.read(fd, 4096)
    return got


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)
    try:
        yield master, path
    finally:
        os.close(master)


def test_pty_console_send_expect_and_listeners(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    con = Console(path, name="pty-board", prompts=[r"board# "])
    chunks: list[bytes] = []
    con.add_listener(chunks.append)
    try:
        os.write(master, b"U-Boot 2024\r\n\x1b[1;31mboard# \x1b[0m\x1b[6n")
        assert con.read_until_prompt(timeout=5) == "U-Boot 2024\n"
        con.sendline("echo hi")
        assert read_fd_until(master, b"echo hi\n") == b"echo hi\n"
        os.write(master, b"hi\r\nboard# ")
        index, match = con.expect(["nope", r"(\w+)\nboard# "], timeout=5)
        assert (index, match.group(1)) == (1, "hi")
        assert b"".join(chunks).startswith(b"U-Boot 2024\r\n\x1b[1;31m")
    finally:
        con.close()


def test_pty_console_times_out_with_last_output(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    con = Console(path, name="pty-slow")
    try:
        os.write(master, b"Starting kernel ...\r\n")
        with pytest.raises(ConsoleTimeout, match=r"pty-slow.*'login:'.*Starting kernel"):
            con.expect("login:", timeout=0.3)
    finally:
        con.close()


def test_pty_console_answers_cursor_query_when_asked(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    con = Console(path, name="pty-ask", answer_cursor_query=True)
    try:
        os.write(master, b"/ # \x1b[6n")
        con.expect("/ # ", timeout=5)
        assert read_fd_until(master, b"\x1b[1;1R").endswith(b"\x1b[1;1R")
    finally:
        con.close()


class OneShotServer:
    """A TCP 'serial server' (like ser2net) on 127.0.0.1 that echoes lines uppercased."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        self.conn = conn
        conn.sendall(b"login: ")
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            self.received += data
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line == b"bye":
                    conn.close()
                    return
                conn.sendall(line.upper() + b"\r\n$ ")


def test_socket_console_round_trip_and_disconnect() -> None:
    server = OneShotServer()
    con = Console(f"socket://127.0.0.1:{server.port}", name="ser2net-1", prompts=[r"\$ "])
    try:
        con.expect("login: ", timeout=5)
        con.sendline("root")
        assert con.read_until_prompt(timeout=5) == "ROOT\n"
        con.sendline("uname -a")
        assert con.read_until_prompt(timeout=5) == "UNAME -A\n"
        assert server.received == b"root\nuname -a\n"
        con.sendline("bye")
        with pytest.raises(ConsoleClosed, match="ser2net-1"):
            con.expect("never", timeout=5)
    finally:
        con.close()
        server.sock.close()


def test_a_socket_console_reads_what_is_waiting_in_one_chunk_not_byte_by_byte() -> None:
    """pyserial's socket:// ``in_waiting`` says 1 for any amount waiting: the reader
    must still take everything that is there (a QEMU VM's console is one), not one
    byte per read and pause."""
    server = OneShotServer()
    con = Console(f"socket://127.0.0.1:{server.port}", name="vm-1", prompts=[r"\$ "])
    chunks: list[bytes] = []
    try:
        con.expect("login: ", timeout=5)
        con.add_listener(chunks.append)
        line = "x" * 200
        con.sendline(line)
        assert con.read_until_prompt(timeout=30) == line.upper() + "\n"
        # 200 characters + CRLF + prompt sent at once: a few reads, not one per byte
        assert sum(map(len, chunks)) == len(line) + 4
        assert len(chunks) <= 10, [len(c) for c in chunks]
    finally:
        con.close()
        server.sock.close()


def test_socket_console_unreachable_is_infrastructure_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    from schemas.errors import InfrastructureError

    with pytest.raises(InfrastructureError, match=f"127.0.0.1:{port}"):
        Console(f"socket://127.0.0.1:{port}", open_timeout=0.3)
