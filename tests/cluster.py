"""The 3-node RabbitMQ cluster of ``scripts/rabbitmq-cluster.sh``, for failover tests.

``.ci/run`` starts it; on a laptop without it the tests skip, under CI they
fail. Each test gets its own vhost (cluster-wide), made through node 1's
management API. Node N listens on ``BASE_PORT + N - 1``; ``$LAVAMQ_CLUSTER_PORT``
picks another cluster of the script (a session of its own: start it with the
same variable set).

Several suites on one machine share a cluster: a test that kills its nodes
holds :func:`exclusive` (a lock file in the cluster's data dir) for as long
as nodes may be down, so two such tests never kill each other's nodes, and a
benchmark on the cluster holds the shared side of the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import services

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "rabbitmq-cluster.sh"
BASE_PORT = int(os.environ.get("LAVAMQ_CLUSTER_PORT", "5781"))
NODES = 3
#: the name of the lock file in the cluster's data dir (bench/load.py uses it too)
LOCK_FILE = "use.lock"


def _script(*args: str, timeout: float = 300) -> str:
    out = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return out.stdout


def running() -> bool:
    """Every node of the cluster up and clustered."""
    try:
        return f"running members: {NODES} of {NODES}" in _script("status", timeout=60)
    except (subprocess.SubprocessError, OSError):
        return False


def info() -> dict[str, str]:
    """The script's ``port``, ``dir`` and ``name`` (node name prefix) for this cluster."""
    return dict(item.split("=", 1) for item in _script("info", timeout=30).split())


@contextlib.contextmanager
def exclusive(timeout: float = 600) -> Iterator[None]:
    """Hold the cluster for a test that kills its nodes (other holders wait)."""
    directory = Path(info()["dir"])
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / LOCK_FILE).open("a") as fh:
        # flock has no timeout: poll, so a stuck holder fails the test, not the suite
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the cluster's {directory / LOCK_FILE} is held by another run "
                        f"for over {timeout:g} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def node_of_port(port: int) -> int:
    return port - BASE_PORT + 1


def node_pid(node: int) -> int:
    """The OS pid of one node (a test kill -9s it: no clean shutdown, no goodbye to its peers)."""
    return int(_script("pid", str(node)).strip())


def start_missing_nodes() -> None:
    """Start every node that is not running and wait until the cluster has all of them."""
    _script("start")


class ClusterVhost:
    """A throw-away vhost on the cluster, for the user guest."""

    def __init__(self) -> None:
        self.name = f"lavamq-cluster-{uuid.uuid4().hex[:10]}"
        self.mgmt_url = f"http://127.0.0.1:{BASE_PORT + 10000}"
        q = services.quote(self.name)
        self.api("PUT", f"/vhosts/{q}", {})
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        self.api("PUT", f"/permissions/{q}/guest", everything)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return services.mgmt(method, path, body, base=self.mgmt_url)

    def url(self) -> str:
        """Every node's URL, the way a lab gives them to lavamq."""
        q = services.quote(self.name)
        return ",".join(f"amqp://guest:guest@127.0.0.1:{BASE_PORT + i}/{q}" for i in range(NODES))

    def leader_of(self, queue: str, timeout: float = 60.0) -> int:
        """The node leading a quorum queue, asked of each node in turn.

        Just after a node came back the management API may answer 500 for a
        quorum queue (its members still electing) or the node may not listen
        yet: ask the next one, and again until ``timeout``.
        """
        path = f"/queues/{services.quote(self.name)}/{services.quote(queue)}"
        deadline = time.monotonic() + timeout
        last = "no node answered"
        while True:
            for i in range(NODES):
                base = f"http://127.0.0.1:{BASE_PORT + 10000 + i}"
                try:
                    info = services.mgmt("GET", path, base=base)
                except OSError as exc:  # an HTTPError 500 while electing, or not listening
                    last = f"node {i + 1}: {exc}"
                    continue
                if info and (info.get("leader") or info.get("node")):
                    name = str(info.get("leader") or info["node"])
                    # <prefix>-c<N>@localhost
                    return int(name.split("@", 1)[0].rsplit("-c", 1)[1])
            if time.monotonic() > deadline:
                raise AssertionError(f"no node told {queue}'s leader within {timeout:g} s: {last}")
            time.sleep(0.5)

    def delete(self) -> None:
        with contextlib.suppress(OSError):
            self.api("DELETE", f"/vhosts/{services.quote(self.name)}")
