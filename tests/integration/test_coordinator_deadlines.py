"""Join deadline and host heartbeat deadline of a real coordinator process on RabbitMQ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kombu import Connection
from test_submit_seed import BEAGLE, PANDAS, SEED, CoordinatorProcess, FakeHost, wait_until

from broker_config import topology
from coordinator.rpc import CoordinatorClient

pytestmark = pytest.mark.integration


def group_messages(url: str, group: str, node: str) -> list[dict[str, object]]:
    out = []
    with Connection(url) as conn:
        q = topology.group_queue(group, node)(conn.default_channel)
        while (msg := q.get(no_ack=True)) is not None:
            out.append({"type": msg.properties.get("type"), **json.loads(msg.body)})
    return out


def test_join_deadline_cancels_group_names_late_nodes_and_frees_devices(
    rabbit_url: str, tmp_path: Path
) -> None:
    coord = CoordinatorProcess(
        rabbit_url, f"sqlite:///{tmp_path / 'lab.sqlite'}", "--join-timeout", "2"
    )
    coord.start()
    host = FakeHost(rabbit_url, "lab-host-1")
    client = CoordinatorClient(rabbit_url)
    try:
        host.register([*PANDAS, BEAGLE])
        wait_until(lambda: len(client.devices()) == 3, what="devices registered")
        job = client.submit(SEED.read_text(), str(SEED), "tester")["job_id"]
        a = host.take("panda01")
        host.report(a["subjob_id"], "accepted")
        # panda02 and beagle01 never join
        shown = wait_until(
            lambda: (j := client.job(job))["state"] == "canceled" and j, what="join deadline"
        )
        assert shown["failure_type"] == "infrastructure"
        assert shown["failure_cause"] == (
            "sub-jobs not accepted by their dispatchers within the join deadline (2 s): "
            "beagle01 (omap3), panda02 (omap4)"
        )
        states = {d["name"]: d["state"] for d in client.devices()}
        assert states == {"panda01": "running", "panda02": "idle", "beagle01": "idle"}
        # the node that joined is told the group failed, with the cause
        failed = group_messages(rabbit_url, a["group"], "panda01")
        assert [m["type"] for m in failed] == ["group-failed"]
        assert "join deadline" in str(failed[0]["reason"])
        # its dispatcher stops and reports: the group ends, the device is free
        host.report(a["subjob_id"], "canceled", message="group failed")
        wait_until(lambda: {d["state"] for d in client.devices()} == {"idle"}, what="devices idle")
        assert client.job(job)["group_state"] == "ended"
    finally:
        client.close()
        host.close()
        assert coord.stop() == 0


def test_silent_host_goes_offline_and_its_running_group_fails_naming_it(
    rabbit_url: str, tmp_path: Path
) -> None:
    coord = CoordinatorProcess(
        rabbit_url, f"sqlite:///{tmp_path / 'lab.sqlite'}", "--heartbeat-timeout", "2"
    )
    coord.start()
    host = FakeHost(rabbit_url, "lab-host-7")
    client = CoordinatorClient(rabbit_url)
    try:
        host.register([*PANDAS, BEAGLE])
        wait_until(lambda: len(client.devices()) == 3, what="devices registered")
        job = client.submit(SEED.read_text(), str(SEED), "tester")["job_id"]
        taken = [host.take(d) for d in ("panda01", "panda02", "beagle01")]
        for a in taken:
            host.report(a["subjob_id"], "running")
        wait_until(lambda: client.job(job)["state"] == "running", what="job running")
        # the host falls silent
        shown = wait_until(
            lambda: (j := client.job(job))["state"] == "incomplete" and j,
            timeout=15,
            what="host declared lost",
        )
        assert shown["failure_type"] == "infrastructure"
        assert "host lab-host-7 stopped heartbeating" in shown["failure_cause"]
        assert {d["state"] for d in client.devices()} == {"offline"}
        # a heartbeat brings the devices back
        host.heartbeat()
        wait_until(lambda: {d["state"] for d in client.devices()} == {"idle"}, what="back")
    finally:
        client.close()
        host.close()
        assert coord.stop() == 0
