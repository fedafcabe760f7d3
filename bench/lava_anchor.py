"""LAVA's own lava-coordinator as the anchor of the sync benchmark.

Starts the coordinator of the Debian package ``lava-coordinator`` (installed
with ``apt-get install lava-coordinator``; listed in .ci/apt-packages) on
127.0.0.1 and a free port, with the package's poll delay, and drives N nodes
through ``lava_sync`` the way LAVA's dispatcher does: one TCP connection per
request, an 8-hex-digit length then the JSON request; a ``wait`` answer means
ask again after the poll delay. The protocol was read from the package's
``lava/coordinator/__init__.py`` and LAVA's ``lava_dispatcher/protocols/
multinode.py``; this is our own client.

Release latency is measured as for lavamq: from the moment the last node's
first ``lava_sync`` request of a round was answered to the moment every node
has its ``ack``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import MissingPiece

PACKAGE_CONF = Path("/etc/lava-coordinator/lava-coordinator.conf")
COORDINATOR = "/usr/bin/lava-coordinator"
#: LAVA's coordinator binds 0.0.0.0 whatever its configuration says; the bench
#: keeps it on loopback by running it with bind() pointed at 127.0.0.1
LOOPBACK_BOOT = (
    "import runpy, socket, sys\n"
    "_bind = socket.socket.bind\n"
    "socket.socket.bind = lambda s, a: _bind(s, ('127.0.0.1', a[1]))\n"
    f"runpy.run_path({COORDINATOR!r}, run_name='__main__')\n"
)


def poll_delay() -> float:
    """The package's configured poll delay (what a LAVA lab runs with)."""
    try:
        return float(json.loads(PACKAGE_CONF.read_text()).get("poll_delay", 3))
    except (OSError, ValueError):
        return 3.0


class LavaCoordinator:
    """The real lava-coordinator process on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        python = shutil.which("python3", path="/usr/bin")
        if not Path(COORDINATOR).exists() or python is None:
            raise MissingPiece(
                "bench --anchor: LAVA's lava-coordinator is not installed: "
                "apt-get install lava-coordinator"
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.tmp = Path(tempfile.mkdtemp(prefix="lavamq-anchor-"))
        self.delay = poll_delay()
        conf = self.tmp / "lava-coordinator.conf"
        conf.write_text(
            json.dumps(
                {
                    "port": self.port,
                    "blocksize": 4096,
                    "poll_delay": self.delay,
                    "coordinator_hostname": "127.0.0.1",
                }
            )
        )
        self.proc = subprocess.Popen(
            [
                python,
                "-c",
                LOOPBACK_BOOT,
                "--logfile",
                str(self.tmp / "log"),
                "--config",
                str(conf),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise MissingPiece(f"bench --anchor: lava-coordinator did not start ({self.tmp})")
            time.sleep(0.05)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"zzzzzzzz")  # an invalid header: it drops the connection
            return True
        except OSError:
            return False

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request on its own connection, as LAVA's dispatcher sends it."""
        data = json.dumps(body).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(b"%08X" % len(data) + data)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        raw = b"".join(chunks)
        return dict(json.loads(raw[8:].decode()))

    def until_not_wait(self, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Ask until the answer is not ``wait`` (sleeping the poll delay between, and
        after a refused connection); the answer and when the first ask was answered."""
        first: float | None = None
        while True:
            try:
                reply = self.request(body)
            except OSError:
                # its listen backlog is 1: LAVA's client, refused, tries again later
                time.sleep(self.delay)
                continue
            first = first if first is not None else time.perf_counter()
            if reply.get("response") != "wait":
                return reply, first
            time.sleep(self.delay)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def sync_latencies(n: int, rounds: int) -> list[float]:
    """Release latency of ``rounds`` lava-sync rounds of ``n`` nodes on lava-coordinator."""
    coord = LavaCoordinator()
    try:
        group = f"bench-{time.monotonic_ns()}"
        base = [
            {
                "port": coord.port,
                "blocksize": 4096,
                "poll_delay": coord.delay,
                "host": "127.0.0.1",
                "hostname": "bench",
                "client_name": f"node{i:04d}",
                "group_name": group,
                "role": "server" if i == 0 else "client",
            }
            for i in range(n)
        ]
        _all_threads(
            n, lambda i: coord.until_not_wait({**base[i], "request": "group_data", "group_size": n})
        )
        latencies = []
        for rnd in range(rounds):
            answered: list[float] = [0.0] * n
            released: list[float] = [0.0] * n

            def node(
                i: int,
                rnd: int = rnd,
                answered: list[float] = answered,
                released: list[float] = released,
            ) -> None:
                body = {**base[i], "request": "lava_sync", "messageID": f"bench-{rnd}"}
                reply, answered[i] = coord.until_not_wait(body)
                if reply.get("response") != "ack":
                    raise RuntimeError(f"lava-coordinator answered {reply}")
                released[i] = time.perf_counter()

            _all_threads(n, node)
            latencies.append(max(released) - max(answered))
        return latencies
    finally:
        coord.stop()


def _all_threads(n: int, fun: Any) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            fun(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench --anchor: a node failed: {errors[0]!r}")


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    print([round(x, 3) for x in sync_latencies(size, 2)])
