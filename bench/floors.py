"""The machine's floors under the sync and console benchmarks, without lavamq code.

Run by hand on a host with RabbitMQ (management API on :15672)::

    python bench/floors.py [--threads 64] [--queues 64] [--rounds 30]

Benchmark numbers only compare across machines together with these: the
same lavamq commit measured 7.0-7.6 ms (64-node sync p50) on one 2-core
machine and 18-20 ms on another. Each row is the best the machine and its
RabbitMQ can do for one step the benchmarks take:

- ``python loop``: seconds of ``sum(range(10**7))``, the interpreter's
  speed; then the same in one process per CPU at once: equal times mean the
  CPUs are really that many cores (a 2-vCPU VM measured 0.18 s alone and
  0.30 s two at once: about 1.2 cores of work with both busy);
- ``wake N threads``: N Python threads wait on one ``threading.Event``;
  set it → the last of them runs (what releasing N nodes of one dispatcher
  process costs at least: every waiting node is a thread);
- ``quorum/classic queue``: one persistent message at a time, publisher
  confirm awaited, into a queue a push consumer reads: publish → confirm
  and publish → delivered (an acknowledgement's way to the barrier);
- ``fanout to N queues``: one message to a fanout exchange bound to N
  durable classic queues (a group's node queues), transient and persistent:
  publish → confirm, and publish → a consumer of one of them has it.

Runs in its own throw-away vhost; prints one table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pika

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_vhost, percentile


def python_loop(_round: int = 0) -> float:
    start = time.perf_counter()
    sum(range(10**7))
    return time.perf_counter() - start


def python_loops(rounds: int, processes: int) -> list[float]:
    """The loop's time in each of ``processes`` processes running it at once."""
    if processes == 1:
        return [python_loop() for _ in range(max(3, rounds // 10))]
    times: list[float] = []
    with multiprocessing.Pool(processes) as pool:
        pool.map(python_loop, range(processes))  # started and warm
        for _ in range(max(3, rounds // 10)):
            times.extend(pool.map(python_loop, range(processes)))
    return times


def wake_threads(n: int, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        event = threading.Event()
        ready = threading.Barrier(n + 1)
        lock = threading.Lock()
        woke: list[float] = []

        def waiter(
            event: threading.Event = event,
            ready: threading.Barrier = ready,
            lock: threading.Lock = lock,
            woke: list[float] = woke,
        ) -> None:
            ready.wait()
            event.wait()
            with lock:
                woke.append(time.perf_counter())

        threads = [threading.Thread(target=waiter) for _ in range(n)]
        for t in threads:
            t.start()
        ready.wait()
        time.sleep(0.01)  # every waiter is inside event.wait()
        start = time.perf_counter()
        event.set()
        for t in threads:
            t.join()
        times.append(max(woke) - start)
    return times


class Consumer:
    """A push consumer on its own connection and thread; stamps each arrival."""

    def __init__(self, url: str, queues: list[str]) -> None:
        self.arrived: dict[bytes, float] = {}
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, queues), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise SystemExit("floors: consumer did not start")

    def _run(self, url: str, queues: list[str]) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        channel = conn.channel()
        channel.basic_qos(prefetch_count=1000)

        def on_message(ch: object, method: object, _props: object, body: bytes) -> None:
            now = time.perf_counter()
            with self.cond:
                self.arrived.setdefault(body, now)
                self.cond.notify_all()

        for queue in queues:
            channel.basic_consume(queue, on_message, auto_ack=True)
        self._ready.set()
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.05)
        conn.close()

    def wait(self, body: bytes, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: body in self.arrived, timeout):
                raise SystemExit(f"floors: {body!r} never arrived")
            return self.arrived[body]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def publish_rounds(
    channel: pika.BlockingChannel,
    exchange: str,
    key: str,
    persistent: bool,
    consumer: Consumer,
    rounds: int,
) -> tuple[list[float], list[float]]:
    confirms, delivered = [], []
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1)
    for _ in range(rounds):
        body = uuid.uuid4().bytes
        start = time.perf_counter()
        channel.basic_publish(exchange, key, body, props)
        confirms.append(time.perf_counter() - start)
        delivered.append(consumer.wait(body) - start)
        time.sleep(0.005)
    return confirms, delivered


def sync_floor(
    url: str, n: int, rounds: int, threads: int | None = None
) -> tuple[float, dict[str, float]]:
    """The floor of one N-node lava-sync release, in seconds (p50 of each step, summed).

    What no implementation over this broker can beat: the last acknowledgement's
    way into a quorum queue and out to its consumer, one transient message to a
    fanout exchange of N queues until a consumer of one has it, and waking
    ``threads`` (N) waiting threads: one host's nodes. Measured in ``url``'s
    vhost, cleaned up afterwards.
    """
    threads = n if threads is None else threads
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.confirm_delivery()
    name = f"floor.quorum.{uuid.uuid4().hex[:6]}"
    channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    consumer = Consumer(url, [name])
    _, quorum = publish_rounds(channel, "", name, True, consumer, rounds)
    consumer.stop()
    channel.queue_delete(name)
    exchange = f"floor.fanout.{uuid.uuid4().hex[:6]}"
    channel.exchange_declare(exchange, "fanout")
    queues = [f"{exchange}.{i}" for i in range(n)]
    for q in queues:
        channel.queue_declare(q, durable=True)
        channel.queue_bind(q, exchange)
    consumer = Consumer(url, queues[:1])
    _, fanout = publish_rounds(channel, exchange, "", False, consumer, rounds)
    consumer.stop()
    for q in queues:
        channel.queue_delete(q)
    channel.exchange_delete(exchange)
    conn.close()
    steps = {
        "quorum queue publish → delivered": statistics.median(quorum),
        f"fanout to {n} queues → one has it": statistics.median(fanout),
        f"wake {threads} threads": statistics.median(wake_threads(threads, rounds)),
    }
    return sum(steps.values()), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--queues", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    rows: list[tuple[str, list[float]]] = []
    cores = os.cpu_count() or 1
    rows.append(("python loop sum(range(10**7)), s", python_loops(args.rounds, 1)))
    rows.append(
        (f"the same loop in {cores} processes at once, s", python_loops(args.rounds, cores))
    )
    rows.append((f"wake {args.threads} threads, ms", wake_threads(args.threads, args.rounds)))

    with bench_vhost("lavamq-floors") as url:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        channel = conn.channel()
        channel.confirm_delivery()
        for kind in ("quorum", "classic"):
            name = f"floor.{kind}"
            channel.queue_declare(name, durable=True, arguments={"x-queue-type": kind})
            consumer = Consumer(url, [name])
            confirms, delivered = publish_rounds(channel, "", name, True, consumer, args.rounds)
            consumer.stop()
            rows.append((f"{kind} queue: publish → confirm, ms", confirms))
            rows.append((f"{kind} queue: publish → delivered, ms", delivered))
        channel.exchange_declare("floor.fanout", "fanout")
        queues = [f"floor.node{i}" for i in range(args.queues)]
        for name in queues:
            channel.queue_declare(name, durable=True)
            channel.queue_bind(name, "floor.fanout")
        # the consumer reads one queue, as a process's group receiver does
        consumer = Consumer(url, queues[:1])
        for persistent in (False, True):
            label = f"fanout to {args.queues} queues, {'persistent' if persistent else 'transient'}"
            confirms, delivered = publish_rounds(
                channel, "floor.fanout", "", persistent, consumer, args.rounds
            )
            rows.append((f"{label}: publish → confirm, ms", confirms))
            rows.append((f"{label}: publish → one has it, ms", delivered))
            for name in queues:
                channel.queue_purge(name)
        consumer.stop()
        conn.close()

    print(f"load average {Path('/proc/loadavg').read_text().strip()}")
    width = max(len(label) for label, _ in rows)
    print(f"{'floor':<{width}} {'p50':>8} {'p99':>8}")
    for label, values in rows:
        scale: Callable[[float], float] = (
            (lambda v: v) if label.endswith(", s") else (lambda v: v * 1000)
        )
        scaled = [scale(v) for v in values]
        print(f"{label:<{width}} {statistics.median(scaled):>8.2f} {percentile(scaled, 99):>8.2f}")


if __name__ == "__main__":
    main()
