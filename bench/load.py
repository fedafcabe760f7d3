"""Benchmark: K concurrent MultiNode groups of n nodes, against one group alone.

    python bench/load.py [--groups 1 10 50] [--nodes 4] [--rounds 20] [--barriers 1 2 4]
                         [--cluster] [--processes 4] [--interval 0]

Every node is a real ``MultinodeClient`` (its own publishing connection, its
process's group receiver) in its own thread; the groups are spread over
``--processes`` node processes (4; each group's nodes in one process, as on
a dispatcher host: 200 nodes in one Python process measured that process's
GIL, not lavamq); each of the K groups runs
``--rounds`` rounds of one ``lava-send`` per node and one ``lava-sync``, all
groups at once, against 1, 2 and 4 ``lavamq barrier`` processes (real
processes of the lavamq under test). ``--cluster`` runs the same on the
3-node cluster of ``scripts/rabbitmq-cluster.sh`` too. Prints aggregate
syncs/s and sends/s, release p50/p99, and the ratio of each p99 to the
single-group p99 of the same barrier count in the same run (one group alone,
at least 50 rounds, 0.1 s apart when paced; target at K=50: ≤ 2x), and
checks that every node got every peer's every message.

Closed loop by default: every node starts its next round as soon as its last
one ended, so at K=50 the nodes offer the broker as many confirmed persistent
publishes (3 a node a round) as it can take, and latency is the broker's
queue. ``--interval S`` paces it (a group's rounds start S s apart, the groups'
starts spread evenly over the S s, as independent jobs are): the run
then prints the offered publishes/s against the broker's raw rate measured
first (``sync_latency.raw_send_rate``: 64 senders, same vhost), so each p99
ratio comes with how loaded the broker was.

With B barrier processes the barrier is split into B shards
(``$LAVAMQ_BARRIER_SHARDS``, set for this process and the barriers), each
process preferring one: each group is counted by the process owning its
shard.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from common import (  # noqa: E402
    LAVAMQ,
    ROOT,
    MissingPiece,
    Row,
    bench_vhost,
    cpu_seconds,
    percentile,
    print_rows,
    running_cluster,
)
from sync_latency import raw_send_rate, timed_sync  # noqa: E402

from broker_config import topology  # noqa: E402
from broker_config.broker import Broker  # noqa: E402
from broker_config.cluster import broker_urls  # noqa: E402
from broker_config.declare import declare_topology  # noqa: E402
from coordinator.barrier import STANDBY_DELAY  # noqa: E402
from coordinator.groups import create_group, end_group  # noqa: E402
from device_agent.multinode import MultinodeClient  # noqa: E402


def start_barriers(url: str, count: int, tmp: Path) -> list[subprocess.Popen[str]]:
    """``count`` barrier processes over ``count`` shards, each preferring its own.

    Each has its own SQLite store: nothing fails over here (a lab's barriers
    share PostgreSQL, so that a standby can take a shard over).
    """
    procs = []
    for i in range(count):
        db = f"sqlite:///{tmp}/barrier{i}.sqlite"
        proc = subprocess.Popen(
            [*LAVAMQ, "barrier", "--broker", url, "--db", db, "--prefer-shards", str(i)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "lavamq barrier ready":
                break
        else:
            raise SystemExit("load: a barrier process did not start")
        procs.append(proc)
    return procs


def _cpu_seconds(procs: list[subprocess.Popen[str]]) -> list[float]:
    """CPU seconds so far of each barrier process."""
    return [cpu_seconds(proc.pid) for proc in procs]


def node_process(
    url: str,
    groups: list[tuple[str, float]],
    n: int,
    rounds: int,
    interval: float,
    ready: Any,
    go: Any,
    began: Any,
    out: Any,
) -> None:
    """(A process.) Every node of ``groups`` (name, phase): its rounds of one send and
    one sync each, round r starting ``phase + r * interval`` s after ``began`` (at once
    if it is late; ``interval`` 0: each round as soon as the last one ended).

    Puts ``(stamps, lost, error, cpu, ended)``: (group, round) → every node's
    (published, released) times, the messages a node did not get, the first
    node's failure (or ""), the CPU seconds of this process and when its last
    node finished (``time.perf_counter``, the same clock in every process).
    """
    members = node_names(n)
    phases = dict(groups)
    clients = [MultinodeClient(url, g, m, members, timeout=300) for g in phases for m in members]
    stamps: dict[tuple[str, int], list[tuple[float, float]]] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def node(c: MultinodeClient) -> None:
        try:
            go.wait()
            for r in range(rounds):
                due = began.value + phases[c.group] + r * interval
                time.sleep(max(0.0, due - time.perf_counter()))
                c.send(f"m{r}", {"r": str(r)})
                stamp = timed_sync(c, "load", 300)
                with lock:
                    stamps.setdefault((c.group, r), []).append(stamp)
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=node, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    ready.put(len(clients))
    for t in threads:
        t.join()
    ended = time.perf_counter()
    lost = sum(
        1
        for c in clients
        for r in range(rounds)
        for m in members
        if m not in c._state.messages.get(f"m{r}", {})
    )
    for c in clients:
        c.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((stamps, lost, errors[0] if errors else "", usage.ru_utime + usage.ru_stime, ended))


def _from_children(queue: Any, procs: list[Any], timeout: float, what: str) -> Any:
    """The next item a node process puts on ``queue``; stops if one of them died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.5)
        except Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(
                    f"load: a node process exited {dead[0].exitcode} (see above)"
                ) from None
    raise SystemExit(f"load: a node process did not {what} in {timeout:g} s")


def node_names(n: int) -> dict[str, str]:
    """node → role of each group's ``n`` nodes."""
    return {f"node{i:02d}": "server" if i == 0 else "client" for i in range(n)}


def run_groups(
    url: str, k: int, n: int, rounds: int, processes: int, interval: float = 0.0
) -> dict[str, float]:
    """K groups at once, over ``processes`` node processes (each group's nodes in one,
    as on a dispatcher host); aggregate rates, release latencies and lost messages."""
    broker = Broker(url)
    groups = [f"load{uuid.uuid4().hex[:8]}" for _ in range(k)]
    members = node_names(n)
    for g in groups:
        create_group(broker, g, members, timeout=300)
    mp = multiprocessing.get_context("spawn")
    ready, go, out, start = mp.Queue(), mp.Event(), mp.Queue(), mp.Value("d", 0.0)
    # independent groups: paced ones start their rounds spread over the interval
    phased = [(g, interval * i / k) for i, g in enumerate(groups)]
    shares = [phased[i::processes] for i in range(min(processes, k))]
    procs = [
        mp.Process(
            target=node_process, args=(url, share, n, rounds, interval, ready, go, start, out)
        )
        for share in shares
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        _from_children(ready, procs, 300, "connect its nodes")
    began = start.value = time.perf_counter()
    go.set()
    results = [_from_children(out, procs, 600, "finish its rounds") for _ in procs]
    for proc in procs:
        proc.join(30)
    elapsed = max(ended for *_, ended in results) - began
    failed = [error for _, _, error, _, _ in results if error]
    if failed:
        raise SystemExit(f"load: K={k} n={n}: a node failed: {failed[0]}")
    for g in groups:
        end_group(broker, g, members)
    broker.close()
    stamps = {key: s for result in results for key, s in result[0].items()}
    # round 0 warms the connections up; it is not measured (unless it is all there is)
    latencies = [
        max(done for _, done in s) - max(pub for pub, _ in s)
        for (_, r), s in stamps.items()
        if r > 0 or rounds == 1
    ]
    return {
        "syncs_s": k * n * rounds / elapsed,
        "sends_s": k * n * rounds / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "max": max(latencies) * 1000,
        "lost": sum(lost for _, lost, _, _, _ in results),
        "nodes_cpu": sum(cpu for *_, cpu, _ in results),
        "elapsed": elapsed,
    }


def measure(
    url: str,
    where: str,
    groups: list[int],
    n: int,
    rounds: int,
    barriers: list[int],
    processes: int,
    interval: float = 0.0,
) -> list[Row]:
    rows: list[Row] = []
    # what the broker itself sustains: confirmed persistent publishes from 64 senders
    capacity = raw_send_rate(broker_urls(url)[0], 64, 20)  # (one node of a cluster)
    # each round of each node: its send (group exchange + barrier) and its sync
    offered = 3 * n / interval if interval else 0.0
    for count in barriers:
        # one shard per barrier process; publishers here and there must agree
        os.environ[topology.BARRIER_SHARDS_ENV] = str(count)
        with Broker(url) as b:
            declare_topology(b)
        with tempfile.TemporaryDirectory() as tmp:
            procs = start_barriers(url, count, Path(tmp))
            if count > 1:
                # each stands by for the others' shards STANDBY_DELAY s after it is
                # ready: a consumer joining mid-run stalled a round once (~0.2 s)
                time.sleep(STANDBY_DELAY + 1.0)
            try:
                # its p99 from enough rounds (K=50 has 50 times as many samples)
                alone = run_groups(url, 1, n, max(rounds, 50), 1, min(interval, 0.1))
                for k in groups:
                    cpu = _cpu_seconds(procs)
                    got = alone if k == 1 else run_groups(url, k, n, rounds, processes, interval)
                    used = [
                        after - before
                        for before, after in zip(cpu, _cpu_seconds(procs), strict=True)
                    ]
                    pace = f", a round every {interval:g} s" if interval and k > 1 else ""
                    label = f"{where}, {count} barrier(s), K={k} x n={n}{pace}"
                    load = (
                        f"offered {offered * k:.0f} confirmed publishes/s, "
                        f"{offered * k / capacity:.0%} of the broker's {capacity:.0f}/s; "
                        if interval and k > 1
                        else f"rounds {min(interval, 0.1):g} s apart (the broker's raw rate: "
                        f"{capacity:.0f}/s); "
                        if interval
                        else f"closed loop (the broker's raw rate: {capacity:.0f}/s); "
                    )
                    print(
                        f"{label}: {load}{got['syncs_s']:.0f} syncs/s, "
                        f"{got['sends_s']:.0f} sends/s, "
                        f"release p50 {got['p50']:.1f} ms p99 {got['p99']:.1f} ms, "
                        f"lost {got['lost']:.0f}; CPU s: nodes' processes {got['nodes_cpu']:.1f}"
                        f" (whole life), barriers {' '.join(f'{u:.1f}' for u in used)}; "
                        f"{got['elapsed']:.1f} s",
                        flush=True,
                    )
                    if got["lost"]:
                        raise SystemExit(f"load: {label}: {got['lost']:.0f} messages lost")
                    rows.append(
                        Row(
                            "load",
                            f"release p99, {label}",
                            got["p99"],
                            "ms",
                            "one group alone",
                            alone["p99"],
                            2.0 if k == 50 else None,
                        )
                    )
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(30)
    return rows


def run(
    groups: list[int],
    n: int,
    rounds: int,
    barriers: list[int],
    cluster: bool = False,
    processes: int = 4,
    interval: float = 0.0,
    cluster_barriers: list[int] | None = None,
) -> list[Row]:
    """The rows for one node and, with ``cluster``, the 3-node cluster (with
    ``cluster_barriers`` barrier counts there, ``barriers`` if not given)."""
    with bench_vhost("lavamq-load") as url:
        rows = measure(url, "one node", groups, n, rounds, barriers, processes, interval)
    if cluster:
        where = running_cluster()
        if where is None:
            raise MissingPiece(
                "load: the 3-node cluster is not running (scripts/rabbitmq-cluster.sh start)"
            )
        # no failover test kills its nodes meanwhile
        with where.shared(), bench_vhost("lavamq-load", base=where.mgmt, amqp=where.amqp[0]) as url:
            nodes = ",".join(url.replace(where.amqp[0], a) for a in where.amqp)
            on_cluster = barriers if cluster_barriers is None else cluster_barriers
            rows += measure(
                nodes, "3-node cluster", groups, n, rounds, on_cluster, processes, interval
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, nargs="*", default=[1, 10, 50])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--barriers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--cluster", action="store_true", help="also on the 3-node cluster")
    parser.add_argument(
        "--processes", type=int, default=4, help="node processes the groups are spread over"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds between the starts of a group's rounds (0: as fast as they go)",
    )
    args = parser.parse_args()
    rows = run(
        args.groups,
        args.nodes,
        args.rounds,
        args.barriers,
        args.cluster,
        args.processes,
        args.interval,
    )
    print_rows(rows)


if __name__ == "__main__":
    main()
