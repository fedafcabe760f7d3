#!/usr/bin/env python3
"""Measure the test image's boot time to the shell prompt with the qemu device type.

Usage: scripts/qemu-boot-time.py [--runs N] [--accel auto|kvm|tcg] [--parallel K]

Times QEMU start → first prompt on the serial console (what a job's boot
action waits for), N runs, K VMs at once; prints min/median/max per accel.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_agent.devices.qemu import QemuDevice  # noqa: E402


def boot_once(work: Path, accel: str, index: int) -> tuple[float, str]:
    vm = QemuDevice(
        {
            "name": f"boot-time-{index}",
            "device_type": "qemu",
            "settings": {"accel": accel, "runtime_dir": str(work / "rt")},
        },
        work / f"vm{index}",
    )
    vm.set_images({"kernel": ROOT / "images/vmlinuz", "ramdisk": ROOT / "images/initramfs.cpio.gz"})
    try:
        vm.boot(300)
        assert vm.last_boot_seconds is not None and vm.accel is not None
        return vm.last_boot_seconds, vm.accel
    finally:
        vm.power_off()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        times: list[float] = []
        accel = "?"
        for run in range(args.runs):
            with ThreadPoolExecutor(args.parallel) as pool:
                started = time.monotonic()
                results = list(
                    pool.map(
                        lambda i, r=run: boot_once(work, args.accel, r * args.parallel + i),
                        range(args.parallel),
                    )
                )
            times.extend(seconds for seconds, _ in results)
            accel = results[-1][1]
            print(
                f"run {run + 1}: " + ", ".join(f"{s:.2f} s" for s, _ in results) + f" ({accel}, "
                f"wall {time.monotonic() - started:.2f} s)",
                flush=True,
            )
        load = Path("/proc/loadavg").read_text().split()[0]
        print(
            f"accel={accel} parallel={args.parallel} runs={len(times)}: "
            f"min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
            f"max {max(times):.2f} s (1-min load average after: {load})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
