"""The web view: page times, and a board's console line to the browser's event stream.

Run by hand on a host with RabbitMQ (management API on :15672; enabled and
waited for if it is not)::

    python bench/web.py [--jobs 10000] [--nodes 64] [--seconds 10] [--baud 115200]

It fills an SQLite store with ``--jobs`` jobs (as bench/lab_server.py does) and
one group of ``--nodes`` nodes, starts ``python -m lavamq server`` on it and
on a throw-away vhost, and measures:

- time to first byte and to the whole page of ``/jobs`` (the first page of
  10k jobs) and of the group's page (64 nodes), 20 loads each;
- the latency from a board's console line to its arrival in the group
  page's server-sent event stream: one thread per board publishes its
  console as the dispatcher does (``log-batch`` on ``lava.logs``, with
  publisher confirms, a batch every 50 ms at ``--baud`` of 100-byte lines),
  each line carrying its send time; one reader follows ``/jobs/J/events``.
  The floor is the broker's own publish→consume of the very same messages,
  read by a plain consumer of a queue bound to ``lava.logs`` in the same
  run. Target: console-to-browser p99 <= 3x the floor's p99.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import lab_server  # noqa: E402
from common import bench_vhost, percentile  # noqa: E402

LINE_BYTES = 100
BATCH_SECONDS = 0.05


def add_group(db_url: str, nodes: int) -> int:
    """One running job of ``nodes`` nodes on boards ``vm0..``; its id."""
    from sqlalchemy import func, insert, select

    from coordinator.store import Device, Group, Job, Store, SubJob

    store = Store(db_url, run_migrations=False)
    now = time.time()
    with store.session() as s:
        job_id = int(s.scalar(select(func.max(Job.id))) or 0) + 1
        first_sub = int(s.scalar(select(func.max(SubJob.id))) or 0) + 1
        first_dev = int(s.scalar(select(func.max(Device.id))) or 0) + 1
        s.execute(insert(Device), [
            {"id": first_dev + i, "name": f"board{i:02d}", "device_type_id": 1, "tags": [],
             "host_id": 1, "state": "running", "health": "good", "current_job_id": job_id,
             "current_subjob_id": first_sub + i} for i in range(nodes)
        ])  # fmt: skip
        s.execute(insert(Job), [{
            "id": job_id, "job_name": f"{nodes} nodes", "submitter": "bench", "source": "b.yaml",
            "definition": "job_name: group\nvisibility: public\n", "plan": {}, "state": "running",
            "priority": 50, "submit_time": now, "start_time": now,
        }])  # fmt: skip
        s.execute(insert(Group), [{"id": job_id, "job_id": job_id, "name": f"{job_id}-g",
                                   "state": "running"}])  # fmt: skip
        s.execute(insert(SubJob), [
            {"id": first_sub + i, "job_id": job_id, "group_id": job_id, "role": "node",
             "role_index": i, "device_type": "qemu", "tags": [], "device": f"board{i:02d}",
             "state": "running", "is_slave": False, "essential": False, "assigned_at": now,
             "accepted_at": now} for i in range(nodes)
        ])  # fmt: skip
    store.close()
    return job_id


def page_times(port: int, path: str, rounds: int = 20) -> tuple[list[float], list[float]]:
    first, whole = [], []
    for _ in range(rounds):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read(1)
        first.append(time.perf_counter() - t0)
        resp.read()
        whole.append(time.perf_counter() - t0)
        assert resp.status == 200, (path, resp.status)
        conn.close()
    return first, whole


class Reader(threading.Thread):
    """Follows the page's event stream; the latency of every console line in it."""

    def __init__(self, port: int, job_id: int) -> None:
        super().__init__(daemon=True)
        self.port, self.job_id = port, job_id
        self.latencies: list[float] = []
        self.ready = threading.Event()
        self.stop = False

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("GET", f"/jobs/{self.job_id}/events")
        resp = conn.getresponse()
        event = ""
        while not self.stop:
            raw = resp.readline()
            if not raw:
                return
            text = raw.decode("utf-8").rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
                self.ready.set()
            elif text.startswith("data: ") and event == "log":
                now = time.time()
                for line in json.loads(text[6:]):
                    sent = line["message"].split(" ", 2)[1]
                    self.latencies.append(now - float(sent))


def floor_consumer(url: str, latencies: list[float], ready: threading.Event) -> Any:
    """A plain consumer of the same messages (the broker's publish → consume)."""
    from kombu import Connection, Exchange, Queue

    conn = Connection(url)
    queue = Queue(f"bench.floor.{uuid.uuid4().hex[:8]}", Exchange("lava.logs", "topic"),
                  routing_key="#", exclusive=True, auto_delete=True)  # fmt: skip

    def on_message(body: Any, message: Any) -> None:
        now = time.time()
        data = json.loads(message.body)
        for rec in data["records"]:
            latencies.append(now - float(rec["message"].split(" ", 2)[1]))
        message.ack()

    def run() -> None:
        with conn.Consumer([queue], callbacks=[on_message], accept=None):
            ready.set()
            while not getattr(run, "stop", False):
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    continue
        conn.release()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return run, thread


def board(url: str, job_id: int, node: int, baud: int, seconds: float) -> None:
    from broker_config import topology
    from broker_config.messaging import Broker
    from schemas.messages.console import LogBatchSchema

    lines_per_batch = max(1, int(baud / 10 / LINE_BYTES * BATCH_SECONDS))
    name = f"board{node:02d}"
    pad = "x" * (LINE_BYTES - 40)
    with Broker(url) as broker:
        seq, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            stamp = dt_now()
            records = [
                {"time": stamp, "level": "target", "message": f"l {time.time():.6f} {pad}"}
                for _ in range(lines_per_batch)
            ]
            body = {"job": str(job_id), "subjob": str(node + 1), "node": name, "seq": seq,
                    "records": records, "final": False}  # fmt: skip
            broker.publish(topology.LOGS_EXCHANGE_NAME, f"{job_id}.{name}", LogBatchSchema(), body)
            seq += 1
            time.sleep(BATCH_SECONDS)


def dt_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--baud", type=int, default=115_200)
    opts = ap.parse_args()
    import os
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="lavamq-bench-web-"))
    print(f"filling {opts.jobs} jobs and a {opts.nodes}-node group in {tmp} ...", flush=True)
    db_url = lab_server.fill_store(tmp, opts.jobs, 1)
    group = add_group(db_url, opts.nodes)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    with bench_vhost("lavamq-bench-web") as url:
        from broker_config import topology
        from broker_config.messaging import Broker

        with Broker(url) as broker:
            broker.declare(*topology.static_exchanges(), *topology.static_queues())
        server, port = lab_server.start(
            [sys.executable, "-m", "lavamq", "server", "--listen", "127.0.0.1:0", "--db", db_url,
             "--broker", url, "--log-dir", str(tmp / "logs"), "--no-access-log"],
            env, r"lavamq server ready on http://[\d.]+:(\d+)",
        )  # fmt: skip
        try:
            pages = [("/jobs (10k jobs)", "/jobs"), (f"group page ({opts.nodes} nodes)",
                     f"/jobs/{group}")]  # fmt: skip
            timings = [(name, *page_times(port, path)) for name, path in pages]
            reader = Reader(port, group)
            reader.start()
            assert reader.ready.wait(60), "no event stream"
            floor: list[float] = []
            floor_ready = threading.Event()
            stopper, floor_thread = floor_consumer(url, floor, floor_ready)
            assert floor_ready.wait(30)
            boards = [
                threading.Thread(target=board, args=(url, group, i, opts.baud, opts.seconds))
                for i in range(opts.nodes)
            ]
            for b in boards:
                b.start()
            for b in boards:
                b.join()
            time.sleep(2.0)  # the last lines drain (a bench, not a test: no timed assertion)
            reader.stop = True
            stopper.stop = True
            floor_thread.join(5)
        finally:
            server.terminate()
            server.wait(30)
    print()
    print(f"{'page':<28} {'first byte p50':>15} {'p99':>8} {'whole page p50':>15} {'p99':>8}  (ms)")
    for name, first, whole in timings:
        f50, f99 = percentile(first, 50) * 1e3, percentile(first, 99) * 1e3
        w50, w99 = percentile(whole, 50) * 1e3, percentile(whole, 99) * 1e3
        print(f"{name:<28} {f50:15.1f} {f99:8.1f} {w50:15.1f} {w99:8.1f}")
    print()
    rate = opts.baud / 10 / LINE_BYTES
    print(f"console line -> event stream, {opts.nodes} boards at {opts.baud} baud "
          f"({rate:.0f} lines/s each), {opts.seconds:g} s")  # fmt: skip
    print(f"{'path':<34} {'lines':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for name, values in (("broker publish -> consume (floor)", floor),
                         ("board -> browser event stream", reader.latencies)):  # fmt: skip
        print(f"{name:<34} {len(values):7d} {percentile(values, 50) * 1e3:8.1f} "
              f"{percentile(values, 99) * 1e3:8.1f}")  # fmt: skip
    ratio = percentile(reader.latencies, 99) / percentile(floor, 99)
    print(
        f"p99 ratio to the floor: {ratio:.2f} (target <= 3): {'met' if ratio <= 3 else 'NOT met'}"
    )
    print(f"lines seen by the stream: {len(reader.latencies)} of {len(floor)} the floor saw")


if __name__ == "__main__":
    main()
