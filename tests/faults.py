"""Fault injection for the reliability tests: a cutting TCP proxy and killable services.

``BrokerProxy`` listens on 127.0.0.1 and forwards every connection to
RabbitMQ. ``outage()`` closes every client connection at once (what clients
see when the broker stops) and refuses new ones until enough reconnect
attempts were turned away, so the outage is measured in events, not seconds.
``broker_failure()`` closes every client connection the way RabbitMQ does
when it fails itself: an AMQP ``connection.close`` with 541 INTERNAL_ERROR
(what a consumer of a quorum queue gets when the queue's majority is away
for about a minute).
Other tests share the real broker, so an outage of our own clients is the
only broker fault a test may cause.

``ServiceProcess`` (from ``lab``) runs a lavamq service as a real process,
waits for its readiness line, and can SIGKILL and restart it.

``record_reliability`` appends one measured row (faults injected, messages
sent, lost, duplicated) to ``$LAVAMQ_RESULTS_DIR/reliability.json`` (default
``build/results``); ``scripts/reliability_report.py`` renders them in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
from lab import ServiceProcess, wait_for

from broker_config import topology
from broker_config.consumer import Delivery
from device_agent.multinode import MultinodeClient

__all__ = ["BrokerProxy", "ServiceProcess", "record_reliability", "wait_for"]

FRAME_METHOD, FRAME_END = 1, 0xCE


def connection_close_frame(code: int, text: str) -> bytes:
    """An AMQP 0-9-1 ``connection.close`` (class 10, method 50) method frame on channel 0."""
    reason = text.encode()
    payload = struct.pack(">HHHB", 10, 50, code, len(reason)) + reason + struct.pack(">HH", 0, 0)
    return struct.pack(">BHI", FRAME_METHOD, 0, len(payload)) + payload + bytes([FRAME_END])


class _Downstream:
    """The broker → client half of one proxied connection, forwarded whole frame by
    whole frame, so a frame of our own can be put between two of the broker's."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.buffer = b""
        self.closed = False

    def forward(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            self.buffer += data
            end = 0
            while len(self.buffer) - end >= 7:
                size = struct.unpack_from(">I", self.buffer, end + 3)[0]
                if len(self.buffer) - end < 8 + size:
                    break
                end += 8 + size
            if end:
                self.client.sendall(self.buffer[:end])
                self.buffer = self.buffer[end:]

    def inject_close(self, code: int, text: str) -> None:
        """Send ``connection.close`` between two frames, then end the stream (a FIN, not a
        reset: the client reads the close first, whenever it next reads)."""
        with self.lock:
            if not self.closed:
                self.closed = True
                with contextlib.suppress(OSError):
                    self.client.sendall(connection_close_frame(code, text))
                    self.client.shutdown(socket.SHUT_WR)


ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("LAVAMQ_RESULTS_DIR", ROOT / "build" / "results"))


class BrokerProxy:
    """A TCP proxy to the broker that can cut every connection on demand."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        #: client socket → its broker → client half
        self._downstream: dict[socket.socket, _Downstream] = {}
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

    def broker_failure(self, code: int = 541) -> int:
        """Close every proxied connection as a failing RabbitMQ does: ``connection.close``
        with ``code`` (541 INTERNAL_ERROR) after the broker's last whole frame, then
        end of stream; the broker's side is cut. Returns how many."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            halves = [self._downstream.pop(client, None) for client, _ in pairs]
        for (_, upstream), half in zip(pairs, halves, strict=True):
            if half is not None:
                half.inject_close(code, "INTERNAL_ERROR - injected by the test's broker proxy")
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                upstream.close()
        self.cuts += 1
        return len(pairs)

    def down(self) -> int:
        """Cut everything and refuse new connections until ``up()``; returns how many were cut."""
        self._down.set()
        return self.cut()

    def up(self) -> None:
        self._down.clear()

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
            downstream = _Downstream(client)
            with self._lock:
                self._pairs.append((client, upstream))
                self._downstream[client] = downstream
                self.accepted += 1
            threading.Thread(
                target=self._pump, args=(client, upstream, upstream.sendall), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, downstream.forward), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, send: Callable[[bytes], None]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                send(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._pairs = [p for p in self._pairs if src not in p]
                self._downstream.pop(src, None)
                self._downstream.pop(dst, None)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    def __enter__(self) -> BrokerProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CountingClient(MultinodeClient):
    """A MultinodeClient that counts what reaches its waiters (after de-duplication)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.seen: Counter[tuple[str, ...]] = Counter()
        self.seen_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _on_message(self, delivery: Delivery) -> None:
        body = delivery.body
        if delivery.message_type == "multinode-send":
            key: tuple[str, ...] = ("send", body["node"], body["message_id"])
        elif delivery.message_type == "multinode-release":
            key = ("release", body["kind"], body["message_id"], str(body["generation"]))
            if body.get("role"):
                key += (body["role"],)  # a wait-all of one role: its own release
        else:
            key = (delivery.message_type, body.get("reason", ""))
        with self.seen_lock:
            self.seen[key] += 1
        super()._on_message(delivery)


def first_sync_sends(members: dict[str, str], sync_id: str) -> set[tuple[str, ...]]:
    """What a group's first ``lava-sync`` of an id delivers besides its release: as
    LAVA documents it, each node's first sync also sends the id, so the id's
    wait-all releases (the group's and each role's) follow (``MultinodeClient.sync``)."""
    releases = {("release", "wait-all", sync_id, "0")} | {
        ("release", "wait-all", sync_id, "0", role) for role in set(members.values())
    }
    return {("send", n, sync_id) for n in members} | releases


class Progress:
    """How far the slowest node got, with a condition the fault thread waits on."""

    def __init__(self, nodes: list[str]) -> None:
        self.rounds = dict.fromkeys(nodes, 0)
        self.cond = threading.Condition()

    def done(self, node: str, rnd: int) -> None:
        with self.cond:
            self.rounds[node] = rnd
            self.cond.notify_all()

    def wait_all_reach(self, rnd: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: min(self.rounds.values()) >= rnd, timeout)


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


def raw_channel(url: str) -> tuple[amqp.Connection, Any]:
    """A bare py-amqp channel for ``url`` (no lavamq code between the test and the broker)."""
    parts = url.split("://", 1)[1]
    creds, rest = parts.rsplit("@", 1)
    user, password = (urllib.parse.unquote(p) for p in creds.split(":", 1))
    hostport, vhost = rest.split("/", 1)
    conn = amqp.Connection(
        hostport,
        userid=user,
        password=password,
        virtual_host=urllib.parse.unquote(vhost),
    )
    conn.connect()
    return conn, conn.channel()


def dead_letters(admin: str, count: int, timeout: float = 15) -> list[Any]:
    """Take ``count`` messages from ``lava.dead`` (failing after ``timeout``)."""
    conn, channel = raw_channel(admin)
    got: list[Any] = []
    try:

        def more() -> bool:
            message = channel.basic_get(topology.DEAD_QUEUE_NAME, no_ack=True)
            if message is not None:
                got.append(message)
            return len(got) >= count

        wait_for(more, timeout, f"{count} message(s) in lava.dead")
    finally:
        conn.close()
    return got
