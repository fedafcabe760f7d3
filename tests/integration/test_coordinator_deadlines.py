"""Join deadline and host heartbeat deadline of a real coordinator process on RabbitMQ."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kombu import Connection
from lab import BEAGLE, PANDAS, SEED, FakeHost, coordinator_process, wait_for

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


@contextmanager
def seed_job_running(
    rabbit_url: str, tmp_path: Path, host_name: str, *coordinator_args: str
) -> Iterator[tuple[FakeHost, CoordinatorClient, int]]:
    """A coordinator process (with ``coordinator_args``), a fake host with the seed's
    three boards registered, and the seed job submitted: (host, client, job id)."""
    coord = coordinator_process(
        rabbit_url, f"sqlite:///{tmp_path / 'lab.sqlite'}", *coordinator_args
    ).start()
    host = FakeHost(rabbit_url, host_name)
    client = CoordinatorClient(rabbit_url)
    try:
        host.register([*PANDAS, BEAGLE])
        wait_for(lambda: len(client.devices()) == 3, what="devices registered")
        job = client.submit(SEED.read_text(), str(SEED), "tester")["job_id"]
        yield host, client, job
    finally:
        client.close()
        host.close()
        assert coord.stop() == 0


def test_join_deadline_cancels_group_names_late_nodes_and_frees_devices(
    rabbit_url: str, tmp_path: Path
) -> None:
    with seed_job_running(rabbit_url, tmp_path, "lab-host-1", "--join-timeout", "2") as (
        host,
        client,
        job,
    ):
        a = host.take("panda01")
        host.report(a["subjob_id"], "accepted")
        # panda02 and beagle01 never join
        shown = wait_for(
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
        wait_for(lambda: {d["state"] for d in client.devices()} == {"idle"}, what="devices idle")
        assert client.job(job)["group_state"] == "ended"


def test_silent_host_goes_offline_and_its_running_group_fails_naming_it(
    rabbit_url: str, tmp_path: Path
) -> None:
    with seed_job_running(rabbit_url, tmp_path, "lab-host-7", "--heartbeat-timeout", "2") as (
        host,
        client,
        job,
    ):
        taken = [host.take(d) for d in ("panda01", "panda02", "beagle01")]
        for a in taken:
            host.report(a["subjob_id"], "running")
        wait_for(lambda: client.job(job)["state"] == "running", what="job running")
        # the host falls silent
        shown = wait_for(
            lambda: (j := client.job(job))["state"] == "incomplete" and j,
            timeout=15,
            what="host declared lost",
        )
        assert shown["failure_type"] == "infrastructure"
        assert "host lab-host-7 stopped heartbeating" in shown["failure_cause"]
        assert {d["state"] for d in client.devices()} == {"offline"}
        # a heartbeat brings the devices back
        host.heartbeat()
        wait_for(lambda: {d["state"] for d in client.devices()} == {"idle"}, what="back")
