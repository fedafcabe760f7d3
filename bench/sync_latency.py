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
  published from one connection, because 1000 Python threads with 2000
  connections measure the benchmark, not lavamq. The N nodes are taken to
  run on dispatcher hosts of ``--client-max`` (64) nodes each, and each
  host reads ONE node queue of the group, as its ``GroupReceiver`` does: one
  raw pika connection consumes the lead queue of every host (16 queues for
  N=1000), and a round is released when every host has its release. (Until
  2026-12-04 this path read all N queues in the one connection: the bench
  then decoded N copies of a release naming N nodes, 1000 x 13 KB a round,
  which measured its own consumer.) pika, not kombu: kombu's per-message
  overhead in one thread was most of the measured latency.

Release latency: from the moment the last acknowledgement of a round is
confirmed by the broker to the moment every node has its release. Also
reports ``send``→``wait`` messages per second between two clients.

``--barrier-root DIR`` runs the barrier from another checkout (e.g. a
``git worktree`` of an older commit) for before/after comparisons under the
same conditions; the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import lava_anchor  # noqa: E402
import pika  # noqa: E402
from common import LAVAMQ, ROOT, Row, bench_vhost, print_rows  # noqa: E402
from floors import sync_floor  # noqa: E402
from kombu import Connection, Consumer, Exchange, Queue  # noqa: E402

from broker_config import topology  # noqa: E402
from broker_config.broker import Broker  # noqa: E402
from broker_config.declare import declare_topology  # noqa: E402
from coordinator.groups import create_group, end_group  # noqa: E402
from device_agent.group_state import ReleaseKey  # noqa: E402
from device_agent.multinode import MultinodeClient  # noqa: E402
from schemas.messages.multinode import MultinodeSyncSchema  # noqa: E402


def timed_sync(c: MultinodeClient, message_id: str, timeout: float) -> tuple[float, float]:
    """``c.sync(message_id)`` by hand: when its acknowledgement was confirmed, when it
    was released (what ``MultinodeClient.sync`` does, with the time stamps)."""
    gen = c._sync_generation.get(message_id, 0) + 1
    c._sync_generation[message_id] = gen
    connects = c._receiver.connects
    c._publish_barrier(
        MultinodeSyncSchema(),
        {"group": c.group, "node": c.self_name, "message_id": message_id, "generation": gen},
    )
    published = time.perf_counter()
    c._wait_release("lava-sync", ReleaseKey("sync", message_id, gen), timeout, connects)
    return published, time.perf_counter()


class Barrier:
    def __init__(self, url: str, db: str, root: Path = ROOT) -> None:
        self.proc = subprocess.Popen(
            [*LAVAMQ, "barrier", "--broker", url, "--db", db],
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
            t, done = timed_sync(c, "bench", timeout)
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


def bench_light(url: str, n: int, rounds: int, timeout: float, per_host: int) -> list[float]:
    """Many simulated nodes over two connections, on hosts of ``per_host`` nodes
    each reading one node queue (see the module docstring)."""
    broker = Broker(url)
    group = f"b{uuid.uuid4().hex[:6]}"
    members = {f"node{i:04d}": "client" if i else "server" for i in range(n)}
    create_group(broker, group, members, timeout=timeout)
    #: the queue each host reads: its first node's
    leads = list(members)[::per_host]
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
                    if counts[gen] == len(leads):
                        done_at[gen] = time.perf_counter()
                        cond.notify_all()
            ch.basic_ack(method.delivery_tag)

        for m in leads:
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
        woke: list[float] = []

        def wait(gen: int = gen, woke: list[float] = woke) -> None:
            with cond:
                if cond.wait_for(lambda: gen in done_at, timeout):
                    woke.append(time.perf_counter())

        # one host's nodes wait for the release (hosts wake theirs in parallel)
        waiters = [threading.Thread(target=wait, daemon=True) for _ in range(per_host)]
        for waiter in waiters:
            waiter.start()
        for m in members:
            broker.publish(
                topology.BARRIER_EXCHANGE_NAME,
                topology.barrier_routing_key(group),
                schema,
                {"group": group, "node": m, "message_id": "bench", "generation": gen},
            )
        last = time.perf_counter()
        for waiter in waiters:
            waiter.join(timeout)
        if len(woke) < per_host:
            raise SystemExit(f"N={n}: round {gen} not released after {timeout} s")
        # the last host has it, and one host's nodes (threads) all woke
        latencies.append(max(woke) - last)
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


def bench_send_rate(url: str, senders: int, per_sender: int) -> float:
    """Aggregate lava-send/s of ``senders`` nodes sending at once, until one peer has them all."""
    broker = Broker(url)
    group = f"b{uuid.uuid4().hex[:6]}"
    members = {f"s{i:03d}": "sender" for i in range(senders)} | {"peer": "receiver"}
    create_group(broker, group, members, timeout=120)
    clients = [MultinodeClient(url, group, m, members, timeout=120) for m in members]
    peer = clients[-1]
    start = threading.Barrier(senders + 1)

    def send(c: MultinodeClient) -> None:
        start.wait()
        for k in range(per_sender):
            c.send(f"m{k}", {"k": str(k)})

    threads = [threading.Thread(target=send, args=(c,)) for c in clients[:-1]]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    # the peer has every node's last message (a node's sends arrive in order)
    _wait_all_seen(peer, clients[:-1], f"m{per_sender - 1}")
    elapsed = time.perf_counter() - began
    for c in clients:
        c.close()
    end_group(broker, group, members)
    broker.close()
    return senders * per_sender / elapsed


def _wait_all_seen(peer: MultinodeClient, senders: list[MultinodeClient], last: str) -> None:
    deadline = time.monotonic() + 120
    want = {c.self_name for c in senders}
    while True:
        if want <= set(peer._state.messages.get(last, {})):
            return
        if time.monotonic() > deadline:
            raise SystemExit("send rate: not every message reached the peer in 120 s")
        time.sleep(0.002)


def raw_send_rate(url: str, senders: int, per_sender: int) -> float:
    """The floor of ``bench_send_rate``: the same publishes (persistent, confirmed,
    one connection per sender, to a fanout exchange of senders + 1 queues) with
    kombu and no lavamq code, until a consumer of one queue has them all."""
    name = f"floor.send.{uuid.uuid4().hex[:6]}"
    exchange = Exchange(name, type="fanout", durable=True)
    queues = [Queue(f"{name}.{i}", exchange=exchange, durable=True) for i in range(senders + 1)]
    options = {"confirm_publish": True}
    with Connection(url, transport_options=options) as conn:
        for q in queues:
            q.bind(conn.channel()).declare()
        total = senders * per_sender
        got = threading.Event()
        received = [0]

        def on_message(body: Any, message: Any) -> None:
            message.ack()
            received[0] += 1
            if received[0] == total:
                got.set()

        start = threading.Barrier(senders + 1)

        def send() -> None:
            with Connection(url, transport_options=options) as own:
                producer = own.Producer()
                start.wait()
                for k in range(per_sender):
                    producer.publish({"k": k}, exchange=exchange, delivery_mode=2)

        threads = [threading.Thread(target=send) for _ in range(senders)]
        with Consumer(
            conn.channel(), queues=[queues[0]], callbacks=[on_message], prefetch_count=200
        ):
            for t in threads:
                t.start()
            start.wait()
            began = time.perf_counter()
            while not got.is_set():
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
                if time.perf_counter() - began > 120:
                    raise SystemExit("raw send rate: messages missing after 120 s")
            elapsed = time.perf_counter() - began
        for t in threads:
            t.join()
        for q in queues:
            q.bind(conn.channel()).delete()
        exchange.bind(conn.channel()).delete()
    return total / elapsed


def run(
    nodes: list[int],
    rounds: int,
    *,
    client_max: int = 64,
    anchor: bool = True,
    anchor_rounds: int = 3,
    senders: int = 64,
    per_sender: int = 50,
    barrier_root: Path = ROOT,
    db: str | None = None,
) -> list[Row]:
    """Every figure of this bench, each with its ratio measured in this run."""
    rows: list[Row] = []
    with bench_vhost() as url:
        tmp = tempfile.mkdtemp(prefix="lavamq-bench-")
        with Broker(url) as broker:
            declare_topology(broker)
        barrier = Barrier(url, db or f"sqlite:///{tmp}/barrier.sqlite", barrier_root.resolve())
        try:
            for n in nodes:
                n_rounds = rounds if n <= 256 else max(5, rounds // 3)
                if n <= client_max:
                    lat = bench_clients(url, n, n_rounds, 120)
                else:
                    lat = bench_light(url, n, n_rounds, 120, client_max)
                p50 = statistics.median(lat) * 1000
                # the light path: every host has it, one host's nodes woke
                floor, _ = sync_floor(url, n, max(5, n_rounds), threads=min(n, client_max))
                limit = 1.2 if n == 64 else (1.5 if n >= 1000 else None)
                rows.append(
                    Row("sync", f"release p50, N={n}", p50, "ms", "floor", floor * 1000, limit)
                )
                if anchor and n <= 64:
                    lava = lava_anchor.sync_latencies(n, anchor_rounds)
                    rows.append(
                        Row(
                            "sync",
                            f"lava-coordinator p50 / lavamq p50, N={n}",
                            statistics.median(lava) * 1000,
                            "ms",
                            "lavamq release p50",
                            p50,
                            500,
                            higher_is_better=True,
                        )
                    )
            if senders:
                ours = bench_send_rate(url, senders, per_sender)
                raw = raw_send_rate(url, senders, per_sender)
                rows.append(
                    Row(
                        "send",
                        f"lava-send/s, {senders} senders",
                        ours,
                        "msg/s",
                        "raw kombu publish → consume",
                        raw,
                        0.5,
                        higher_is_better=True,
                    )
                )
        finally:
            barrier.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[2, 16, 64, 256, 1000])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--client-max", type=int, default=64)
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--per-sender", type=int, default=50)
    parser.add_argument(
        "--anchor",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run LAVA's lava-coordinator (bench/all.py always does)",
    )
    parser.add_argument("--anchor-rounds", type=int, default=3)
    parser.add_argument("--db", help="store URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--barrier-root", type=Path, default=ROOT, help="run the barrier from this checkout"
    )
    args = parser.parse_args()
    rows = run(
        args.nodes,
        args.rounds,
        client_max=args.client_max,
        anchor=args.anchor,
        anchor_rounds=args.anchor_rounds,
        senders=args.senders,
        per_sender=args.per_sender,
        barrier_root=args.barrier_root,
        db=args.db,
    )
    print_rows(rows, f"barrier from {args.barrier_root}")


if __name__ == "__main__":
    main()
