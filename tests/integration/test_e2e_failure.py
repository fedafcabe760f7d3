"""A node that fails to boot fails its group fast; the is_slave boot order.

Both run ``lavamq run --keep`` as a subprocess and read the job logs the
dispatcher kept (one JSON record per line, with times) to measure.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
LAVAMQ = [sys.executable, "-c", "from lavamq.cli import main; main()"]

FAILING_JOB = """
job_name: a node fails to boot
timeouts:
  job: {minutes: 5}
  action: {minutes: 2}
protocols:
  lava-multinode:
    roles:
      peer: {device_type: local, count: 2, tags: [good]}
      victim: {device_type: local, count: 1, tags: [broken]}
    timeout: {minutes: 3}
actions:
- boot:
    role: [peer]
- boot:
    role: [victim]
    timeout: {seconds: 8}
- test:
    definitions:
    - from: inline
      name: wait-for-everyone
      path: inline/wait.yaml
      repository:
        metadata: {format: Lava-Test Test Definition 1.0, name: wait-for-everyone}
        run:
          steps:
          - lava-test-case before-sync --result pass
          - lava-sync everyone-up
          - lava-test-case after-sync --result pass
"""

# the victim's board never shows the prompt its dictionary expects: its boot times out
DEVICES = """
[host]
name = "failing-lab"
heartbeat_interval = 2.0

[[device]]
name = "good-01"
device_type = "local"
tags = ["good"]
settings = {network = "none"}

[[device]]
name = "good-02"
device_type = "local"
tags = ["good"]
settings = {network = "none"}

[[device]]
name = "broken-01"
device_type = "local"
tags = ["broken"]
prompts = ["this-prompt-never-appears# "]
settings = {network = "none"}
"""


def records(workspace: Path, node: str) -> list[dict[str, Any]]:
    (log,) = (workspace / "dispatcher" / "jobs").glob(f"*.{node}.*/job.log")
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def when(rec: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(rec["time"]).timestamp()


def run_kept(
    tmp_path: Path, job: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    workspace = tmp_path / "ws"
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [*LAVAMQ, "run", str(job), "--keep", "--json", "--junit", str(junit), *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    kept = [line for line in proc.stderr.splitlines() if line.startswith("workspace kept: ")]
    assert kept, proc.stderr[-3000:]
    workspace = Path(kept[-1].split(": ", 1)[1])
    return proc, workspace


def test_a_failed_boot_releases_blocked_peers_within_seconds(tmp_path: Path) -> None:
    job = tmp_path / "failing.yaml"
    job.write_text(FAILING_JOB)
    devices = tmp_path / "devices.toml"
    devices.write_text(DEVICES)
    proc, ws = run_kept(tmp_path, job, "--device-config", str(devices))
    assert proc.returncode == 1, proc.stderr[-3000:]
    bundle = json.loads(proc.stdout)
    head = bundle["job"]
    assert head["status"] == "incomplete" and head["passed"] is False
    first = head["first_failure"]
    assert first["node"] == "broken-01" and first["role"] == "victim"
    assert first["error_type"] in ("infrastructure", "job")
    assert "broken-01" in first["message"] or "boot" in first["message"], first

    by_node = {n["node"]: n for n in bundle["nodes"]}
    assert by_node["broken-01"]["state"] == "incomplete"
    # the victim's boot failed at its boot deadline; find that moment in its job log
    victim = records(ws, "broken-01")
    failure = next(r for r in victim if r["level"] == "error" and "failed after" in r["message"])
    failed_at = when(failure)
    for peer in ("good-01", "good-02"):
        recs = records(ws, peer)
        asked = next(
            r for r in recs if r["level"] == "target" and "<LAVA_SYNC everyone-up>" in r["message"]
        )
        nack = next(
            r for r in recs if r["level"] == "input" and "<LAVA_SYNC_COMPLETE nack>" in r["message"]
        )
        # the peer was blocked in lava-sync before the failure, and released soon after it
        assert when(asked) < failed_at, (peer, asked, failure, recs[-30:])
        released = when(nack) - failed_at
        print(f"{peer}: released {released:.3f} s after broken-01's boot failed")
        assert 0 <= released < 5.0, (peer, released)
        # the release names the node that failed
        named = [
            r for r in recs if "broken-01" in r["message"] and r["level"] in ("error", "target")
        ]
        assert named, f"{peer}: no record names broken-01"
        cases = {c["name"]: c["result"] for run in by_node[peer]["test_runs"] for c in run["cases"]}
        assert cases["before-sync"] == "pass"
        assert cases["multinode-sync-everyone-up"] == "fail"
        # released, not timed out: the peer's sub-job ended soon after the failure, either
        # going on with its test definition or failed with the group
        ended = [r for r in recs if r["level"] == "event"][-1]
        assert when(ended) - failed_at < 5.0, (peer, ended)
        if by_node[peer]["state"] == "complete":
            # the failed lava-sync exits 1: run.sh's set -e ends the definition there
            assert "after-sync" not in cases
        else:
            assert by_node[peer]["error_type"] == "group-failed", by_node[peer]
            assert "broken-01" in by_node[peer]["message"]
    root = ET.fromstring((tmp_path / "junit.xml").read_bytes())
    errors = root.findall(".//testcase/error")
    assert len(errors) >= 1 and any(
        "broken-01" in (e.text or "") or "boot" in (e.get("message") or "") for e in errors
    )
    assert int(root.get("failures") or 0) >= 2  # the two peers' failed syncs


def test_is_slave_node_is_powered_on_only_after_its_master_booted_it(tmp_path: Path) -> None:
    proc, ws = run_kept(tmp_path, ROOT / "examples" / "slave-master.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = json.loads(proc.stdout)
    assert bundle["job"]["passed"] is True
    slave = {n["role"]: n for n in bundle["nodes"]}["slave"]
    master = {n["role"]: n for n in bundle["nodes"]}["master"]
    assert slave["is_slave"] is True and master["is_slave"] is False
    m = records(ws, master["node"])
    s = records(ws, slave["node"])
    boot_done_sent = min(when(r) for r in m if "LAVA_SEND lava_ms_boot_done" in r["message"])
    # the slave spoke its half of the protocol through its dispatcher, in order
    steps = [r["message"] for r in s if "-slave:" in r["message"]]
    order = ["lava-send lava_ms_slave_data", "lava-wait lava_ms_ready", "lava-send lava_ms_boot",
             "lava-wait lava_ms_boot_done", "boot data from"]  # fmt: skip
    positions = [next(i for i, msg in enumerate(steps) if key in msg) for key in order]
    assert positions == sorted(positions), steps
    assert any("cmdline=console=ttyS0" in msg for msg in steps)
    powered = next(r for r in s if r["message"].startswith("booting "))
    assert when(powered) >= boot_done_sent
    cases = {c["name"] for run in slave["test_runs"] for c in run["cases"]}
    assert "booted-by-master" in cases
