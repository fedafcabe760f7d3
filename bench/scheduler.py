"""Cost of one scheduling pass as the lab and the queue grow.

    python bench/scheduler.py [--repeat 5] [--seed 1]

Base size (x1): 10,000 queued sub-jobs in groups of 1-8 and 1,000 devices of
20 types (each with 0-2 of 4 tags; 70 % idle, the rest running or offline).
Rows x2 and x4 scale both the queue and the lab. Prints a Markdown table:
median time per pass and allocations (sub-jobs placed) per second.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from common import Row, print_rows  # noqa: E402

from coordinator.scheduler import DeviceView, GroupRequest, SubJobRequest, schedule  # noqa: E402

TAGS = ["usb-flash", "audio-loopback", "hdmi", "ethernet"]


def make_lab(n_devices: int, rng: random.Random) -> list[DeviceView]:
    types = [f"type{i:02d}" for i in range(20)]
    devices = []
    for i in range(n_devices):
        dtype = types[i % len(types)]
        tags = frozenset(rng.sample(TAGS, rng.randint(0, 2)))
        roll = rng.random()
        state = "idle" if roll < 0.7 else ("running" if roll < 0.95 else "offline")
        devices.append(
            DeviceView(
                f"{dtype}-{i:05d}",
                dtype,
                tags,
                state=state,
                job_id=1 if state == "running" else None,
            )
        )
    return devices


def make_queue(n_subjobs: int, rng: random.Random) -> list[GroupRequest]:
    types = [f"type{i:02d}" for i in range(20)]
    groups = []
    made = 0
    job = 1000
    while made < n_subjobs:
        size = min(rng.randint(1, 8), n_subjobs - made)
        subs = []
        roles = rng.randint(1, min(3, size))
        for k in range(size):
            r = k % roles
            rrng = random.Random(job * 10 + r)
            dtype = rrng.choice(types)
            tags = frozenset(rrng.sample(TAGS, rrng.randint(0, 1)))
            subs.append(SubJobRequest(job * 10 + k, dtype, tags))
        groups.append(
            GroupRequest(job, rng.choice([20, 50, 50, 80]), rng.uniform(0, 3600), tuple(subs))
        )
        made += size
        job += 1
    return groups


def run(
    scale: float, repeat: int, seed: int, base_subjobs: int = 10_000, base_devices: int = 1_000
) -> tuple[int, int, int, float, int]:
    rng = random.Random(seed)
    lab = make_lab(int(base_devices * scale), rng)
    queue = make_queue(int(base_subjobs * scale), rng)
    times = []
    placed = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = schedule(lab, queue, now=3600.0, starvation_seconds=1800.0)
        times.append(time.perf_counter() - t0)
        placed = sum(len(a) for a in res.allocations.values())
    return len(queue), int(base_subjobs * scale), len(lab), statistics.median(times), placed


def rows(scales: list[float], repeat: int, seed: int = 1, base_subjobs: int = 10_000) -> list[Row]:
    """Time per queued sub-job at each scale, as a ratio to the smallest scale's (linear: ~1)."""
    out: list[Row] = []
    first: float | None = None
    for scale in scales:
        _, subjobs, devices, seconds, _ = run(
            scale, repeat, seed, base_subjobs, max(1, base_subjobs // 10)
        )
        per_subjob = seconds / subjobs * 1e6
        first = first or per_subjob
        out.append(
            Row(
                "scheduler",
                f"pass over {subjobs:,} queued sub-jobs x {devices:,} devices: "
                f"{seconds * 1000:.0f} ms, per sub-job",
                per_subjob,
                "us",
                f"per sub-job at x{scales[0]:g}",
                first,
                1.5,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scales", default="1,2,4,10", help="x10: 100k sub-jobs x 10k devices")
    args = parser.parse_args()
    print("| size | groups | queued sub-jobs | devices | time per pass | allocated | allocs/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    scales = [float(s) for s in args.scales.split(",")]
    for scale in scales:
        groups, subjobs, devices, seconds, placed = run(scale, args.repeat, args.seed)
        print(
            f"| x{scale:g} | {groups:,} | {subjobs:,} | {devices:,} | {seconds * 1000:.0f} ms "
            f"| {placed:,} | {placed / seconds:,.0f} |"
        )
    print_rows(rows(scales, args.repeat, args.seed))


if __name__ == "__main__":
    main()
