"""Node ownership end to end: in a real lab group, a host cannot send as another host's node.

Every service runs as its own confined broker user (``lavamq broker add-host``
/ ``add-service``); the coordinator names each node's host user in the group
(``group-open``) and in every sub-job assignment, and each dispatcher hands
those owners to its nodes' MultinodeClients.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crashlab import CrashLab, lab_users
from faults import dead_letters, wait_for

import services
from broker_config import identity, topology
from broker_config.broker import Broker
from schemas.messages.multinode import MultinodeSendSchema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

JOB = """
job_name: forged send
timeouts:
  job: {{minutes: 2}}
  action: {{minutes: 1}}
protocols:
  lava-multinode:
    roles:
      waiter: {{device_type: local, count: 1, tags: [side-a]}}
      sender: {{device_type: local, count: 1, tags: [side-b]}}
    timeout: {{seconds: 60}}
actions:
- boot:
    role: [waiter, sender]
- test:
    role: [waiter]
    definitions:
    - from: inline
      name: waiter
      path: inline/waiter.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: waiter}}
        run:
          steps:
          - lava-wait from-sender
          - lava-test-case got-genuine --shell grep -q value=genuine "$LAVA_MULTI_NODE_CACHE"
          - lava-test-case no-forgery --shell {no_forgery}
- test:
    role: [sender]
    definitions:
    - from: inline
      name: sender
      path: inline/sender.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: sender}}
        run:
          steps:
          - while [ ! -e {go} ]; do sleep 0.05; done
          - lava-send from-sender value=genuine
"""


NO_FORGERY = 'test -s "$LAVA_MULTI_NODE_CACHE" -a -z "$(grep forged "$LAVA_MULTI_NODE_CACHE")"'


@pytest.fixture
def users(rabbit_vhost: services.RabbitVhost) -> Iterator[dict[str, Any]]:
    """Two hosts, a coordinator and a barrier, each its own confined broker user."""
    tag = uuid.uuid4().hex[:8]
    hosts = {
        f"own-a-{tag}": [(f"owna-{tag}", "side-a")],
        f"own-b-{tag}": [(f"ownb-{tag}", "side-b")],
    }
    with lab_users(rabbit_vhost, hosts) as made:
        yield made


def test_forged_send_in_a_lab_group_is_dead_lettered_and_satisfies_no_waiter(
    users: dict[str, Any], pg_url: str, tmp_path: Path, board_shared: Path
) -> None:
    """Failure covered: in a group the coordinator started, host A (running the
    waiter node) publishes, with its own valid broker user, a ``lava-send`` as
    host B's node — the message the waiter is blocked on. Both nodes' clients
    dead-letter it as unauthorized (the owners came from the coordinator), the
    waiter stays blocked, and only host B's genuine send releases it.
    """
    (host_a, devices_a), (_, devices_b) = users["hosts"].items()
    node_a, node_b = devices_a[0][0], devices_b[0][0]
    go = board_shared / "go"
    cache = tmp_path / "cache.txt"
    lab = CrashLab(
        tmp_path,
        users["admin"],
        pg_url,
        hosts=users["hosts"],
        coordinator_url=users["coordinator"],
        barrier_url=users["barrier"],
        host_urls=users["host_urls"],
        heartbeat_timeout=30.0,
        # one cache per board, so concurrent local boards cannot mix their data
        device_env={"LAVA_MULTI_NODE_CACHE": str(cache)},
    )
    lab.start()
    try:
        job_id = lab.submit(JOB.format(go=go, no_forgery=NO_FORGERY), url=users["admin"])
        wait_for(
            lambda: any(
                "<LAVA_WAIT from-sender>" in str(r.get("message"))
                for r in lab.job_log(host_a, job_id, node_a)
            ),
            60,
            f"{node_a} blocked in lava-wait\n{lab.output()}",
        )
        group = lab.job(job_id)["group"]
        with Broker(users["host_urls"][host_a]) as forger:
            forger.publish(
                topology.group_exchange_name(group),
                "",
                MultinodeSendSchema(),
                {"group": group, "node": node_b, "message_id": "from-sender",
                 "data": {"value": "forged"}},
            )  # fmt: skip
        dead = dead_letters(users["admin"], 2, 15)
        reasons = sorted(str(m.headers[topology.REJECT_REASON_HEADER]) for m in dead)
        assert all(
            r.startswith(f"unauthorized: multinode-send as node '{node_b}' sent by broker user "
                         f"'{identity.host_user(host_a)}'")
            for r in reasons
        ), reasons  # fmt: skip
        # both nodes' clients refused it: the waiter was not released by it
        assert not any(
            "<LAVA_WAIT_COMPLETE" in str(r.get("message"))
            for r in lab.job_log(host_a, job_id, node_a)
        )
        released = time.monotonic()
        go.touch()
        job = lab.wait_job_end(job_id, 60)
        assert job["state"] == "complete", job
        lab.wait_last_results(job_id, 30)
        cases = {(sid, case) for sid, _, case in lab.result_rows(job_id)}
        waiter = next(s["id"] for s in job["subjobs"] if s["device"] == node_a)
        assert {(waiter, "got-genuine"), (waiter, "no-forgery")} <= cases
        results = lab.store.results(job_id)  # type: ignore[union-attr]
        by_case = {r["test_case"]: r["result"] for r in results if r["subjob_id"] == waiter}
        assert by_case["got-genuine"] == "pass" and by_case["no-forgery"] == "pass", by_case
        assert time.monotonic() - released < 30
    finally:
        lab.stop()
