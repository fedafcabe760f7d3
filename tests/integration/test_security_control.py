"""A host cannot change, or add results to, another host's jobs (lava.control, lava.results).

A real lab (coordinator, barrier and two dispatchers, each under its own
broker user made by ``lavamq broker add-host`` / ``add-service``) runs a
two-host group. While host B's node is busy, host A, with its own valid
credentials, publishes with pika (no lavamq code between the attacker and
the broker):

* a ``subjob-state incomplete`` for B's sub-job with the optional ``host``
  left out (accepted before: the job ended incomplete with the forged reason);
* a ``test-result`` naming B's sub-job (stored before);
* a heartbeat naming host B (refused before too);
* a ``host-register`` listing B's device as its own (moved the device before).

Each is refused (the first three dead-lettered as ``unauthorized``), the
group completes, and only genuine results are stored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from crashlab import CrashLab, lab_users
from faults import dead_letters, wait_for

import services
from broker_config import identity, topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

JOB = """
job_name: forged control
timeouts:
  job: {{minutes: 2}}
  action: {{minutes: 1}}
protocols:
  lava-multinode:
    roles:
      left: {{device_type: local, count: 1, tags: [side-a]}}
      right: {{device_type: local, count: 1, tags: [side-b]}}
    timeout: {{seconds: 60}}
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
        metadata: {{format: Lava-Test Test Definition 1.0, name: left}}
        run:
          steps:
          - lava-test-case left-ran --result pass
- test:
    role: [right]
    definitions:
    - from: inline
      name: right
      path: inline/right.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: right}}
        run:
          steps:
          - touch {busy}
          - while [ ! -e {go} ]; do sleep 0.05; done
          - lava-test-case right-ran --result pass
"""


@pytest.fixture
def users(rabbit_vhost: services.RabbitVhost) -> Iterator[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    hosts = {
        f"ctl-a-{tag}": [(f"ctla-{tag}", "side-a")],
        f"ctl-b-{tag}": [(f"ctlb-{tag}", "side-b")],
    }
    with lab_users(rabbit_vhost, hosts) as made:
        yield made


def publish_as(url: str, exchange: str, key: str, message_type: str, body: dict[str, Any]) -> None:
    """Publish with pika as the URL's user, stamping its own (valid) ``user_id``."""
    params = pika.URLParameters(url)
    assert isinstance(params.credentials, pika.PlainCredentials)
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange,
            key,
            json.dumps({"schema_version": 1, **body}).encode(),
            pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                type=message_type,
                message_id=uuid.uuid4().hex,
                user_id=params.credentials.username,
            ),
            mandatory=True,
        )
    finally:
        connection.close()


def test_a_host_cannot_change_or_add_to_another_hosts_job(
    users: dict[str, Any], pg_url: str, tmp_path: Path, board_shared: Path
) -> None:
    (host_a, devices_a), (host_b, devices_b) = users["hosts"].items()
    node_a, node_b = devices_a[0][0], devices_b[0][0]
    busy, go = board_shared / "busy", board_shared / "go"
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
        job_id = lab.submit(JOB.format(busy=busy, go=go), url=users["admin"])
        wait_for(busy.exists, 60, f"{node_b} busy in its test\n{lab.output()}")
        job = lab.job(job_id)
        sub_b = next(s["id"] for s in job["subjobs"] if s["device"] == node_b)
        attacker = users["host_urls"][host_a]
        control = (topology.CONTROL_EXCHANGE_NAME, topology.CONTROL_ROUTING_KEY)
        publish_as(attacker, *control, "subjob-state", {
            "kind": "subjob-state", "subjob_id": sub_b, "state": "incomplete",
            "error_type": "infrastructure", "message": "forged by host A", "time": time.time(),
        })  # fmt: skip
        # the topic permission lets A publish only under its own device's key
        publish_as(attacker, topology.RESULTS_EXCHANGE_NAME, f"{job_id}.{node_a}", "test-result", {
            "id": uuid.uuid4().hex, "job": str(job_id), "subjob": str(sub_b), "node": node_b,
            "suite": "forged", "case": "forged-case", "result": "fail",
            "time": "2026-12-01T00:00:00Z",
        })  # fmt: skip
        publish_as(attacker, *control, "host-heartbeat", {
            "kind": "host-heartbeat", "host": host_b, "time": time.time(),
        })  # fmt: skip
        dead = dead_letters(users["admin"], 3, 20)
        reasons = {str(m.properties.get("type")): str(m.headers[topology.REJECT_REASON_HEADER])
                   for m in dead}  # fmt: skip
        user_a = identity.host_user(host_a)
        assert set(reasons) == {"subjob-state", "test-result", "host-heartbeat"}, reasons
        for r in reasons.values():
            assert r.startswith("unauthorized") and user_a in r, r
        assert f"device {node_b} of host '{host_b}'" in reasons["subjob-state"]
        assert f"device {node_b} of host '{host_b}'" in reasons["test-result"]
        # announcing B's (live) device does not take it
        publish_as(attacker, *control, "host-register", {
            "kind": "host-register", "host": host_a, "time": time.time(),
            "devices": [{"name": node_a, "device_type": "local", "tags": ["side-a"]},
                        {"name": node_b, "device_type": "local", "tags": ["side-b"]}],
        })  # fmt: skip
        wait_for(
            lambda: any(
                f"announces device {node_b} of online host {host_b}" in line
                for line in lab.coordinator.output
            ),
            20,
            "the coordinator refusing the claim",
        )
        assert {d["name"]: d["host"] for d in lab.devices()}[node_b] == host_b
        go.touch()
        job = lab.wait_job_end(job_id, 60)
        assert job["state"] == "complete", job
        assert {s["device"]: s["state"] for s in job["subjobs"]} == {
            node_a: "complete",
            node_b: "complete",
        }
        lab.wait_last_results(job_id, 30)
        cases = {case for _, _, case in lab.result_rows(job_id)}
        assert {"left-ran", "right-ran"} <= cases
        assert "forged-case" not in cases
    finally:
        lab.stop()
