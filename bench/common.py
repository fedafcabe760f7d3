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
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
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
