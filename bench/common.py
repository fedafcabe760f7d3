"""What every benchmark shares: the broker it measures, a throw-away vhost, the
lavamq under test, and one shape of result row (a ratio against a floor or an
anchor measured in the same run).

Every bench prints its rows with ``print_rows``; ``bench/all.py`` gathers them
into one table. A bench never crashes on a missing piece: ``ensure_management``
enables RabbitMQ's management plugin (the benches make their vhosts with it)
or stops with one line saying how.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: the lavamq under test: this interpreter and this checkout, never PATH
LAVAMQ = [sys.executable, "-m", "lavamq"]

MGMT = os.environ.get("LAVAMQ_BENCH_MGMT", "http://127.0.0.1:15672")
AMQP = os.environ.get("LAVAMQ_BENCH_AMQP", "127.0.0.1:5672")
USER = os.environ.get("LAVAMQ_BENCH_USER", "guest")
PASSWORD = os.environ.get("LAVAMQ_BENCH_PASSWORD", "guest")


class MissingPiece(SystemExit):
    """A bench cannot run here; the message says what to do (one line, no traceback)."""


def mgmt(method: str, path: str, body: Any = None, *, base: str = MGMT) -> Any:
    """One management API call; decoded JSON or None."""
    req = urllib.request.Request(
        base + "/api" + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
    )
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _management_up(base: str) -> bool:
    try:
        mgmt("GET", "/overview", base=base)
        return True
    except (OSError, urllib.error.URLError):
        return False


def ensure_management(base: str = MGMT, timeout: float = 90.0) -> None:
    """Make sure the management API answers: enable the plugin if it is off, then wait."""
    if _management_up(base):
        return
    plugins = shutil.which("rabbitmq-plugins")
    if plugins is None:
        raise MissingPiece(
            f"bench: no RabbitMQ management API at {base} and no rabbitmq-plugins here: "
            "run `rabbitmq-plugins enable rabbitmq_management` on the broker's host"
        )
    print("bench: enabling rabbitmq_management (rabbitmq-plugins enable)", file=sys.stderr)
    done = subprocess.run(
        [plugins, "enable", "rabbitmq_management"], capture_output=True, text=True, timeout=120
    )
    deadline = time.monotonic() + timeout
    while not _management_up(base):
        if time.monotonic() > deadline:
            raise MissingPiece(
                f"bench: the management API at {base} did not come up "
                f"({done.stderr.strip()[-200:] or 'rabbitmq-plugins said nothing'}); "
                "run `rabbitmq-plugins enable rabbitmq_management` and try again"
            )
        time.sleep(1)


@contextlib.contextmanager
def bench_vhost(
    prefix: str = "lavamq-bench", *, base: str = MGMT, amqp: str = AMQP
) -> Iterator[str]:
    """A fresh vhost for ``USER``; yields its AMQP URL and deletes it afterwards."""
    ensure_management(base)
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(vhost, safe="")
    mgmt("PUT", f"/vhosts/{q}", {}, base=base)
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    mgmt("PUT", f"/permissions/{q}/{USER}", everything, base=base)
    try:
        yield f"amqp://{USER}:{PASSWORD}@{amqp}/{q}"
    finally:
        with contextlib.suppress(OSError):
            mgmt("DELETE", f"/vhosts/{q}", base=base)


CLUSTER_SCRIPT = ROOT / "scripts" / "rabbitmq-cluster.sh"


@dataclass(frozen=True)
class Cluster:
    """The 3-node cluster of ``scripts/rabbitmq-cluster.sh`` (``$LAVAMQ_CLUSTER_PORT``: which)."""

    port: int
    dir: Path

    @property
    def amqp(self) -> list[str]:
        return [f"127.0.0.1:{self.port + i}" for i in range(3)]

    @property
    def mgmt(self) -> str:
        return f"http://127.0.0.1:{self.port + 10000}"

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Use the cluster while no test kills its nodes (tests/cluster.py's lock, shared side)."""
        with (self.dir / "use.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def running_cluster() -> Cluster | None:
    """The cluster, if all three of its nodes run here."""
    try:
        run = functools.partial(
            subprocess.run, capture_output=True, text=True, timeout=60, check=False
        )
        status = run(["bash", str(CLUSTER_SCRIPT), "status"]).stdout
        info = dict(
            f.split("=", 1) for f in run(["bash", str(CLUSTER_SCRIPT), "info"]).stdout.split()
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if "running members: 3 of 3" not in status:
        return None
    return Cluster(int(info["port"]), Path(info["dir"]))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class Row:
    """One measured figure and its ratio to what it was measured against, in the same run.

    ``higher_is_better``: for rates (the ratio should be large); for times the
    ratio should be small. ``limit`` is the target on the ratio, ``None`` when
    the row is information only.
    """

    bench: str
    what: str
    value: float
    unit: str
    against: str
    reference: float
    limit: float | None = None
    higher_is_better: bool = False

    @property
    def ratio(self) -> float:
        return self.value / self.reference if self.reference else float("inf")

    @property
    def verdict(self) -> str:
        if self.limit is None:
            return "info"
        ok = self.ratio >= self.limit if self.higher_is_better else self.ratio <= self.limit
        return "met" if ok else "NOT met"

    @property
    def target(self) -> str:
        if self.limit is None:
            return "-"
        return f"{'≥' if self.higher_is_better else '≤'} {self.limit:g}x"


def print_rows(rows: list[Row], title: str = "") -> None:
    """The table every bench prints (Markdown, one row per figure)."""
    if title:
        print(f"\n{title}")
    print(f"load average {Path('/proc/loadavg').read_text().strip()}")
    print("| bench | figure | value | against (same run) | ratio | target | |")
    print("|---|---|---:|---|---:|---|---|")
    for r in rows:
        print(
            f"| {r.bench} | {r.what} | {r.value:.4g} {r.unit} | {r.against}: "
            f"{r.reference:.4g} {r.unit} | {r.ratio:.3g}x | {r.target} | {r.verdict} |"
        )


# --- boards writing at a serial line's speed (bench/web.py, bench/console.py) ---

#: bytes of one console line the boards print, newline included
LINE_BYTES = 100


def line_rate(baud: int) -> float:
    """Lines per second of ``LINE_BYTES`` on a serial line at ``baud`` (8N1: 10 bits a byte)."""
    return baud / 10 / LINE_BYTES


def stamped_line(at: float) -> str:
    """A console line (no newline) carrying the time ``at`` it was written: ``l <time> xx…``."""
    stamp = f"l {at:.6f} "
    return stamp + "x" * (LINE_BYTES - 1 - len(stamp))


def sent_at(message: str) -> float:
    """The time a :func:`stamped_line` carries."""
    return float(message.split(" ", 2)[1])


#: ``emit(board, due, now)``: board index, the due time of each line owed, the time now
Emit = Callable[[int, list[float], float], None]


def pace(boards: int, rate: float, start: float, end: float, tick: float, emit: Emit) -> list[int]:
    """Drive ``boards`` serial lines at ``rate`` lines/s each from ``start`` to ``end``.

    Every ``tick`` s each board is handed the lines owed since ``start`` (with
    the time each was due): a slow ``emit`` is caught up, never dropped, and the
    count each board really sent comes back, so a bench says the rate it reached.
    """
    sent = [0] * boards
    time.sleep(max(0.0, start - time.time()))
    while (now := time.time()) < end:
        owed = int(rate * (now - start))
        for k in range(boards):
            due = owed - sent[k]
            if due > 0:
                emit(k, [start + (sent[k] + i + 1) / rate for i in range(due)], now)
                sent[k] += due
        ticks = int((time.time() - start) / tick) + 1
        time.sleep(max(0.0, start + ticks * tick - time.time()))
    return sent


def batch_seconds() -> float:
    """How often a dispatcher's sub-job publisher sends a board's console (its default)."""
    import inspect

    from dispatcher.runner import SubJobRunner

    interval = inspect.signature(SubJobRunner.__init__).parameters["publisher_interval"]
    return float(interval.default)


def log_batch_boards(
    url: str,
    job: str,
    nodes: list[int],
    baud: int,
    start: float,
    end: float,
    out: Any,
    stamp: str = "publish",
) -> None:
    """(A process.) One thread per board of ``nodes``, each publishing its console as a
    dispatcher's sub-job publisher does from ``start`` to ``end``: every
    ``batch_seconds()`` a confirmed ``log-batch`` on ``lava.logs`` (key
    ``<job>.board<NN>``) of the lines ``baud`` brought since the last one, each
    line stamped with the batch's publish time (``stamp="publish"``) or the
    time it was due on the serial line (``"due"``: the batch's wait included).
    Puts how many lines they sent on ``out``."""
    import datetime as dt

    from broker_config import topology
    from broker_config.broker import Broker
    from schemas.messages.console import LogBatchSchema

    sent = [0] * len(nodes)

    def board(k: int) -> None:
        node = nodes[k]
        name = f"board{node:02d}"
        seq = [0]
        with Broker(url) as broker:

            def publish(_board: int, due: list[float], now: float) -> None:
                when = dt.datetime.now(dt.UTC).isoformat()
                records = [
                    {"time": when, "level": "target", "message": stamped_line(now)}
                ] * len(due) if stamp == "publish" else [
                    {"time": when, "level": "target", "message": stamped_line(t)} for t in due
                ]  # fmt: skip
                body = {"job": job, "subjob": str(node + 1), "node": name, "seq": seq[0],
                        "records": records, "final": False}  # fmt: skip
                broker.publish(topology.LOGS_EXCHANGE_NAME, f"{job}.{name}", LogBatchSchema(), body)
                seq[0] += 1

            sent[k] = pace(1, line_rate(baud), start, end, batch_seconds(), publish)[0]

    threads = [threading.Thread(target=board, args=(k,)) for k in range(len(nodes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(sum(sent))


def follow_broker(url: str, key: str, ready: Any, stop: Any, seen: Any, out: Any) -> None:
    """(A process.) A plain kombu consumer of ``lava.logs`` messages bound by ``key``:
    the broker's own publish → consume, the floor under every console path. Puts
    the latency of every line (now - the time its stamp carries) on ``out``."""
    from kombu import Connection, Exchange, Queue

    latencies: list[float] = []
    queue = Queue(f"bench.floor.{uuid.uuid4().hex[:8]}", Exchange("lava.logs", "topic"),
                  routing_key=key, exclusive=True, auto_delete=True)  # fmt: skip

    def on_message(body: Any, message: Any) -> None:
        now = time.time()
        records = json.loads(message.body)["records"]
        latencies.extend(now - sent_at(rec["message"]) for rec in records)
        message.ack()
        with seen.get_lock():
            seen.value += len(records)

    with Connection(url) as conn, conn.Consumer([queue], callbacks=[on_message], accept=None):
        ready.set()
        while not stop.is_set():
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                continue
    out.put(latencies)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
