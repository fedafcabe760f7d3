"""The dispatcher's console path under a lab's load, its bulk throughput, and deploy speed.

Run by hand on a host with RabbitMQ (management API on :15672; enabled and
waited for if it is not)::

    python bench/console.py [--boards 64] [--baud 115200] [--seconds 60] [--writers 4]
                            [--mbytes 64] [--image-mbytes 64]

1. A lab's load: ``--boards`` boards each printing 100-byte lines at
   ``--baud`` (115200: 115.2 lines/s, 8N1) for ``--seconds``. Each board is
   a pseudo-terminal written by a board process (``--writers`` of them, one
   thread each driving its share of boards every 10 ms with the lines owed
   since the start: ``common.pace``, bench/web.py's driver); each line
   carries the time it was written. One dispatcher process
   (``console.py --dispatcher``) reads every pty as a serial port through the
   dispatcher's own path: ``Console`` (its reader thread and signal reader),
   the MultiNode ``Bridge``, ``JobLog`` (attached as ``SubJobRunner`` does, with
   its partial-line flusher) and one ``SubJobPublisher`` per board (a
   confirmed ``log-batch`` every 0.1 s) into ``lava.logs`` on the real
   broker. The real ``lavamq logs JOB --follow --until-final --json`` follows
   the job in its own process, piped into a meter process
   (``--measure-lines``) that timestamps every read: latency = that time -
   the time the board wrote the line. The floor, in the same run just before:
   the broker's bare publish -> consume at the same message rate - the same
   boards' lines published by plain kombu threads as the dispatcher's
   publisher would (a confirmed ``log-batch`` per board every 0.1 s of the
   lines due meanwhile, each stamped with the time it was due, so the
   batch's wait is in the floor too; ``common.log_batch_boards``), read by a
   plain kombu consumer in its own process. Targets: p99 <= 2x the floor's
   p99; the dispatcher process's CPU <= 10% of one core. The follower's CPU
   share is printed too.
2. Bulk: one ``local`` board prints ``--mbytes`` MB as fast as it can (through
   the same path in this process), followed by the real CLI as above;
   MB/s end to end against the board's console read rate (information).
3. Deploy: decompression throughput of ``dispatcher.download.fetch_image``
   against ``gzip -dc``/``xz -dc`` (writing to a file, same input).

Each run uses its own throw-away vhost.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import json
import multiprocessing
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

from common import (  # noqa: E402
    LAVAMQ,
    MGMT,
    Row,
    bench_vhost,
    cpu_seconds,
    follow_broker,
    line_rate,
    log_batch_boards,
    pace,
    print_rows,
    stamped_line,
)
from kombu import Queue  # noqa: E402

from broker_config import topology  # noqa: E402
from broker_config.broker import Broker  # noqa: E402
from broker_config.consumer import Delivery, QueueConsumer, run_in_thread  # noqa: E402
from device_agent.bridge import Bridge  # noqa: E402
from device_agent.console import Console  # noqa: E402
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


def wait_bound(mgmt_base: str, vhost: str, deadline: float, job: str = JOB) -> None:
    """Until a queue is bound to ``<job>.#`` on lava.logs (the follower is ready)."""
    path = (
        f"/exchanges/{urllib.parse.quote(vhost, safe='')}/"
        f"{urllib.parse.quote(topology.LOGS_EXCHANGE_NAME, safe='')}/bindings/source"
    )
    while time.monotonic() < deadline:
        try:
            if any(b["routing_key"] == f"{job}.#" for b in mgmt(mgmt_base, "GET", path)):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: exchange not declared yet
                raise
        time.sleep(0.05)
    raise RuntimeError(f"bench: no follow queue bound to {job}.# in vhost {vhost} in time")


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


# --- a lab's load: many boards at a serial line's speed -------------------------

BOARDS_JOB = "bench2"
FLOOR_JOB = "benchfloor"
#: how often a board process writes each of its ptys the lines owed (a serial
#: line delivers continuously: 10 ms is about one line at 115200 baud)
PTY_TICK = 0.01
#: a stamped line as ``lavamq logs --json`` prints it: the time it was written
STAMP_JSON = re.compile(rb'"message": "l (\d+\.\d+) ')


def pty_boards(names: Any, go: Any, release: Any, count: int, baud: int, out: Any) -> None:
    """(A process.) ``count`` pseudo-terminals played as boards' serial lines.

    Puts their slave paths on ``names``, takes ``(start, end)`` from ``go``,
    writes each line owed into each pty from ``start`` to ``end``
    (``common.pace``) and puts how many lines each wrote on ``out``; keeps the
    ptys open until ``release`` is set (closing one hangs its reader up).
    """
    import tty

    ptys = []
    for _ in range(count):
        master, slave = os.openpty()
        tty.setraw(slave)
        ptys.append((master, slave))
    names.put([os.ttyname(slave) for _, slave in ptys])
    start, end = go.get()

    def write(k: int, due: list[float], _now: float) -> None:
        data = "".join(stamped_line(t) + "\n" for t in due).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(ptys[k][0], view) :]

    out.put(pace(count, line_rate(baud), start, end, PTY_TICK, write))
    release.wait()
    for master, slave in ptys:
        os.close(master)
        os.close(slave)


def dispatcher_main(config_path: str) -> int:
    """``--dispatcher CONFIG``: the dispatcher's console path for every board of CONFIG.

    Prints ``ready`` once every console is open, streams until a line on
    stdin, then closes every board as a finished sub-job does (the publisher's
    last batch is ``final``) and prints the records published as JSON.
    """
    from dispatcher.runner import SubJobRunner

    config = json.loads(Path(config_path).read_text())
    workdir = Path(config["workdir"])
    boards = []
    for i, (node, path) in enumerate(config["boards"]):
        console = Console(path, node)
        joblog = JobLog(workdir / node / "job.log")
        publisher = SubJobPublisher(
            config["url"], job=config["job"], subjob=str(i + 1), node=node
        ).start()
        joblog.add_json_listener(publisher.log_json)
        SubJobRunner._attach_console(console, joblog)
        bridge = Bridge(console, _Silent(), log=joblog).start()
        boards.append((console, joblog, publisher, bridge))
    print("ready", flush=True)
    sys.stdin.readline()
    published = 0
    for console, joblog, publisher, bridge in boards:
        bridge.close()
        console.close()
        joblog.close()
        publisher.close()
        published += publisher.published_records
    print(json.dumps({"published": published}), flush=True)
    return 0


def measure_lines_stdin() -> int:
    """``--measure-lines``: read ``lavamq logs --json`` output, the latency of every
    stamped line (read time - the time it carries); prints a JSON summary."""
    latencies: list[float] = []
    fd = sys.stdin.fileno()
    rest = b""
    while data := os.read(fd, 1 << 20):
        now = time.time()
        data = rest + data
        end = data.rfind(b"\n") + 1
        rest = data[end:]
        latencies.extend(now - float(t) for t in STAMP_JSON.findall(data, 0, end))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary = {"lines": len(latencies), "p50": pct(latencies, 50), "p99": pct(latencies, 99)}
    print(json.dumps({**summary, "cpu": usage.ru_utime + usage.ru_stime}))
    return 0


def floor_run(url: str, boards: int, baud: int, seconds: float, writers: int) -> dict[str, float]:
    """The broker's bare publish -> consume of the same lines at the same message rate."""
    mp = multiprocessing.get_context("spawn")
    stop, ready, seen, out = mp.Event(), mp.Event(), mp.Value("q", 0), mp.Queue()
    reader = mp.Process(
        target=follow_broker, args=(url, f"{FLOOR_JOB}.#", ready, stop, seen, out), daemon=True
    )
    reader.start()
    if not ready.wait(60):
        raise SystemExit("bench: the floor's consumer did not start")
    start = time.time() + 5.0  # every writer process imported and connected by then
    counts = mp.Queue()
    procs = [
        mp.Process(
            target=log_batch_boards,
            args=(url, FLOOR_JOB, list(range(boards))[k::writers], baud, start,
                  start + seconds, counts, "due"),
        )
        for k in range(writers)
    ]  # fmt: skip
    for proc in procs:
        proc.start()
    sent = sum(counts.get(timeout=seconds + 120) for _ in procs)
    for proc in procs:
        proc.join(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and seen.value < sent:
        time.sleep(0.1)
    stop.set()
    latencies = out.get(timeout=60)
    reader.join(10)
    if len(latencies) != sent:
        raise RuntimeError(f"bench floor: {len(latencies)} of {sent} lines consumed")
    return {"lines": sent, "p50": pct(latencies, 50), "p99": pct(latencies, 99)}


def boards_run(
    url: str, vhost: str, boards: int, baud: int, seconds: float, writers: int, workdir: Path
) -> dict[str, float]:
    """``boards`` ptys at ``baud`` through one dispatcher process to ``lavamq logs --follow``.

    Returns the lines written and received, p50/p99 latency and the CPU share
    (of one core) of the dispatcher, the follower and the meter while streaming.
    """
    mp = multiprocessing.get_context("spawn")
    names, counts, release = mp.Queue(), mp.Queue(), mp.Event()
    shares = [list(range(boards))[k::writers] for k in range(writers)]
    gos = [mp.Queue() for _ in shares]
    procs = [
        mp.Process(target=pty_boards, args=(names, go, release, len(share), baud, counts))
        for share, go in zip(shares, gos, strict=True)
    ]
    for proc in procs:
        proc.start()
    paths = [names.get(timeout=60) for _ in procs]  # in the order the processes answer
    ptys = [path for share in paths for path in share]
    nodes = [f"board{k:02d}" for k in range(boards)]
    config = workdir / "dispatcher.json"
    config.write_text(json.dumps({"url": url, "job": BOARDS_JOB, "workdir": str(workdir),
                                  "boards": list(zip(nodes, ptys, strict=True))}))  # fmt: skip
    dispatcher = subprocess.Popen(
        [sys.executable, __file__, "--dispatcher", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert dispatcher.stdin is not None and dispatcher.stdout is not None
    cli = meter = None
    try:
        if dispatcher.stdout.readline().strip() != "ready":
            raise RuntimeError("bench: the dispatcher process did not start")
        cli = subprocess.Popen(
            [*LAVAMQ, "logs", BOARDS_JOB, "--follow", "--until-final", "--json",
             "--broker", url, "--dir", str(workdir / "no-store")],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert cli.stdout is not None
        meter = subprocess.Popen(
            [sys.executable, __file__, "--measure-lines"], stdin=cli.stdout, stdout=subprocess.PIPE
        )
        cli.stdout.close()  # the meter holds the read end
        wait_bound(MGMT, vhost, time.monotonic() + 30, BOARDS_JOB)
        start = time.time() + 2.0
        for go in gos:
            go.put((start, start + seconds))
        time.sleep(max(0.0, start - time.time()))
        pids = (dispatcher.pid, cli.pid)
        before = [cpu_seconds(pid) for pid in pids]
        sent = sum(sum(counts.get(timeout=seconds + 120)) for _ in procs)
        time.sleep(1.0)  # the last lines' way through (0.1 s batches)
        took = time.time() - start
        used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
        dispatcher.stdin.write("stop\n")
        dispatcher.stdin.flush()
        published = json.loads(dispatcher.stdout.readline())["published"]
        out, _ = meter.communicate(timeout=120)
        cli.wait(30)
        if dispatcher.wait(30) or cli.returncode or meter.returncode:
            raise RuntimeError(
                f"bench: dispatcher exited {dispatcher.returncode}, lavamq logs "
                f"{cli.returncode}, meter {meter.returncode}"
            )
    finally:
        release.set()
        for child in (dispatcher, cli, meter):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
        for writer in procs:
            writer.join(10)
    summary = json.loads(out)
    return {
        "sent": sent,
        "published": published,
        "lines": summary["lines"],
        "p50": summary["p50"],
        "p99": summary["p99"],
        "dispatcher_cpu": used[0] / took,
        "follower_cpu": used[1] / took,
        "meter_cpu": summary["cpu"] / took,
    }


def board_rows(
    url: str, vhost: str, boards: int, baud: int, seconds: float, writers: int
) -> list[Row]:
    """The lab-load rows: tail latency against the floor, and the CPU shares."""
    floor = floor_run(url, boards, baud, seconds, writers)
    with tempfile.TemporaryDirectory() as tmp:
        got = boards_run(url, vhost, boards, baud, seconds, writers, Path(tmp))
    rate = line_rate(baud)
    print(
        f"console: {boards} boards at {baud} baud ({rate:.1f} lines/s each), {seconds:g} s: "
        f"{got['sent'] / boards / seconds:.1f} lines/s per board written, "
        f"{got['published']:.0f} of {got['sent']:.0f} lines published by the dispatcher, "
        f"{got['lines']:.0f} followed; floor {floor['lines']:.0f} lines; "
        f"p50 {got['p50'] * 1e3:.1f} ms (floor {floor['p50'] * 1e3:.1f}), "
        f"p99 {got['p99'] * 1e3:.1f} ms (floor {floor['p99'] * 1e3:.1f}); CPU share of one "
        f"core: dispatcher {got['dispatcher_cpu']:.1%}, lavamq logs {got['follower_cpu']:.1%}, "
        f"meter {got['meter_cpu']:.1%}",
        file=sys.stderr,
        flush=True,
    )
    if got["lines"] < got["sent"]:
        raise RuntimeError(f"bench: {got['lines']:.0f} of {got['sent']:.0f} console lines followed")
    what = f"{boards} boards at {baud} baud, line → `lavamq logs --follow`"
    floor_what = "bare kombu publish → consume, same message rate"
    return [
        Row("console", f"{what} p99", got["p99"] * 1e3, "ms", floor_what, floor["p99"] * 1e3, 2.0),
        Row("console", f"{what} p50", got["p50"] * 1e3, "ms", floor_what, floor["p50"] * 1e3),
        Row("console", f"dispatcher CPU, {boards} boards", got["dispatcher_cpu"] * 100, "%",
            "one core", 100.0, 0.10),
        Row("console", f"`lavamq logs --follow` CPU, {boards} boards",
            got["follower_cpu"] * 100, "%", "one core", 100.0),
    ]  # fmt: skip


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


def run(
    mbytes: int,
    image_mbytes: int,
    *,
    boards: int = 64,
    baud: int = 115_200,
    seconds: float = 60.0,
    writers: int = 4,
) -> list[Row]:
    """Every row of this bench, each a ratio measured in this run (for bench/all.py)."""
    rows: list[Row] = []
    with bench_vhost() as url:
        vhost = urllib.parse.unquote(url.rsplit("/", 1)[1])
        with Broker(url) as broker:
            broker.declare(*topology.static_exchanges())
        if boards:
            rows += board_rows(url, vhost, boards, baud, seconds, writers)
        if mbytes:
            with tempfile.TemporaryDirectory() as tmp:
                c, cpu = bench_console_process(url, mbytes, Path(tmp), MGMT, vhost)
            print("bulk CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()),
                  file=sys.stderr)  # fmt: skip
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
    if image_mbytes:
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
    parser.add_argument("--boards", type=int, default=64, help="0: no lab-load rows")
    parser.add_argument("--baud", type=int, default=115_200)
    parser.add_argument("--seconds", type=float, default=60.0, help="of the lab load")
    parser.add_argument("--writers", type=int, default=4, help="board processes")
    parser.add_argument("--mbytes", type=int, default=64, help="bulk run; 0: none")
    parser.add_argument("--image-mbytes", type=int, default=64, help="deploy rows; 0: none")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="the bulk run with the follow reader inside the bench process (information)",
    )
    parser.add_argument("--measure-stdin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure-lines", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dispatcher", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_stdin:
        return measure_stdin()
    if args.measure_lines:
        return measure_lines_stdin()
    if args.dispatcher:
        return dispatcher_main(args.dispatcher)
    rows = run(
        args.mbytes,
        args.image_mbytes,
        boards=args.boards,
        baud=args.baud,
        seconds=args.seconds,
        writers=args.writers,
    )
    if args.in_process and args.mbytes:
        with bench_vhost() as url, tempfile.TemporaryDirectory() as tmp:
            c = bench_console_inprocess(url, args.mbytes, Path(tmp))
        print("| console path | MB | lines | console MB/s | published MB/s | end-to-end MB/s"
              " | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
        print_row("local board → bridge → job log → lava.logs → follow reader in this process", c)
    print_rows(rows, "bench/console.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
