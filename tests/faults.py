"""Fault injection for the reliability tests: a cutting TCP proxy and killable services.

``BrokerProxy`` listens on 127.0.0.1 and forwards every connection to
RabbitMQ. ``outage()`` closes every client connection at once (what clients
see when the broker stops) and refuses new ones until enough reconnect
attempts were turned away, so the outage is measured in events, not seconds.
Other tests share the real broker, so an outage of our own clients is the
only broker fault a test may cause.

``ServiceProcess`` runs a lavamq service as a real process, waits for its
readiness line, and can SIGKILL and restart it.

``record_reliability`` appends one measured row (faults injected, messages
sent, lost, duplicated) to ``$LAVAMQ_RESULTS_DIR/reliability.json`` (default
``build/results``); ``scripts/reliability_report.py`` renders them in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("LAVAMQ_RESULTS_DIR", ROOT / "build" / "results"))


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it is true (returned) or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class BrokerProxy:
    """A TCP proxy to the broker that can cut every connection on demand."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._down = threading.Event()
        self._closed = threading.Event()
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self._thread = threading.Thread(target=self._accept_loop, name="broker-proxy", daemon=True)
        self._thread.start()

    def url(self, vhost_url: str) -> str:
        """``vhost_url`` (amqp://user:pw@host:port/vhost) rewritten to go through the proxy."""
        scheme, rest = vhost_url.split("://", 1)
        creds, hostpart = rest.rsplit("@", 1)
        path = hostpart.split("/", 1)[1] if "/" in hostpart else ""
        return f"{scheme}://{creds}@127.0.0.1:{self.port}/{path}"

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # --- faults ---

    def cut(self) -> int:
        """Close every proxied connection now; returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self.cuts += 1
        return len(pairs)

    def outage(self, refuse_attempts: int = 2, max_seconds: float = 10.0) -> int:
        """Cut everything and refuse new connections until ``refuse_attempts``
        reconnects were turned away (or ``max_seconds`` passed); then accept again."""
        self._down.set()
        refused_before = self.refused
        cut = self.cut()
        deadline = time.monotonic() + max_seconds
        while self.refused - refused_before < refuse_attempts and time.monotonic() < deadline:
            time.sleep(0.01)
        self._down.clear()
        return cut

    # --- plumbing ---

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                self.refused += 1
                with contextlib.suppress(OSError):
                    client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._pairs = [p for p in self._pairs if src not in p]

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    def __enter__(self) -> BrokerProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServiceProcess:
    """A lavamq service as a real process: start, wait for its readiness line, kill, restart."""

    def __init__(
        self,
        args: Sequence[str],
        ready_line: str,
        *,
        env: dict[str, str] | None = None,
        name: str = "",
    ) -> None:
        self.args = [sys.executable, "-c", "from lavamq.cli import main; main()", *args]
        self.ready_line = ready_line
        self.env = {**os.environ, **(env or {})}
        self.name = name or args[0]
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self.starts = 0
        self.kills = 0

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.starts += 1
        out = self.proc.stdout
        assert out is not None
        lines = self._lines = queue.Queue()

        def read() -> None:
            for line in out:
                self.output.append(line)
                lines.put(line)

        threading.Thread(target=read, daemon=True).start()
        self.wait_line(self.ready_line, timeout)

    def wait_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: no line containing {text!r} after {timeout:g} s; "
                    f"output:\n{''.join(self.output[-40:])}"
                )
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None and self._lines.empty():
                    raise AssertionError(
                        f"{self.name} exited ({self.proc.returncode}) before {text!r}:\n"
                        + "".join(self.output[-40:])
                    ) from None
                continue
            if text in line:
                return line

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, exactly like a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def restart(self, timeout: float = 30.0) -> None:
        self.kill()
        self.start(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def text(self) -> str:
        return "".join(self.output)


def record_reliability(row: dict[str, Any]) -> None:
    """Append one measured row for docs/reliability.md (see scripts/reliability_report.py)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "reliability.json"
    rows: list[dict[str, Any]] = []
    if path.exists():
        with contextlib.suppress(ValueError):
            rows = json.loads(path.read_text())
    row = {**row, "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = [r for r in rows if r.get("test") != row.get("test")] + [row]
    path.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
