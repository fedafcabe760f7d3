"""The coordinator's own broker outage is not a host's death.

Before, with ``--heartbeat-timeout`` shorter than an outage of the broker
(``rabbitmqctl stop_app; sleep 5; start_app`` with a 6 s deadline), the
coordinator took healthy hosts offline when it came back and failed the
running job: it judged heartbeats it had not been able to read, and hosts
that had not been able to send. Now deadlines are held while it is
disconnected, until it has read the ``lava.control`` backlog, and then for
one more heartbeat period (coordinator/deadlines.py).

The outage is the project's cutting proxy (tests/faults.py) between the
coordinator and RabbitMQ, and between host B and RabbitMQ: both lose the
broker, as in a broker restart, while host A (not behind the proxy) goes on
heartbeating into the queue. The shared RabbitMQ is never stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from faults import BrokerProxy
from lab import BEAGLE, PANDAS, SEED, FakeHost, coordinator_process, wait_for
from sqlalchemy import select

from coordinator.rpc import CoordinatorClient
from coordinator.store import Host, Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TIMEOUT = 3.0


def last_heartbeat(store: Store, host: str) -> float:
    with store.session() as s:
        value = s.scalar(select(Host.last_heartbeat).where(Host.name == host))
        return float(value or 0.0)


def test_a_coordinator_outage_longer_than_the_deadline_takes_no_host_offline(
    rabbit_url: str, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'lab.sqlite'}"
    proxy = BrokerProxy()
    coordinator = coordinator_process(
        proxy.url(rabbit_url), db_url, "--heartbeat-timeout", f"{TIMEOUT:g}"
    ).start()
    host_a = FakeHost(rabbit_url, "outage-a")
    host_b = FakeHost(proxy.url(rabbit_url), "outage-b")
    client = CoordinatorClient(rabbit_url)
    store = Store(db_url, run_migrations=False)
    try:
        host_a.register(PANDAS)
        host_b.register([BEAGLE])
        wait_for(lambda: len(client.devices()) == 3, what="devices registered")
        job = client.submit(SEED.read_text(), str(SEED), "tester")["job_id"]
        taken = {d: (host_a if d.startswith("panda") else host_b).take(d)
                 for d in ("panda01", "panda02", "beagle01")}  # fmt: skip
        for device, assignment in taken.items():
            host = host_a if device.startswith("panda") else host_b
            host.report(assignment["subjob_id"], "running")
        wait_for(lambda: client.job(job)["state"] == "running", what="job running")

        proxy.down()
        # the outage lasts two deadlines of host A's heartbeats, queued meanwhile
        # (a fault's length, not a measurement)
        down_until = time.monotonic() + 2 * TIMEOUT
        while time.monotonic() < down_until:
            host_a.heartbeat()
            time.sleep(0.25)
        proxy.up()

        def caught_up_or_failed() -> bool:
            if any("lava.control backlog read" in line for line in coordinator.output):
                return True
            return client.job(job)["state"] != "running"  # the old failure: hosts offline

        wait_for(caught_up_or_failed, 60, "the coordinator back and caught up")
        caught_up = time.time()
        # host B speaks only now, after the coordinator caught up: it is judged by
        # a full period from then, not by its last heartbeat before the outage
        host_a.heartbeat()
        host_b.heartbeat()
        wait_for(
            lambda: last_heartbeat(store, "outage-b") >= caught_up,
            20,
            "host B's first heartbeat after the outage handled",
        )
        shown = client.job(job)
        assert shown["state"] == "running", shown
        assert {d["name"]: d["state"] for d in client.devices()} == {
            "panda01": "running",
            "panda02": "running",
            "beagle01": "running",
        }
        offline = [e for e in shown["events"] if e["state"] == "offline"]
        assert not offline, offline

        for device, assignment in taken.items():
            host = host_a if device.startswith("panda") else host_b
            host.report(assignment["subjob_id"], "complete")
        wait_for(lambda: client.job(job)["state"] == "complete", what="job complete")
    finally:
        store.close()
        client.close()
        host_a.close()
        host_b.close()
        assert coordinator.stop() == 0
        proxy.close()
