"""Console and deploy throughput of the dispatcher.

Run by hand on a host with RabbitMQ (management API on :15672)::

    python bench/console.py [--broker-mgmt http://127.0.0.1:15672] [--mbytes 64]

1. Console: a ``local`` board prints ``--mbytes`` MB; every byte goes through
   the console reader, the bridge, the job log and the batch publisher into
   ``lava.logs`` on the real broker, and out to a follow reader (a temporary
   queue bound to ``<job>.#``, as ``lavamq logs --follow``). Reports MB/s
   and record latency (record time → reader) p50/p99. Two follow readers:

   - ``process`` (the default row): the real ``lavamq logs JOB --follow
     --until-final --json`` CLI as a subprocess, its stdout piped into a
     second bench process (``--measure-stdin``) that timestamps every read
     and counts the lines (see :class:`StreamStats`); the dispatcher-side
     process does no reading at all, as on a dispatcher host where the
     follower runs elsewhere. The CPU seconds of every party are printed.
   - ``in-process``: a ``QueueConsumer`` thread inside the bench process, so
     it competes for the GIL with the dispatcher-side path being measured.
2. Deploy: decompression throughput of ``dispatcher.download.fetch_image``
   against ``gzip -dc``/``xz -dc`` (writing to a file, same input).

Each run uses its own throw-away vhost.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from common import LAVAMQ, Row, ensure_management  # noqa: E402
from kombu import Queue  # noqa: E402

from broker_config import topology  # noqa: E402
from broker_config.consumer import Delivery, QueueConsumer, run_in_thread  # noqa: E402
from device_agent.bridge import Bridge  # noqa: E402
from device_agent.devices import create_device  # noqa: E402
from dispatcher.download import fetch_image  # noqa: E402
from dispatcher.joblog import JobLog  # noqa: E402
from dispatcher.publisher import SubJobPublisher  # noqa: E402
from schemas.messages.console import LogBatchSchema  # noqa: E402


def mgmt(base: str, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(
        base + "/api" + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
    )
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    data = urllib.request.urlopen(req, timeout=10).read()
    return json.loads(data) if data else None


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


class _Silent:
    self_name = "bench-board"


JOB, NODE = "bench1", "bench-board"
LINE = "x" * 99  # + newline: 100 bytes per console line


def run_board(url: str, mbytes: int, workdir: Path) -> tuple[float, float, float]:
    """The dispatcher-side path; returns (first byte sent, console done, all published)."""
    device = create_device(
        {"name": NODE, "device_type": "local", "settings": {"network": "none"}}, workdir / NODE
    )
    joblog = JobLog(workdir / "job.log")
    publisher = SubJobPublisher(url, job=JOB, subjob="1", node=NODE).start()
    joblog.add_json_listener(publisher.log_json)
    console = device.boot(60.0)
    bridge = Bridge(console, _Silent(), log=joblog).start()
    console.add_listener(joblog.target_bytes)
    total = mbytes * 1_000_000
    start = time.time()
    # print total bytes of 100-byte lines, then a marker
    # the marker is computed by the shell so that the command's echo cannot match it
    console.sendline(f"yes {LINE} | head -c {total}; echo BENCH-$((40 + 2))-DONE")
    console.expect("BENCH-42-DONE", 600)
    console_done = time.time()
    console.remove_listener(joblog.target_bytes)
    bridge.close()
    device.shutdown()
    joblog.close()
    publisher.close()
    return start, console_done, time.time()


class FollowStats:
    """Counts and timestamps the target records a follow reader receives."""

    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0  # records that are exactly one of the bench's lines
        self.latencies: list[float] = []
        self.last = 0.0
        self._parsed: dict[str, float] = {}

    def record(self, rec: dict[str, Any], now: float) -> None:
        if rec.get("level") != "target":
            return
        message = rec["message"]
        self.bytes += len(message) + 1
        if message == LINE:
            self.lines += 1
            self.last = now
        # a console chunk's lines share one record time: parse each once
        stamp = rec["time"]
        sent = self._parsed.get(stamp)
        if sent is None:
            sent = self._parsed[stamp] = dt.datetime.fromisoformat(stamp).timestamp()
        self.latencies.append(now - sent)

    def summary(self) -> dict[str, float]:
        return {
            "bytes": float(self.bytes),
            "lines": float(self.lines),
            "last": self.last,
            "p50": pct(self.latencies, 50),
            "p99": pct(self.latencies, 99),
            "records": float(len(self.latencies)),
        }


class StreamStats:
    """The same counts as :class:`FollowStats`, taken from ``lavamq logs --json``
    output a read at a time instead of by decoding every line (which cost the
    meter more than the CLI it measures): bench lines are counted with
    ``bytes.count`` of their exact JSON ending, and every target line's record
    time is found with one regex pass; a read's lines that share a record time
    share its latency, so every target record still gets its own latency.
    Lines that are not bench lines (the command's echo, the prompt) are decoded.
    """

    #: the exact end of a bench line as ``lavamq logs --json`` prints it
    BENCH_END = f'"level": "target", "message": "{LINE}"}}\n'.encode()
    TARGET_TIME = re.compile(rb'"time": "([^"]*)", "level": "target"')

    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0
        self.targets = 0
        self.latencies: list[float] = []
        self.last = 0.0
        self._parsed: dict[bytes, float] = {}

    def block(self, block: bytes, now: float) -> None:
        """Complete lines (``block`` ends with a newline) read at ``now``."""
        bench = block.count(self.BENCH_END)
        if bench:
            self.lines += bench
            self.bytes += bench * (len(LINE) + 1)
            self.last = now
        if bench != block.count(b"\n"):
            for line in block.split(b"\n"):
                if line and not (line + b"\n").endswith(self.BENCH_END):
                    rec = json.loads(line)
                    if rec.get("level") == "target":
                        self.bytes += len(rec["message"]) + 1
        for stamp, count in collections.Counter(self.TARGET_TIME.findall(block)).items():
            sent = self._parsed.get(stamp)
            if sent is None:
                sent = self._parsed[stamp] = dt.datetime.fromisoformat(stamp.decode()).timestamp()
            self.latencies.extend([now - sent] * count)
            self.targets += count

    def summary(self) -> dict[str, float]:
        if self.targets < self.lines:
            raise RuntimeError(
                f"bench meter: {self.lines} bench lines but only {self.targets} target record times"
            )
        return {
            "bytes": float(self.bytes),
            "lines": float(self.lines),
            "last": self.last,
            "p50": pct(self.latencies, 50),
            "p99": pct(self.latencies, 99),
            "records": float(self.targets),
        }


def measure_stdin() -> int:
    """``--measure-stdin``: read ``lavamq logs --json`` lines, print a summary."""
    stats = StreamStats()
    fd = sys.stdin.fileno()
    rest = b""
    while True:
        data = os.read(fd, 1 << 20)
        now = time.time()
        if not data:
            break
        end = data.rfind(b"\n") + 1
        if not end:
            rest += data
            continue
        stats.block(rest + data[:end], now)
        rest = data[end:]
    if rest:
        raise RuntimeError(f"bench meter: output ends in an incomplete line {rest[:80]!r}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**stats.summary(), "cpu": usage.ru_utime + usage.ru_stime}))
    return 0


def result(mbytes: int, times: tuple[float, float, float], s: dict[str, float]) -> dict[str, float]:
    start, console_done, published = times
    total = mbytes * 1_000_000
    expected = total // (len(LINE) + 1)
    if s["lines"] != expected:
        raise RuntimeError(
            f"bench follow reader: received {s['lines']:.0f} of {expected} console lines"
        )
    return {
        "mbytes": s["bytes"] / 1e6,
        "lines": s["lines"],
        "console_mb_s": total / 1e6 / (console_done - start),
        # first byte written → publisher closed (every batch confirmed by the broker)
        "published_mb_s": total / 1e6 / (published - start),
        # first byte written → last bench line received by the reader
        "end_to_end_mb_s": total / 1e6 / (s["last"] - start),
        "p50_ms": s["p50"] * 1000,
        "p99_ms": s["p99"] * 1000,
        "records": s["records"],
    }


def bench_console_inprocess(url: str, mbytes: int, workdir: Path) -> dict[str, float]:
    stats = FollowStats()
    done = threading.Event()

    def on_batch(d: Delivery) -> None:
        # runs in this process, so it competes with the path being measured
        now = time.time()
        for rec in d.body["records"]:
            stats.record(rec, now)
        if d.body["final"]:
            done.set()

    follow = QueueConsumer(
        url,
        [
            Queue(
                f"lava.logs.follow.{uuid.uuid4().hex[:8]}",
                exchange=topology.logs_exchange(),
                routing_key=f"{JOB}.#",
                durable=False,
                exclusive=True,
                auto_delete=True,
            )
        ],
        LogBatchSchema(),
        handler=on_batch,
        prefetch=200,
        poll_interval=0.05,
    )
    thread = run_in_thread(follow, "bench-follow")  # returns once consuming
    times = run_board(url, mbytes, workdir)
    if not done.wait(120):
        raise RuntimeError("bench: in-process follow reader got no final batch within 120 s")
    follow.stop()
    thread.join(10)
    return result(mbytes, times, stats.summary())


def wait_bound(mgmt_base: str, vhost: str, deadline: float) -> None:
    """Until a queue is bound to ``<JOB>.#`` on lava.logs (the follower is ready)."""
    path = (
        f"/exchanges/{urllib.parse.quote(vhost, safe='')}/"
        f"{urllib.parse.quote(topology.LOGS_EXCHANGE_NAME, safe='')}/bindings/source"
    )
    while time.monotonic() < deadline:
        try:
            if any(b["routing_key"] == f"{JOB}.#" for b in mgmt(mgmt_base, "GET", path)):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: exchange not declared yet
                raise
        time.sleep(0.05)
    raise RuntimeError(f"bench: no follow queue bound to {JOB}.# in vhost {vhost} in time")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def broker_cpu() -> float:
    """CPU seconds used so far by the local RabbitMQ node (beam.smp), 0 if not found."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        if raw[raw.index("(") + 1 : raw.rfind(")")].startswith("beam"):
            fields = raw[raw.rfind(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def reap(proc: subprocess.Popen[bytes], timeout: float) -> tuple[float, float]:
    """Wait for ``proc`` (setting its return code); returns its CPU seconds and
    its largest resident size in MB."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        time.sleep(0.01)
    raise RuntimeError(f"bench: {proc.args!r} still running after {timeout} s")


def bench_console_process(
    url: str, mbytes: int, workdir: Path, mgmt_base: str, vhost: str
) -> tuple[dict[str, float], dict[str, float]]:
    """The own-process row; also returns the CPU seconds each party used."""
    cli = subprocess.Popen(
        [
            *LAVAMQ,
            "logs",
            JOB,
            "--follow",
            "--until-final",
            "--json",
            "--broker",
            url,
            "--dir",
            str(workdir / "no-store"),
        ],
        stdout=subprocess.PIPE,
    )
    assert cli.stdout is not None
    meter = subprocess.Popen(
        [sys.executable, __file__, "--measure-stdin"], stdin=cli.stdout, stdout=subprocess.PIPE
    )
    cli.stdout.close()  # the meter holds the read end
    try:
        wait_bound(mgmt_base, vhost, time.monotonic() + 30)
        own, board, broker = own_cpu(), children_cpu(), broker_cpu()
        times = run_board(url, mbytes, workdir)
        dispatcher_cpu = own_cpu() - own
        # the board's shell, yes, head and pty relay (reaped by power off)
        board_cpu = children_cpu() - board
        out, _ = meter.communicate(timeout=120)
        broker = broker_cpu() - broker
        cli_cpu, cli_rss = reap(cli, 10)
        if cli.returncode != 0 or meter.returncode != 0:
            raise RuntimeError(
                f"bench: lavamq logs exited {cli.returncode}, meter {meter.returncode}"
            )
    finally:
        for proc in (cli, meter):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    summary = json.loads(out)
    cpu = {
        "dispatcher side": dispatcher_cpu,
        "board processes": board_cpu,
        "lavamq logs": cli_cpu,
        "meter": summary["cpu"],
        "RabbitMQ": broker,
    }
    print(f"lavamq logs: largest resident size {cli_rss:.0f} MB", file=sys.stderr)
    return result(mbytes, times, summary), cpu


def make_payload(path: Path, mbytes: int) -> None:
    # half text-like, half random: compresses about 2:1 like a root filesystem
    rnd = os.urandom(1 << 20)
    text = b"lavamq root filesystem block %d\n"
    with path.open("wb") as fh:
        for i in range(mbytes):
            fh.write(rnd[: 1 << 19])
            fh.write((text % i) * ((1 << 19) // len(text % i) + 1))


def timed(cmd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    return time.perf_counter() - start


def bench_decompress(workdir: Path, mbytes: int) -> list[tuple[str, float, float, float]]:
    raw = workdir / "payload.img"
    make_payload(raw, mbytes)
    subprocess.run(f"gzip -k -6 -f {raw}", shell=True, check=True)
    subprocess.run(f"xz -k -1 -T1 -f {raw}", shell=True, check=True)
    rows = []
    for comp, tool in (("gz", "gzip -dc"), ("xz", "xz -dc -T1")):
        src = Path(f"{raw}.{comp}")
        cli = min(timed(f"{tool} {src} > {workdir / 'out.cli'}") for _ in range(3))
        ours = []
        for _ in range(3):
            start = time.perf_counter()
            fetch_image(src.as_uri(), workdir / "out.py", compression=comp)
            ours.append(time.perf_counter() - start)
        size = raw.stat().st_size / 1e6
        rows.append((comp, size / cli, size / min(ours), min(ours) / cli))
    return rows


def print_row(label: str, c: dict[str, float]) -> None:
    print(
        f"| {label} | {c['mbytes']:.0f} | {c['lines']:.0f} | {c['console_mb_s']:.1f} | "
        f"{c['published_mb_s']:.1f} | "
        f"{c['end_to_end_mb_s']:.1f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} |"
    )


def run(mbytes: int, image_mbytes: int, mgmt_base: str = "http://127.0.0.1:15672") -> list[Row]:
    """The own-process console row and the deploy rows, as ratios (for bench/all.py)."""
    ensure_management(mgmt_base)
    rows: list[Row] = []
    vhost = f"lavamq-bench-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(vhost, safe="")
    mgmt(mgmt_base, "PUT", f"/vhosts/{q}", {})
    perms = {"configure": ".*", "write": ".*", "read": ".*"}
    mgmt(mgmt_base, "PUT", f"/permissions/{q}/guest", perms)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            c, _cpu = bench_console_process(
                f"amqp://guest:guest@127.0.0.1:5672/{q}", mbytes, Path(tmp), mgmt_base, vhost
            )
        rows.append(
            Row(
                "console",
                f"bulk {mbytes} MB board → `lavamq logs --follow`",
                c["end_to_end_mb_s"],
                "MB/s",
                "the board's console read rate",
                c["console_mb_s"],
                higher_is_better=True,
            )
        )
    finally:
        mgmt(mgmt_base, "DELETE", f"/vhosts/{q}")
    with tempfile.TemporaryDirectory() as tmp:
        for comp, cli, ours, _ in bench_decompress(Path(tmp), image_mbytes):
            tool = "gzip -dc" if comp == "gz" else "xz -dc"
            rows.append(
                Row(
                    "deploy",
                    f"fetch_image {comp} decompress",
                    ours,
                    "MB/s",
                    tool,
                    cli,
                    # the time target: at most 1.2x the CLI's
                    round(1 / 1.2, 2),
                    higher_is_better=True,
                )
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker-mgmt", default="http://127.0.0.1:15672")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mbytes", type=int, default=64)
    parser.add_argument("--image-mbytes", type=int, default=64)
    parser.add_argument(
        "--reader",
        choices=("both", "process", "in-process"),
        default="both",
        help="which follow reader rows to measure",
    )
    parser.add_argument("--skip-deploy", action="store_true", help="console rows only")
    parser.add_argument("--measure-stdin", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_stdin:
        return measure_stdin()
    ensure_management(args.broker_mgmt)
    with open("/proc/loadavg") as fh:
        print(f"loadavg before: {fh.read().strip()}")
    vhost = f"lavamq-bench-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(vhost, safe="")
    mgmt(args.broker_mgmt, "PUT", f"/vhosts/{q}", {})
    perms = {"configure": ".*", "write": ".*", "read": ".*"}
    mgmt(args.broker_mgmt, "PUT", f"/permissions/{q}/guest", perms)
    url = f"amqp://guest:guest@{args.host}:5672/{q}"
    try:
        print(
            "| console path | MB | lines | console MB/s | published MB/s | end-to-end MB/s"
            " | p50 ms | p99 ms |"
        )
        print("|---|---|---|---|---|---|---|---|")
        path = "local board → bridge → job log → lava.logs"
        cpu: dict[str, float] = {}
        if args.reader in ("both", "process"):
            with tempfile.TemporaryDirectory() as tmp:
                c, _cpu = bench_console_process(
                    url, args.mbytes, Path(tmp), args.broker_mgmt, vhost
                )
            print_row(f"{path} → `lavamq logs --follow` (own process)", c)
        if args.reader in ("both", "in-process"):
            mgmt(args.broker_mgmt, "DELETE", f"/vhosts/{q}")  # fresh vhost per run
            mgmt(args.broker_mgmt, "PUT", f"/vhosts/{q}", {})
            mgmt(args.broker_mgmt, "PUT", f"/permissions/{q}/guest", perms)
            with tempfile.TemporaryDirectory() as tmp:
                c = bench_console_inprocess(url, args.mbytes, Path(tmp))
            print_row(f"{path} → follow reader in the bench process", c)
        with open("/proc/loadavg") as fh:
            print(f"loadavg after: {fh.read().strip()}")
        if cpu:
            # dispatcher side (this process) and board processes: first byte →
            # publisher closed; RabbitMQ: first byte → meter done; CLI and
            # meter: their whole life
            print("CPU s (own-process row): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        if args.skip_deploy:
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            rows = bench_decompress(Path(tmp), args.image_mbytes)
            print()
            print("| format | CLI MB/s | fetch_image MB/s | time ratio (ours / CLI) |")
            print("|---|---|---|---|")
            for comp, cli, ours, ratio in rows:
                print(f"| {comp} | {cli:.0f} | {ours:.0f} | {ratio:.2f} |")
    finally:
        mgmt(args.broker_mgmt, "DELETE", f"/vhosts/{q}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
