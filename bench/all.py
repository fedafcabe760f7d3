"""Every benchmark at small sizes, in one run, as one table of ratios.

    python bench/all.py              # a few minutes; the README's "Measured" table
    python bench/all.py --smallest   # seconds: checks that every bench runs (the suite does)

Each ratio is measured in this run against its floor (the broker or the OS
doing the same step with no lavamq code), an anchor (LAVA's lava-coordinator,
``gzip -dc``) or the bench itself at a smaller size. A bench that cannot run
here (no lava-coordinator, no management plugin...) prints one line and the
others go on; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import console  # noqa: E402
import load  # noqa: E402
import qemu  # noqa: E402
import scheduler  # noqa: E402
import sync_latency  # noqa: E402
from common import MissingPiece, Row, print_rows, running_cluster  # noqa: E402


def plan(smallest: bool) -> list[tuple[str, Callable[[], list[Row]]]]:
    if smallest:
        return [
            (
                "sync",
                lambda: sync_latency.run(
                    [2], 2, anchor=True, anchor_rounds=1, senders=2, per_sender=3
                ),
            ),
            ("scheduler", lambda: scheduler.rows([0.01, 0.02], 1)),
            ("console", lambda: console.run(1, 1, boards=4, seconds=2, writers=1)),
            ("load", lambda: load.run([1, 2], 2, 2, [1])),
            ("qemu", lambda: qemu.run(1, "2-node", anchor=False)),
        ]
    return [
        (
            "sync",
            lambda: sync_latency.run(
                [2, 16, 64], 10, anchor=True, anchor_rounds=2, senders=64, per_sender=20
            ),
        ),
        ("scheduler", lambda: scheduler.rows([1, 2, 10], 1)),
        ("console", lambda: console.run(8, 16, boards=64, seconds=6)),
        (
            "load",
            lambda: load.run(
                [1, 50],
                4,
                4,
                [1, 2],
                cluster=running_cluster() is not None,
                interval=2.0,
                cluster_barriers=[1],
            ),
        ),
        ("qemu", lambda: qemu.run(1, None, anchor=True)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smallest", action="store_true", help="the smallest sizes (a smoke run)")
    args = parser.parse_args()
    rows: list[Row] = []
    missing = 0
    started = time.monotonic()
    for name, bench in plan(args.smallest):
        t0 = time.monotonic()
        try:
            rows += bench()
        except MissingPiece as exc:
            missing += 1
            print(f"{name}: not run: {exc}", flush=True)
            continue
        print(f"{name}: done in {time.monotonic() - t0:.0f} s", flush=True)
    size = " --smallest" if args.smallest else ""
    took = time.monotonic() - started
    print_rows(rows, f"bench/all.py{size}, {time.strftime('%Y-%m-%d')}, {took:.0f} s")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
