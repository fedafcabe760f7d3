"""QEMU MultiNode from command to result: where the time goes, and LAVA's lava-run beside it.

    python bench/qemu.py [--runs N] [--only NAME] [--anchor]

Runs ``lavamq run FILE --keep --json`` (this interpreter and checkout) on

* ``2-node``: a 2-node job in LAVA's qemu shape (``image_arg``, the image's
  own prompt) whose inline test definitions do ``lava-send``/``lava-wait``
  and a ``lava-sync`` (written by this bench, the anchor runs the same file);
* every QEMU example: ``qemu-client-server``, ``qemu-network`` (3 VMs),
  ``qemu-lava``.

From the kept job logs each run is split along the slowest node: image
prepare (command start → the last VM started: lab start, scheduling,
download and decompression, the overlay built into the initramfs), boot
(→ the last VM at its prompt), test (→ the last test action ended),
teardown (→ the command returned: power off, stopping the lab, removing the
workspace).

Target, per job: wall time ≤ 2x (slowest VM boot + the slowest node's own
test time), both measured in the same run: a node's own test time is its
test action's duration minus the time it sat in MultiNode calls (from each
``<LAVA_MULTI_NODE>`` signal to its reply), the time its steps take by
themselves.

``--anchor`` also runs the 2-node job on LAVA (bench/lava_run.py: LAVA's
``lava-run``, one per node, and its coordinator from a LAVA source tree, with
the coordinator's configuration lava-run reads: LAVA's default poll delay is
3 s; LAVA's qemu device template, TCG, 512 MiB); the row is LAVA's wall time
over lavamq's (target ≥ 2x).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from common import LAVAMQ, ROOT, MissingPiece, Row, print_rows  # noqa: E402
from lava_run import coordinator_conf, find_lava, port_lock, run_lava  # noqa: E402

IMAGES = ROOT / "images"
EXAMPLES = ("qemu-client-server", "qemu-network", "qemu-lava")
CALL = re.compile(r"<LAVA_MULTI_NODE> <LAVA_(\w+)")
REPLY = re.compile(r"<LAVA_(\w+)_COMPLETE")
HEADER = re.compile(r"^embedded lab in (\S+), boards:$", re.M)

TWO_NODE_JOB = """\
# bench/qemu.py's 2-node job: LAVA's qemu shape, send/wait/sync
job_name: bench qemu 2-node send-wait-sync
timeouts:
  job: {{minutes: 10}}
  action: {{minutes: 5}}
  connection: {{minutes: 2}}
priority: medium
visibility: public
protocols:
  lava-multinode:
    roles:
      server: {{device_type: qemu, count: 1, context: {{arch: amd64, no_kvm: true}}}}
      client: {{device_type: qemu, count: 1, context: {{arch: amd64, no_kvm: true}}}}
    timeout: {{minutes: 5}}
actions:
- deploy:
    role: [server, client]
    to: tmpfs
    os: oe
    timeout: {{minutes: 2}}
    images:
      kernel:
        url: {images}/vmlinuz
        image_arg: >-
          -kernel {{kernel}} -append "console=ttyS0,115200 loglevel=6 lavamq.prompt=root@lava-dut:~"
      initrd:
        url: {images}/initramfs.cpio.gz
        image_arg: -initrd {{initrd}}
        compression: gz
        format: cpio.newc
        overlays: {{lava: true}}
- boot:
    role: [server, client]
    method: qemu
    media: tmpfs
    timeout: {{minutes: 3}}
    prompts: ['root@lava-dut:~# ']
- test:
    role: [server]
    timeout: {{minutes: 5}}
    definitions:
    - from: inline
      name: server
      path: inline/server.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: server}}
        run:
          steps:
          - lava-send server-ready port=8080
          - lava-wait client-done
          - lava-test-case client-done --result pass
          - lava-sync finished
- test:
    role: [client]
    timeout: {{minutes: 5}}
    definitions:
    - from: inline
      name: client
      path: inline/client.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: client}}
        run:
          steps:
          - lava-wait server-ready
          - lava-test-case server-ready --result pass
          - lava-send client-done result=pass
          - lava-sync finished
"""


@dataclass
class Split:
    """One run: wall time and its phases along the slowest node."""

    name: str
    wall: float
    prepare: float
    boot: float
    test: float
    teardown: float
    slowest_boot: float
    own_test: float
    passed: bool

    @property
    def floor(self) -> float:
        """Slowest VM boot + the slowest node's own test time."""
        return self.slowest_boot + self.own_test


def _when(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()


def node_phases(log: Path) -> dict[str, float]:
    """Epoch times of one node's phases, from its job log, and its blocked seconds."""
    out: dict[str, float] = {"blocked": 0.0}
    call_at: float | None = None
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        message, level, at = str(record.get("message", "")), record.get("level"), _when(record)
        if level == "info" and message.startswith("booting "):
            out["boot_start"] = at
        elif level == "info" and re.match(r"end: \d+ boot-", message):
            out["boot_end"] = at
        elif level == "info" and re.match(r"start: \d+ lava-test-shell", message):
            out.setdefault("test_start", at)
        elif level == "info" and re.match(r"end: \d+ lava-test-shell", message):
            out["test_end"] = at
        elif level == "target" and CALL.search(message):
            call_at = at
        elif level == "input" and REPLY.search(message) and call_at is not None:
            out["blocked"] += at - call_at
            call_at = None
    missing = {"boot_start", "boot_end", "test_start", "test_end"} - set(out)
    if missing:
        raise RuntimeError(f"{log}: no {', '.join(sorted(missing))} in the job log")
    return out


def run_lavamq(name: str, job: Path, work: Path) -> Split:
    """``lavamq run JOB --keep --json``, timed, and split from its kept job logs."""
    start = time.time()
    proc = subprocess.run(
        [*LAVAMQ, "run", str(job), "--keep", "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
    )
    end = time.time()
    found = HEADER.search(proc.stderr)
    if found is None:
        raise RuntimeError(f"{name}: lavamq run said: {proc.stderr[-2000:]}")
    workspace = Path(found.group(1))
    try:
        bundle = json.loads(proc.stdout)
        nodes = [node_phases(p) for p in sorted(workspace.glob("dispatcher/jobs/*/job.log"))]
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    if not nodes:
        raise RuntimeError(f"{name}: no job logs in {workspace}")
    booted = max(n["boot_start"] for n in nodes)
    prompt = max(n["boot_end"] for n in nodes)
    tested = max(n["test_end"] for n in nodes)
    return Split(
        name=name,
        wall=end - start,
        prepare=booted - start,
        boot=prompt - booted,
        test=tested - prompt,
        teardown=end - tested,
        slowest_boot=max(n["boot_end"] - n["boot_start"] for n in nodes),
        own_test=max(n["test_end"] - n["test_start"] - n["blocked"] for n in nodes),
        passed=bool(bundle["job"]["passed"]),
    )


# --------------------------------------------------------------------------- table


def print_splits(splits: list[Split]) -> None:
    """The split of every run (seconds), before the ratio rows."""
    print("| job | wall | image prepare | boot | test | teardown | slowest boot | own test |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in splits:
        print(
            f"| {s.name}{'' if s.passed else ' (FAILED)'} | {s.wall:.2f} | {s.prepare:.2f} | "
            f"{s.boot:.2f} | {s.test:.2f} | {s.teardown:.2f} | {s.slowest_boot:.2f} | "
            f"{s.own_test:.2f} |"
        )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def run(runs: int, only: str | None, anchor: bool) -> list[Row]:
    """Every case ``runs`` times; the median run of each becomes a row."""
    for name in ("vmlinuz", "initramfs.cpio.gz"):
        if not (IMAGES / name).is_file():
            raise MissingPiece(f"bench/qemu.py: {IMAGES / name} is missing: run `make test-image`")
    if shutil.which("qemu-system-x86_64") is None:
        raise MissingPiece("bench/qemu.py: no qemu-system-x86_64: apt-get install qemu-system-x86")
    work = Path(tempfile.mkdtemp(prefix="lavamq-bench-qemu-"))
    two_node = work / "two-node.yaml"
    two_node.write_text(TWO_NODE_JOB.format(images=IMAGES.resolve().as_uri()))
    cases = {"2-node": two_node} | {e: ROOT / "examples" / e / "job.yaml" for e in EXAMPLES}
    if only:
        cases = {k: v for k, v in cases.items() if k == only}
    rows: list[Row] = []
    splits: list[Split] = []
    medians: dict[str, Split] = {}
    try:
        # a missing LAVA is said before the lavamq runs, not after them
        lava = find_lava(work) if anchor and "2-node" in cases else None
        poll = coordinator_conf().get("poll_delay", "?") if lava is not None else None
        for name, job in cases.items():
            mine = [run_lavamq(name, job, work) for _ in range(runs)]
            splits += mine
            medians[name] = sorted(mine, key=lambda s: s.wall)[len(mine) // 2]
        print_splits(splits)
        for name, s in medians.items():
            rows.append(
                Row("qemu", f"{name}: command → result", s.wall, "s",
                    "slowest VM boot + slowest node's own test time", s.floor, limit=2.0)
            )  # fmt: skip
        if lava is not None:
            with port_lock():
                wall = median(
                    [
                        run_lava(lava, two_node, Path(tempfile.mkdtemp(dir=work)))
                        for _ in range(runs)
                    ]
                )
            rows.append(
                Row("qemu", f"2-node: LAVA {lava.version} lava-run (poll {poll} s) / lavamq",
                    wall, "s", "lavamq run, same job", medians["2-node"].wall, limit=2.0,
                    higher_is_better=True)
            )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs of each job (the median counts)")
    parser.add_argument("--only", choices=["2-node", *EXAMPLES], help="one job only")
    parser.add_argument("--anchor", action="store_true", help="also LAVA's lava-run, 2-node job")
    args = parser.parse_args()
    try:
        rows = run(args.runs, args.only, args.anchor)
    except MissingPiece as exc:
        print(exc, file=sys.stderr)
        return 1
    print_rows(rows, f"bench/qemu.py, {time.strftime('%Y-%m-%d')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
