"""The web view: page times, and a board's console line to the browser's event stream.

Run by hand on a host with RabbitMQ (management API on :15672; enabled and
waited for if it is not)::

    python bench/web.py [--jobs 10000] [--nodes 64] [--seconds 10] [--baud 115200]
                        [--writers 4]

It fills an SQLite store with ``--jobs`` jobs (as bench/lab_server.py does) and
one group of ``--nodes`` nodes, starts ``python -m lavamq server`` on it and
on a throw-away vhost, and measures:

- time to first byte and to the whole page of ``/jobs`` (the first page of
  10k jobs) and of the group's page (64 nodes), 20 loads each;
- the latency from a board's console line to its arrival in the group
  page's server-sent event stream: one thread per board publishes its
  console as the dispatcher does (``log-batch`` on ``lava.logs`` with
  publisher confirms, every 0.1 s as its sub-job publisher, the lines that
  ``--baud`` brought meanwhile: 115.2 100-byte lines/s at 115200 baud, 8N1),
  each line carrying its send time. The board threads are spread over
  ``--writers`` processes (one process's GIL held 64 of them to half the
  rate), and the run prints the rate they really sent. One process follows
  ``/jobs/J/events``; the floor is the broker's own publish→consume of the
  very same messages, read by a plain consumer of a queue bound to
  ``lava.logs`` in another process, in the same run. Target:
  console-to-browser p99 <= 3x the floor's p99. It also prints the CPU the
  server and the floor's consumer spent per 1000 lines.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import lab_server  # noqa: E402
from common import (  # noqa: E402
    bench_vhost,
    follow_broker,
    line_rate,
    log_batch_boards,
    percentile,
    sent_at,
)


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


def follow_stream(port: int, job_id: int, ready: Any, stop: Any, seen: Any, out: Any) -> None:
    """(A process.) Follows the page's event stream; the latency of every console line."""
    latencies: list[float] = []

    def read() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("GET", f"/jobs/{job_id}/events")
        resp = conn.getresponse()
        event = ""
        while True:
            raw = resp.readline()
            if not raw:
                return
            text = raw.decode("utf-8").rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
                ready.set()
            elif text.startswith("data: ") and event == "log":
                now = time.time()
                lines = json.loads(text[6:])
                latencies.extend(now - sent_at(line["message"]) for line in lines)
                with seen.get_lock():
                    seen.value += len(lines)

    # the reading thread blocks in the stream: it ends with the process
    threading.Thread(target=read, daemon=True).start()
    stop.wait()
    out.put(list(latencies))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--baud", type=int, default=115_200)
    ap.add_argument("--writers", type=int, default=4, help="processes publishing the consoles")
    opts = ap.parse_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="lavamq-bench-web-"))
    print(f"filling {opts.jobs} jobs and a {opts.nodes}-node group in {tmp} ...", flush=True)
    db_url = lab_server.fill_store(tmp, opts.jobs, 1)
    group = add_group(db_url, opts.nodes)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    with bench_vhost("lavamq-bench-web") as url:
        from broker_config import topology
        from broker_config.broker import Broker

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
            stream, floor, sent, cpu = stream_and_floor(url, port, group, opts, server.pid)
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
    rate = line_rate(opts.baud)
    achieved = sent / opts.nodes / opts.seconds
    print(f"console line -> event stream, {opts.nodes} boards at {opts.baud} baud "
          f"({rate:.1f} lines/s each) from {opts.writers} processes, {opts.seconds:g} s: "
          f"{achieved:.1f} lines/s per board sent ({achieved / rate:.0%} of the rate)")  # fmt: skip
    print(f"{'path':<34} {'lines':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for name, values in (("broker publish -> consume (floor)", floor),
                         ("board -> browser event stream", stream)):  # fmt: skip
        print(f"{name:<34} {len(values):7d} {percentile(values, 50) * 1e3:8.1f} "
              f"{percentile(values, 99) * 1e3:8.1f}")  # fmt: skip
    ratio = percentile(stream, 99) / percentile(floor, 99)
    print(
        f"p99 ratio to the floor: {ratio:.2f} (target <= 3): {'met' if ratio <= 3 else 'NOT met'}"
    )
    print(f"lines sent {sent}; seen by the floor {len(floor)}, by the stream {len(stream)}")
    per = 1000 / max(1, sent) * 1e3
    print(f"CPU per 1000 lines: the server {cpu[0] * per:.1f} ms (all of it: consumer, "
          f"stream, metrics), the floor's consumer {cpu[1] * per:.1f} ms")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f}")


def stream_and_floor(
    url: str, port: int, group: int, opts: argparse.Namespace, server_pid: int
) -> tuple[list[float], list[float], int, tuple[float, float]]:
    """Boards stream for ``opts.seconds``; the stream's and the floor's latencies, lines
    sent, and the CPU seconds the server and the floor's consumer spent meanwhile.

    The boards' threads are spread over ``opts.writers`` processes, so the bench is not
    what limits the rate; the stream's reader and the floor's consumer have one each.
    """
    mp = multiprocessing.get_context("spawn")
    stop = mp.Event()
    readers = []
    for target, args in ((follow_stream, (port, group)), (follow_broker, (url, "#"))):
        ready, seen, out = mp.Event(), mp.Value("q", 0), mp.Queue()
        proc = mp.Process(target=target, args=(*args, ready, stop, seen, out), daemon=True)
        proc.start()
        if not ready.wait(60):
            raise SystemExit(f"bench: {target.__name__} did not start")
        readers.append((proc, seen, out))
    start = time.time() + 5.0  # every writer process imported and connected by then
    counts = mp.Queue()
    writers = [
        mp.Process(target=log_batch_boards, args=(url, str(group),
                                                  list(range(opts.nodes))[k :: opts.writers],
                                                  opts.baud, start, start + opts.seconds, counts))
        for k in range(opts.writers)
    ]  # fmt: skip
    floor_pid = readers[1][0].pid
    assert floor_pid is not None
    before = lab_server.cpu_seconds(server_pid), lab_server.cpu_seconds(floor_pid)
    for proc in writers:
        proc.start()
    sent = sum(counts.get(timeout=opts.seconds + 120) for _ in writers)
    for proc in writers:
        proc.join(30)
    # until both readers have every line sent, or 30 s (a line lost is then reported)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(seen.value < sent for _, seen, _ in readers):
        time.sleep(0.2)
    cpu = (
        lab_server.cpu_seconds(server_pid) - before[0],
        lab_server.cpu_seconds(floor_pid) - before[1],
    )
    stop.set()
    stream, floor = (out.get(timeout=60) for _, _, out in readers)
    for proc, _, _ in readers:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    return stream, floor, sent, cpu


if __name__ == "__main__":
    main()
