"""Benchmark: lava-sync release latency and send→wait throughput on a real RabbitMQ.

Not a test. Run by hand against the local broker (it makes and removes its
own vhost through the management API, and runs a real ``lavamq barrier``
process with an SQLite store in a temporary directory)::

    python bench/sync_latency.py                   # N = 2 16 64 256 1000
    python bench/sync_latency.py --nodes 64 --rounds 50

Two paths:

- N ≤ ``--client-max`` (64): one real ``MultinodeClient`` per node, every
  node calling ``sync()`` in its own thread. All N live in this process, as
  the nodes of one dispatcher host do: each publishes on its own connection
  and they share the process's ``GroupReceiver`` (one connection reading
  one node queue of the group, each delivery handed to every node);
- larger N: the lighter path — the nodes' sync acknowledgements are
  published from one connection and all N node queues are consumed by one
  raw pika connection (one basic.consume per node queue, every release
  acked one by one), because 1000 Python threads with 2000 connections
  measure the benchmark, not lavamq. pika, not kombu: kombu's per-message
  overhead in one thread consuming 1000 queues was most of the measured
  latency (0.65 ms per release, 1000 releases per round).

Release latency: from the moment the last acknowledgement of a round is
confirmed by the broker to the moment every node has its release. Also
reports ``send``→``wait`` messages per second between two clients.

``--barrier-root DIR`` runs the barrier from another checkout (e.g. a
``git worktree`` of an older commit) for before/after comparisons under the
same conditions; the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from lavamq.cli import main; main()"]
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from broker_config import topology  # noqa: E402
from broker_config.broker import Broker  # noqa: E402
from broker_config.declare import declare_topology  # noqa: E402
from coordinator.groups import create_group, end_group  # noqa: E402
from device_agent.group_state import ReleaseKey  # noqa: E402
from device_agent.multinode import MultinodeClient  # noqa: E402
from schemas.messages.multinode import MultinodeSyncSchema  # noqa: E402

MGMT = os.environ.get("LAVAMQ_BENCH_MGMT", "http://127.0.0.1:15672")
AMQP = os.environ.get("LAVAMQ_BENCH_AMQP", "127.0.0.1:5672")
USER, PASSWORD = "guest", "guest"


def mgmt(method: str, path: str, body: Any = None) -> None:
    req = urllib.request.Request(
        MGMT + "/api" + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
    )
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Content-Type", "application/json")
    urllib.request.urlopen(req, timeout=30).read()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Barrier:
    def __init__(self, url: str, db: str, root: Path = ROOT) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "barrier", "--broker", url, "--db", db],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "lavamq barrier ready":
                return
        raise SystemExit("barrier did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def bench_clients(url: str, n: int, rounds: int, timeout: float) -> list[float]:
    """Real MultinodeClient per node; latency = last sync() published → all released."""
    broker = Broker(url)
    group = f"b{uuid.uuid4().hex[:6]}"
    members = {f"node{i:04d}": "client" if i else "server" for i in range(n)}
    create_group(broker, group, members, timeout=timeout)
    clients = [MultinodeClient(url, group, m, members, timeout=timeout) for m in members]
    latencies = []
    for _ in range(rounds):
        start = threading.Barrier(n + 1)
        published: list[float] = []
        released: list[float] = []
        lock = threading.Lock()

        errors: list[BaseException] = []

        def node(
            c: MultinodeClient,
            start: threading.Barrier = start,
            lock: threading.Lock = lock,
            published: list[float] = published,
            released: list[float] = released,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                one_sync(c, start, lock, published, released)
            except BaseException as exc:
                errors.append(exc)
                raise

        def one_sync(
            c: MultinodeClient,
            start: threading.Barrier,
            lock: threading.Lock,
            published: list[float],
            released: list[float],
        ) -> None:
            start.wait()
            # publish by hand to timestamp the acknowledgement, then wait like sync()
            gen = c._sync_generation.get("bench", 0) + 1
            c._sync_generation["bench"] = gen
            connects = c._receiver.connects
            c._publish_barrier(
                MultinodeSyncSchema(),
                {"group": group, "node": c.self_name, "message_id": "bench", "generation": gen},
            )
            t = time.perf_counter()
            c._wait_release("lava-sync", ReleaseKey("sync", "bench", gen), timeout, connects)
            done = time.perf_counter()
            with lock:
                published.append(t)
                released.append(done)

        threads = [threading.Thread(target=node, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        start.wait()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit(f"N={n}: a node failed: {errors[0]!r}")
        latencies.append(max(released) - max(published))
    for c in clients:
        c.close()
    end_group(broker, group, members)
    broker.close()
    return latencies


def bench_light(url: str, n: int, rounds: int, timeout: float) -> list[float]:
    """Many simulated nodes over two connections (see the module docstring)."""
    broker = Broker(url)
    group = f"b{uuid.uuid4().hex[:6]}"
    members = {f"node{i:04d}": "client" if i else "server" for i in range(n)}
    create_group(broker, group, members, timeout=timeout)
    counts: dict[int, int] = {}
    done_at: dict[int, float] = {}
    cond = threading.Condition()
    ready = threading.Event()
    stop = threading.Event()

    def consume() -> None:
        params = pika.URLParameters(url)
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.basic_qos(prefetch_count=100)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            if properties.type == "multinode-release":
                gen = json.loads(body)["generation"]
                with cond:
                    counts[gen] = counts.get(gen, 0) + 1
                    if counts[gen] == n:
                        done_at[gen] = time.perf_counter()
                        cond.notify_all()
            ch.basic_ack(method.delivery_tag)

        for m in members:
            channel.basic_consume(topology.group_queue_name(group, m), on_message)
        ready.set()
        while not stop.is_set():
            conn.process_data_events(time_limit=0.2)
        with contextlib.suppress(Exception):
            conn.close()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    ready.wait(60)
    latencies = []
    schema = MultinodeSyncSchema()
    for gen in range(1, rounds + 1):
        for m in members:
            broker.publish(
                topology.BARRIER_EXCHANGE_NAME,
                topology.BARRIER_ROUTING_KEY,
                schema,
                {"group": group, "node": m, "message_id": "bench", "generation": gen},
            )
        last = time.perf_counter()
        with cond:
            if not cond.wait_for(lambda: gen in done_at, timeout):  # noqa: B023
                raise SystemExit(f"N={n}: round {gen} not released after {timeout} s")
        latencies.append(done_at[gen] - last)
    stop.set()
    thread.join(10)
    end_group(broker, group, members)
    broker.close()
    return latencies


def bench_send_wait(url: str, count: int) -> float:
    broker = Broker(url)
    group = f"b{uuid.uuid4().hex[:6]}"
    members = {"a": "server", "b": "client"}
    create_group(broker, group, members, timeout=60)
    a = MultinodeClient(url, group, "a", members, timeout=60)
    b = MultinodeClient(url, group, "b", members, timeout=60)
    received = []

    def waiter() -> None:
        for i in range(count):
            received.append(b.wait(f"m{i}"))

    t = threading.Thread(target=waiter)
    start = time.perf_counter()
    t.start()
    for i in range(count):
        a.send(f"m{i}", {"i": str(i)})
    t.join()
    elapsed = time.perf_counter() - start
    a.close()
    b.close()
    end_group(broker, group, members)
    broker.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[2, 16, 64, 256, 1000])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--client-max", type=int, default=64)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--db", help="store URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--barrier-root", type=Path, default=ROOT, help="run the barrier from this checkout"
    )
    args = parser.parse_args()

    vhost = f"lavamq-bench-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(vhost, safe="")
    mgmt("PUT", f"/vhosts/{q}", {})
    mgmt("PUT", f"/permissions/{q}/{USER}", {"configure": ".*", "write": ".*", "read": ".*"})
    url = f"amqp://{USER}:{PASSWORD}@{AMQP}/{q}"
    tmp = tempfile.mkdtemp(prefix="lavamq-bench-")
    db = args.db or f"sqlite:///{tmp}/barrier.sqlite"
    with Broker(url) as broker:
        declare_topology(broker)
    barrier = Barrier(url, db, args.barrier_root.resolve())
    print(f"barrier from {args.barrier_root}; load average {Path('/proc/loadavg').read_text()}")
    try:
        print(f"{'nodes':>6} {'path':>7} {'rounds':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for n in args.nodes:
            rounds = args.rounds if n <= 256 else max(5, args.rounds // 3)
            if n <= args.client_max:
                path, lat = "client", bench_clients(url, n, rounds, 120)
            else:
                path, lat = "light", bench_light(url, n, rounds, 120)
            ms = [x * 1000 for x in lat]
            print(
                f"{n:>6} {path:>7} {rounds:>6} {statistics.median(ms):>8.2f} "
                f"{percentile(ms, 99):>8.2f} {max(ms):>8.2f}",
                flush=True,
            )
        rate = bench_send_wait(url, args.messages)
        print(f"send→wait: {rate:.0f} messages/s ({args.messages} messages, 2 clients)")
        print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        barrier.stop()
        mgmt("DELETE", f"/vhosts/{q}")


if __name__ == "__main__":
    main()
