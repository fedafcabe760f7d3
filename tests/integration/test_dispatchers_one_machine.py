"""Several ``lavamq dispatcher`` processes on one machine, each owning some of its boards.

The rule (docs/dispatcher.md): each process is a lavamq host of its own — its
own ``[host] name``, broker user (``lavamq broker add-host`` with only its
devices) and workdir — and no device is in two processes. Here two processes
of this machine, ``<m>-a`` (two boards) and ``<m>-b`` (one board), each with
its confined broker user, run one 3-node MultiNode group across both (syncs
and a send/wait across the processes); each user reaches only its own
process's device queues. A third process given a device another process
serves, or another process's workdir, refuses to start and names it, before
touching any board.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import AccessRefused
from crashlab import CrashLab, host_toml, lab_users
from faults import raw_channel

import services
from broker_config import topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

JOB = """
job_name: one machine, two dispatchers
timeouts:
  job: {minutes: 2}
  action: {minutes: 1}
protocols:
  lava-multinode:
    roles:
      left: {device_type: local, count: 2, tags: [side-a]}
      right: {device_type: local, count: 1, tags: [side-b]}
    timeout: {seconds: 60}
actions:
- boot:
    role: [left, right]
- test:
    role: [left]
    definitions:
    - from: inline
      name: left
      path: inline/left.yaml
      repository:
        metadata: {format: Lava-Test Test Definition 1.0, name: left}
        run:
          steps:
          - lava-sync start
          - lava-wait from-right
          - lava-test-case got-right --shell grep -q value=b "$LAVA_MULTI_NODE_CACHE"
          - lava-sync end
- test:
    role: [right]
    definitions:
    - from: inline
      name: right
      path: inline/right.yaml
      repository:
        metadata: {format: Lava-Test Test Definition 1.0, name: right}
        run:
          steps:
          - lava-sync start
          - lava-send from-right value=b
          - lava-sync end
"""


@pytest.fixture
def users(rabbit_vhost: services.RabbitVhost) -> Iterator[dict[str, Any]]:
    machine = f"m{uuid.uuid4().hex[:6]}"
    hosts = {
        f"{machine}-a": [(f"{machine}-a-01", "side-a"), (f"{machine}-a-02", "side-a")],
        f"{machine}-b": [(f"{machine}-b-01", "side-b")],
    }
    with lab_users(rabbit_vhost, hosts) as made:
        yield made


def _dispatcher(config: Path) -> subprocess.CompletedProcess[str]:
    """Run a dispatcher that is expected to refuse to start (it exits by itself)."""
    return subprocess.run(
        [sys.executable, "-m", "lavamq", "dispatcher", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_two_dispatchers_of_one_machine_share_a_group_and_refuse_to_share_a_board(
    users: dict[str, Any], pg_url: str, tmp_path: Path
) -> None:
    (host_a, devices_a), (host_b, devices_b) = users["hosts"].items()
    lab = CrashLab(
        tmp_path,
        users["admin"],
        pg_url,
        hosts=users["hosts"],
        coordinator_url=users["coordinator"],
        barrier_url=users["barrier"],
        host_urls=users["host_urls"],
        heartbeat_timeout=30.0,
    )
    lab.start()
    try:
        job_id = lab.submit(JOB, url=users["admin"])
        job = lab.wait_job_end(job_id, 120)
        assert job["state"] == "complete", lab.output()
        placed = {s["device"]: s["state"] for s in job["subjobs"]}
        assert placed == dict.fromkeys([d for d, _ in devices_a + devices_b], "complete")
        lab.wait_last_results(job_id, 30)
        results = lab.store.results(job_id) if lab.store else []
        failed = [r for r in results if r["result"] != "pass"]
        assert not failed, failed
        assert {r["node"] for r in results if r["test_case"] == "got-right"} == {
            d for d, _ in devices_a
        }

        # each process's user reaches its own device queues only
        conn, channel = raw_channel(users["host_urls"][host_a])
        try:
            with pytest.raises(AccessRefused):
                channel.basic_consume(topology.device_queue_name(devices_b[0][0]))
        finally:
            conn.collect()

        # a third process listing a board host A's process serves: refused, named
        other = tmp_path / "third"
        other.mkdir()
        config = host_toml(other, host_a, users["host_urls"][host_a], devices_a[:1], 0.5)
        refused = _dispatcher(config)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"another dispatcher already serves {devices_a[0][0]}" in refused.stderr
        assert "ready" not in refused.stdout

        # a process given host B's workdir: refused, named (the config names tmp/<host>)
        config = host_toml(tmp_path, host_b, users["host_urls"][host_b], [], 0.5)
        config = config.rename(tmp_path / "same-workdir.toml")
        refused = _dispatcher(config)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"workdir {tmp_path / host_b} is in use by dispatcher {host_b}" in refused.stderr

        # both real dispatchers still serve: their devices are idle, nothing was powered off
        idle = {d["name"] for d in lab.devices() if d["state"] == "idle"}
        assert {d for d, _ in devices_a + devices_b} <= idle
    finally:
        lab.stop()
