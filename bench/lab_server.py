"""The lab server under 50 concurrent clients, next to a bare uvicorn in the same run.

Run by hand (no broker needed: the server reads a store made here)::

    python bench/lab_server.py [--jobs 10000] [--log-mb 50] [--clients 50]

It fills an SQLite store with ``--jobs`` two-node jobs and one node's log of
``--log-mb`` MB in the log store, starts ``python -m lavamq server`` on it,
and a bare uvicorn "hello world" (the floor: the same HTTP server and
interpreter with no lavamq code). Then ``--clients`` threads, each with its
own keep-alive connection, send the lavacli calls: ``scheduler.jobs.list``
(the first page of 10k jobs, as ``lavacli jobs list``), ``scheduler.jobs.show``
of random jobs (anonymous, and with a user's token as lavacli sends it),
``scheduler.jobs.logs`` pages of 1000 lines at random places of the 50 MB
log; each is also sent to the floor (same body, headers and size of answer
it does not compute). Beside the latencies it prints the CPU time the
serving process spent per call (steadier than latencies on a shared
machine). Last, the whole 50 MB log in one call, with the server's peak
resident memory before and after. Prints one table; targets: ``jobs show``
p99 within 3x the floor's, and the whole log served with a peak RSS well
under the log's size.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.users import UserStore  # noqa: E402

HELLO = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = SIZE * b"x"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/xml; charset=utf-8")]})
    await send({"type": "http.response.body", "body": body})
"""


def fill_store(tmp: Path, jobs: int, log_mb: int) -> str:
    from sqlalchemy import insert

    from coordinator.store import Device, DeviceType, Group, Host, Job, Store, SubJob

    db_url = f"sqlite:///{tmp / 'bench.sqlite'}"
    store = Store(db_url)
    now = time.time()
    with store.session() as s:
        s.execute(
            insert(Host), [{"id": 1, "name": "lab1", "state": "online", "last_heartbeat": now}]
        )
        s.execute(insert(DeviceType), [{"id": 1, "name": "qemu"}])
        s.execute(insert(Device), [
            {"id": i, "name": f"vm{i}", "device_type_id": 1, "tags": [], "host_id": 1,
             "state": "idle", "health": "good"} for i in (1, 2)
        ])  # fmt: skip
        definition = "job_name: bench\nvisibility: public\n"
        s.execute(insert(Job), [
            {"id": j, "job_name": f"bench {j}", "submitter": "bench", "source": "bench.yaml",
             "definition": definition, "plan": {}, "state": "complete", "priority": 50,
             "submit_time": now - jobs + j, "start_time": now - jobs + j, "end_time": now}
            for j in range(1, jobs + 1)
        ])  # fmt: skip
        s.execute(insert(Group), [
            {"id": j, "job_id": j, "name": f"{j}-bench", "state": "ended"}
            for j in range(1, jobs + 1)
        ])  # fmt: skip
        s.execute(insert(SubJob), [
            {"id": 2 * j - 1 + k, "job_id": j, "group_id": j, "role": ("server", "client")[k],
             "role_index": 0, "device_type": "qemu", "tags": [], "device": f"vm{k + 1}",
             "state": "complete", "is_slave": False, "essential": False,
             "assigned_at": now, "accepted_at": now, "ended_at": now}
            for j in range(1, jobs + 1) for k in (0, 1)
        ])  # fmt: skip
    store.close()
    node = tmp / "logs" / "1" / "vm1"
    node.mkdir(parents=True)
    line = "console output of a board at 115200 baud, a line like many others: " + "x" * 20
    per_file, written, seq = 5000, 0, 0
    while written < log_mb * 1_000_000:
        records = [
            {
                "time": "2026-12-03T10:00:00.000000+00:00",
                "level": "target",
                "message": f"{line} {i}",
            }
            for i in range(per_file)
        ]
        text = json.dumps(
            {"job": "1", "node": "vm1", "subjob": "1", "seq": seq, "records": records}
        )
        (node / f"1-{seq:08d}.json").write_text(text)
        written += len(text)
        seq += 1
    return db_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], env: dict[str, str], pattern: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(pattern, line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(match.group(1))
    raise SystemExit(f"{args[2:4]} did not start: {proc.wait()}")


@dataclass
class Case:
    """One kind of lavacli call: its XML-RPC bodies and its headers."""

    name: str
    bodies: Callable[[random.Random], bytes]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Load:
    """What ``requests`` calls measured: latencies (s), wall time, the server's CPU time."""

    latencies: list[float]
    wall: float
    cpu: float

    def p(self, q: float) -> float:
        return pct(self.latencies, q) * 1e3

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall

    @property
    def cpu_ms(self) -> float:
        return self.cpu / len(self.latencies) * 1e3


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, port: int, case: Case, clients: int, requests: int) -> Load:
    before = cpu_seconds(pid)
    latencies, wall = run_load(port, case.bodies, clients, requests, case.headers)
    return Load(latencies, wall, cpu_seconds(pid) - before)


def run_load(
    port: int,
    bodies: Callable[[random.Random], bytes],
    clients: int,
    requests: int,
    headers: dict[str, str] | None = None,
) -> tuple[list[float], float]:
    """``requests`` POSTs to /RPC2 from ``clients`` threads; latencies (s) and wall time."""
    sent = {"Content-Type": "text/xml", **(headers or {})}
    latencies: list[float] = []
    lock = threading.Lock()
    per = requests // clients

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        for _ in range(per):
            body = bodies(rng)
            t0 = time.perf_counter()
            conn.request("POST", "/RPC2", body, sent)
            resp = conn.getresponse()
            data = resp.read()
            mine.append(time.perf_counter() - t0)
            assert resp.status == 200 and b"<fault>" not in data, data[:300]
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--log-mb", type=int, default=50)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=1000, help="per case")
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lavamq-bench-server-"))
    print(f"filling {opts.jobs} jobs and a {opts.log_mb} MB log in {tmp} ...", flush=True)
    db_url = fill_store(tmp, opts.jobs, opts.log_mb)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server, port = start(
        [sys.executable, "-m", "lavamq", "server", "--listen", "127.0.0.1:0", "--db", db_url,
         "--broker", "memory://", "--log-dir", str(tmp / "logs"), "--no-access-log"],
        env, r"lavamq server ready on http://[\d.]+:(\d+)",
    )  # fmt: skip
    users = UserStore(db_url, run_migrations=False)
    users.add_user("bench")
    token = users.create_token("bench")
    users.close()
    # what lavacli sends with an identity that has a token
    basic = base64.b64encode(f"bench:{token}".encode()).decode()

    def show(r: random.Random) -> bytes:
        node = f"{r.randint(1, opts.jobs)}.{r.randint(0, 1)}"
        return xmlrpc.client.dumps((node,), "scheduler.jobs.show").encode()

    cases = [
        Case(f"jobs list ({opts.jobs} jobs)", lambda r: xmlrpc.client.dumps(
            (None, None, 0, 25), "scheduler.jobs.list", allow_none=True).encode()),
        Case("jobs show", show),
        Case("jobs show, with a token", show, {"Authorization": f"Basic {basic}"}),
        Case(f"jobs logs (1000 lines of {opts.log_mb} MB)", lambda r: xmlrpc.client.dumps(
            ("1.0", (n := r.randint(0, 400_000)), n + 1000), "scheduler.jobs.logs").encode()),
    ]  # fmt: skip
    rows: list[tuple[str, Load, Load]] = []
    try:
        for case in cases:
            # the answer's size, so the floor sends as many bytes
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            headers = {"Content-Type": "text/xml", **case.headers}
            conn.request("POST", "/RPC2", case.bodies(random.Random(0)), headers)
            size = len(conn.getresponse().read())
            conn.close()
            hello = tmp / f"hello{len(rows)}.py"
            hello.write_text(HELLO.replace("SIZE", str(size)))
            fport = free_port()
            floor, _ = start(
                [sys.executable, "-m", "uvicorn", f"{hello.stem}:app", "--port", str(fport),
                 "--no-access-log", "--app-dir", str(tmp)],
                env, r"Uvicorn running on http://[\d.]+:(\d+)",
            )  # fmt: skip
            try:
                f_load = measure(floor.pid, fport, case, opts.clients, opts.requests)
            finally:
                floor.terminate()
                floor.wait(10)
            s_load = measure(server.pid, port, case, opts.clients, opts.requests)
            rows.append((case.name, s_load, f_load))
        rss_before = peak_rss_mb(server.pid)
        t0 = time.perf_counter()
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2", allow_none=True)
        answer: Any = proxy.scheduler.jobs.logs("1.0", 0, None)
        data: xmlrpc.client.Binary = answer[1]
        whole = time.perf_counter() - t0
        rss_after = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    print()
    print(
        f"{opts.clients} clients, {opts.requests} requests per case; latency in ms, CPU in ms "
        f"of the serving process per call; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'request':<32} {'p50':>6} {'p99':>6} {'req/s':>6} {'cpu':>5} | {'floor p50':>9} "
        f"{'p99':>6} {'req/s':>6} {'cpu':>5} | {'p50 x':>6} {'p99 x':>6} {'req/s x':>7}"
    )
    for name, s, f in rows:
        print(
            f"{name:<32} {s.p(0.5):6.1f} {s.p(0.99):6.1f} {s.rate:6.0f} {s.cpu_ms:5.2f} | "
            f"{f.p(0.5):9.1f} {f.p(0.99):6.1f} {f.rate:6.0f} {f.cpu_ms:5.2f} | "
            f"{s.p(0.5) / f.p(0.5):6.2f} {s.p(0.99) / f.p(0.99):6.2f} {s.rate / f.rate:7.2f}"
        )  # fmt: skip
    _, s, f = next(r for r in rows if r[0] == "jobs show")
    ratio = s.p(0.99) / f.p(0.99)
    verdict = "met" if ratio <= 3 else "NOT met"
    print(f"\njobs show p99 / floor p99: {ratio:.2f} (target <= 3): {verdict}")
    log_mb = sum(p.stat().st_size for p in (tmp / "logs" / "1" / "vm1").iterdir()) / 1e6
    print(
        f"whole log in one call: {len(data.data) / 1e6:.1f} MB of LAVA YAML from {log_mb:.1f} MB "
        f"stored, {whole:.1f} s; server peak RSS {rss_before:.0f} MB before, {rss_after:.0f} MB "
        f"after (ratio of the growth to the log: {(rss_after - rss_before) / log_mb:.2f})"
    )
    print(f"(store and logs in {tmp})")


if __name__ == "__main__":
    main()
