"""Console and deploy throughput of the dispatcher.

Run by hand on a host with RabbitMQ (management API on :15672)::

    python bench/console.py [--broker-mgmt http://127.0.0.1:15672] [--mbytes 64]

1. Console: a ``local`` board prints ``--mbytes`` MB; every byte goes through
   the console reader, the bridge, the job log and the batch publisher into
   ``lava.logs`` on the real broker, and out to a follow reader (a temporary
   queue bound to ``<job>.#``, as ``lavamq logs --follow``). Reports MB/s
   and record latency (record time → reader) p50/p99.
2. Deploy: decompression throughput of ``dispatcher.download.fetch_image``
   against ``gzip -dc``/``xz -dc`` (writing to a file, same input).

Each run uses its own throw-away vhost.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kombu import Queue

from broker_config import topology
from broker_config.messaging import Delivery, QueueConsumer, run_in_thread
from device_agent.bridge import Bridge
from device_agent.devices import create_device
from dispatcher.download import fetch_image
from dispatcher.joblog import JobLog
from dispatcher.publisher import SubJobPublisher
from schemas.messages.console import LogBatchSchema


def mgmt(base: str, method: str, path: str, body: Any = None) -> None:
    req = urllib.request.Request(
        base + "/api" + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
    )
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    urllib.request.urlopen(req, timeout=10).read()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


class _Silent:
    self_name = "bench-board"


def bench_console(url: str, mbytes: int, workdir: Path) -> dict[str, float]:
    job, node = "bench1", "bench-board"
    got = {"bytes": 0, "final": False}
    latencies: list[float] = []
    done = threading.Event()

    parsed: dict[str, float] = {}

    def on_batch(d: Delivery) -> None:
        # runs in this process, so it competes with the path being measured:
        # parse each distinct record time once (a console chunk's lines share it)
        now = time.time()
        for rec in d.body["records"]:
            if rec["level"] == "target":
                got["bytes"] += len(rec["message"]) + 1
                stamp = rec["time"]
                sent = parsed.get(stamp)
                if sent is None:
                    sent = parsed[stamp] = dt.datetime.fromisoformat(stamp).timestamp()
                latencies.append(now - sent)
        if d.body["final"]:
            done.set()

    follow = QueueConsumer(
        url,
        [
            Queue(
                f"lava.logs.follow.{uuid.uuid4().hex[:8]}",
                exchange=topology.logs_exchange(),
                routing_key=f"{job}.#",
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
    run_in_thread(follow, "bench-follow")
    device = create_device(
        {"name": node, "device_type": "local", "settings": {"network": "none"}}, workdir / node
    )
    joblog = JobLog(workdir / "job.log")
    publisher = SubJobPublisher(url, job=job, subjob="1", node=node).start()
    joblog.add_json_listener(publisher.log_json)
    console = device.boot(60.0)
    bridge = Bridge(console, _Silent(), log=joblog).start()
    console.add_listener(joblog.target_bytes)
    total = mbytes * 1_000_000
    line = "x" * 99
    start = time.time()
    # print total bytes of 100-byte lines, then a marker
    # the marker is computed by the shell so that the command's echo cannot match it
    console.sendline(f"yes {line} | head -c {total}; echo BENCH-$((40 + 2))-DONE")
    console.expect("BENCH-42-DONE", 600)
    console_done = time.time()
    console.remove_listener(joblog.target_bytes)
    bridge.close()
    device.shutdown()
    joblog.close()
    publisher.close()
    done.wait(120)
    end = time.time()
    follow.stop()
    return {
        "mbytes": got["bytes"] / 1e6,
        "console_mb_s": total / 1e6 / (console_done - start),
        "end_to_end_mb_s": got["bytes"] / 1e6 / (end - start),
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "records": float(len(latencies)),
    }


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker-mgmt", default="http://127.0.0.1:15672")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mbytes", type=int, default=64)
    parser.add_argument("--image-mbytes", type=int, default=64)
    args = parser.parse_args()
    vhost = f"lavamq-bench-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(vhost, safe="")
    mgmt(args.broker_mgmt, "PUT", f"/vhosts/{q}", {})
    mgmt(
        args.broker_mgmt,
        "PUT",
        f"/permissions/{q}/guest",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    url = f"amqp://guest:guest@{args.host}:5672/{q}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            c = bench_console(url, args.mbytes, Path(tmp))
            print("| console path | MB | console MB/s | end-to-end MB/s | p50 ms | p99 ms |")
            print("|---|---|---|---|---|---|")
            print(
                f"| local board → bridge → job log → lava.logs → follow reader | "
                f"{c['mbytes']:.0f} | {c['console_mb_s']:.1f} | {c['end_to_end_mb_s']:.1f} | "
                f"{c['p50_ms']:.1f} | {c['p99_ms']:.1f} |"
            )
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
