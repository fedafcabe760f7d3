"""bench/all.py runs every benchmark end to end at its smallest sizes.

A smoke test: it checks that each bench runs against the real services and
prints its ratio rows, not how fast anything is (no figure is asserted).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_every_bench_runs_and_prints_its_ratios() -> None:
    if not services.rabbit_available():
        services.missing_service("RabbitMQ (127.0.0.1:5672 with the management plugin)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "all.py"), "--smallest"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    benches = {line.split("|")[1].strip() for line in table[1:]}
    assert {"sync", "send", "scheduler", "console", "deploy", "load", "qemu"} <= benches, (
        done.stdout
    )
    assert any("lava-coordinator p50 / lavamq p50" in line for line in table), done.stdout
    assert "Traceback" not in done.stdout + done.stderr
