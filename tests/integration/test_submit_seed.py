"""The issue's scenario on the real RabbitMQ: a coordinator process, a simulated host.

The test plays the dispatcher: it registers devices over ``lava.control``,
takes assignments from the device queues and reports sub-job states.
"""

# ruff: noqa: RUF001 (the multiplication sign is part of the user-facing messages)

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from lab import BEAGLE, LAVAMQ, PANDAS, ROOT, SEED, FakeHost, coordinator_process, wait_for

import services
from broker_config import topology
from coordinator.rpc import CoordinatorClient
from lavamq.cli import main
from schemas.errors import InfrastructureError

pytestmark = pytest.mark.integration


def lavamq(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """The real ``lavamq`` command in a subprocess (used where the process matters)."""
    env = dict(os.environ, LAVAMQ_BROKER_URL=url)
    return subprocess.run(
        [*LAVAMQ, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def cli(*args: str, url: str) -> Result:
    """The same command in-process (saves the interpreter start-up)."""
    return CliRunner().invoke(main, list(args), env={"LAVAMQ_BROKER_URL": url})


def test_no_coordinator_is_a_clear_infrastructure_error(rabbit_url: str) -> None:
    client = CoordinatorClient(rabbit_url, timeout=1)
    with pytest.raises(InfrastructureError) as info:
        client.jobs()
    client.close()
    assert str(info.value) == (
        "no coordinator answered on lava.rpc within 1 s; is `lavamq coordinator` running?"
    )


def test_seed_job_rejected_then_accepted_then_waits_and_starts(
    rabbit_url: str, rabbit_vhost: services.RabbitVhost, tmp_path: Path
) -> None:
    coord = coordinator_process(rabbit_url, f"sqlite:///{tmp_path / 'lab.sqlite'}").start()
    host = FakeHost(rabbit_url, "lab-host-1")
    client = CoordinatorClient(rabbit_url, timeout=10)
    try:
        # --- only one panda: rejected at submission, naming the shortfall
        host.register([PANDAS[0], BEAGLE])
        wait_for(lambda: len(client.devices()) == 2, what="two devices registered")
        proc = lavamq("submit", str(SEED), "--json", url=rabbit_url)
        assert proc.returncode == 1, proc.stderr
        err = json.loads(proc.stdout)["error"]
        assert err["error_type"] == "job"
        assert err["problems"] == [
            "lab: the lab cannot run this job: needs 2 × panda [usb-flash], the lab has 1"
        ]
        plain = cli("submit", str(SEED), url=rabbit_url)
        assert plain.exit_code == 1
        assert "needs 2 × panda [usb-flash], the lab has 1" in plain.stderr
        assert client.jobs() == []

        # --- both pandas: the seed job gets ids and starts
        host.register([*PANDAS, BEAGLE])
        wait_for(lambda: len(client.devices()) == 3, what="three devices registered")
        proc = lavamq("submit", str(SEED), "--json", url=rabbit_url)
        assert proc.returncode == 0, proc.stderr
        first = json.loads(proc.stdout)
        job1 = first["job_id"]
        assert [(s["role"], s["index"]) for s in first["subjobs"]] == [
            ("omap4", 0), ("omap4", 1), ("omap3", 0),
        ]  # fmt: skip
        sub_ids = [s["id"] for s in first["subjobs"]]
        assert len(set(sub_ids)) == 3

        assignments = {d: host.take(d) for d in ("panda01", "panda02", "beagle01")}
        members = {"panda01": "omap4", "panda02": "omap4", "beagle01": "omap3"}
        for device, a in assignments.items():
            assert a["job_id"] == job1 and a["group"] == first["group"]
            assert a["node"] == a["device"] == device
            assert a["members"] == members
            assert a["role"] == members[device]
            assert a["plan"]["role"] == members[device]
            assert a["timeouts"]["multinode"] > 0
            assert a["join_deadline"] > time.time()
        assert sorted(a["subjob_id"] for a in assignments.values()) == sorted(sub_ids)
        # the group's topology exists before any node starts
        group_ex = topology.group_exchange_name(first["group"])
        assert (
            services.mgmt(
                "GET", f"/exchanges/{services.quote(rabbit_vhost.name)}/{services.quote(group_ex)}"
            )["type"]
            == "fanout"
        )

        show = client.job(job1)
        assert show["state"] == "scheduled"
        for a in assignments.values():
            host.report(a["subjob_id"], "accepted")
        wait_for(lambda: client.job(job1)["state"] == "running", what="job 1 running")

        # --- both pandas busy: a second seed job waits with a reason
        second = client.submit(SEED.read_text(), str(SEED), "tester")
        job2 = second["job_id"]
        reason = wait_for(lambda: client.job(job2).get("waiting_reason"), what="a waiting reason")
        assert reason == (
            f"waiting: needs 1 × beaglexm [audio-loopback], 1 running job {job1}; "
            f"needs 2 × panda [usb-flash], 2 running job {job1}"
        )
        shown = cli("job", "show", str(job2), url=rabbit_url)
        assert shown.exit_code == 0 and reason in shown.stdout
        listing = json.loads(cli("jobs", "--json", url=rabbit_url).stdout)
        assert [(j["id"], j["state"]) for j in listing] == [(job2, "queued"), (job1, "running")]
        devs = json.loads(cli("devices", "--json", url=rabbit_url).stdout)
        assert {(d["name"], d["state"], d["current_job"]) for d in devs} == {
            ("panda01", "running", job1),
            ("panda02", "running", job1),
            ("beagle01", "running", job1),
        }
        assert host.queue_depth("panda01") == 0  # nothing held for job 2

        # --- job 1 ends: its devices free, job 2 starts on them
        for a in assignments.values():
            host.report(a["subjob_id"], "complete")
        wait_for(lambda: client.job(job1)["state"] == "complete", what="job 1 complete")
        again = {d: host.take(d) for d in ("panda01", "panda02", "beagle01")}
        assert {a["job_id"] for a in again.values()} == {job2}
        assert client.job(job2)["state"] == "scheduled"
        assert client.job(job2)["waiting_reason"] is None

        # --- cancel job 2 before its nodes join: devices are freed at once
        canceled = cli("cancel", str(job2), "--json", url=rabbit_url)
        assert canceled.exit_code == 0, canceled.output
        assert json.loads(canceled.stdout)["state"] == "canceled"
        assert {d["state"] for d in client.devices()} == {"idle"}
        missing = cli("job", "show", "999", url=rabbit_url)
        assert missing.exit_code == 1 and "error (job): no job 999" in missing.stderr
    finally:
        client.close()
        host.close()
        code = coord.stop()
    assert code == 0, coord.output
    assert "lavamq coordinator stopped\n" in coord.output
