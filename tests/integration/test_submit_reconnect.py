"""Clients ride out broker outages, and a submit without an answer is never doubled.

``lavamq submit --wait`` runs as a real process whose broker connections go
through ``tests/faults.py``'s ``BrokerProxy``; the proxy cuts them (what a
broker restart does to a client) while the job runs. Before: the client died
with a ConnectionResetError traceback. Now it reconnects and goes on waiting.

Each submit carries an idempotency key. Twenty clients submit while the
coordinator is stopped (SIGSTOP: it has taken the requests but answers none in
time); every client times out saying the outcome is unknown and how to find
out, and some of those submits did make jobs. Before: "no coordinator
answered", and a retry made a second job. Now the retries with the same keys
get the same jobs: 20 keys, 20 jobs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from faults import BrokerProxy, record_reliability
from lab import BEAGLE, LAVAMQ, PANDAS, ROOT, SEED, FakeHost, coordinator_process, wait_for

from broker_config import topology
from broker_config.broker import Broker
from coordinator.rpc import CoordinatorClient
from schemas.messages import console

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DEVICES = ("panda01", "panda02", "beagle01")


def lavamq(*args: str, broker: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real ``lavamq`` command in its own process."""
    return subprocess.run(
        [*LAVAMQ, *args, "--broker", broker],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "LAVAMQ_BROKER_URL"},
    )  # fmt: skip


def last_result(broker: Broker, job: int, subjob: int, device: str) -> None:
    """The ``lava/job`` result a dispatcher sends last for a sub-job."""
    broker.publish(
        topology.RESULTS_EXCHANGE_NAME,
        f"{job}.{device}",
        console.TestResultSchema(),
        {"id": f"job-{subjob}", "job": str(job), "subjob": str(subjob), "node": device,
         "suite": "lava", "case": "job", "result": "pass", "time": "2026-12-04T00:00:00"},
    )  # fmt: skip


def test_submit_wait_rides_out_broker_outages(rabbit_url: str, tmp_path: Path) -> None:
    """Failure covered: every connection of ``lavamq submit --wait`` cut twice while
    it waits (a broker restart); before, a ConnectionResetError traceback and exit 2."""
    started = time.monotonic()
    coord = coordinator_process(rabbit_url, f"sqlite:///{tmp_path / 'lab.sqlite'}").start()
    host = FakeHost(rabbit_url, "reconnect-host")
    with BrokerProxy() as proxy, Broker(rabbit_url) as results:
        try:
            host.register([*PANDAS, BEAGLE])
            with CoordinatorClient(rabbit_url) as client:
                wait_for(lambda: len(client.devices()) == 3, what="three devices")
            command = ["submit", str(SEED), "--wait", "--timeout", "3"]
            proc = subprocess.Popen(
                [*LAVAMQ, *command, "--broker", proxy.url(rabbit_url)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            out: list[str] = []
            reader = threading.Thread(target=lambda: out.extend(proc.stdout or ()), daemon=True)
            reader.start()
            taken = {d: host.take(d) for d in DEVICES}
            job = taken["panda01"]["job_id"]
            for a in taken.values():
                host.report(a["subjob_id"], "accepted")
                host.report(a["subjob_id"], "running")
            wait_for(lambda: any("submitted" in line for line in out), 30, "the receipt")
            cuts = []
            for _ in range(2):
                cuts.append(proxy.outage(refuse_attempts=2))
                # back to waiting: the client has connected through the proxy again
                wait_for(lambda: proxy.connections >= 1, 30, "the client reconnected")
            for device, a in taken.items():
                last_result(results, job, a["subjob_id"], device)
                host.report(a["subjob_id"], "complete")
            code = proc.wait(90)
            reader.join(10)
            err = (proc.stderr.read() if proc.stderr else "").strip()
        finally:
            host.close()
            coord.stop()
    text = "".join(out)
    assert "Traceback" not in err and "ConnectionResetError" not in err, err
    assert code == 0, f"exit {code}\n{text}\n{err}"
    assert f"job {job} submitted" in text
    assert "lost contact with the lab" in err and f"reconnected; waiting for job {job}" in err
    assert proxy.refused >= 4 and all(c >= 1 for c in cuts), (cuts, proxy.refused)
    record_reliability(
        {
            "test": "submit --wait through broker outages",
            "fault": f"2 broker outages via proxy ({sum(cuts)} client connections cut, "
            f"{proxy.refused} reconnects refused) while `lavamq submit --wait` waits",
            "faults": 2,
            "sent": "1 submit, 3 sub-jobs",
            "deliveries_expected": 1,
            "lost": 0 if code == 0 else 1,
            "duplicated": 0,
            "duplicates_dropped": "-",
            "seconds": round(time.monotonic() - started, 1),
        }
    )


CLIENTS = 20


@pytest.mark.slow
def test_submits_that_timed_out_retried_with_their_keys_make_no_second_job(
    rabbit_url: str, tmp_path: Path
) -> None:
    """Failure covered: 20 parallel submits, the coordinator too slow to answer any in
    time: each client's timeout says the outcome is unknown (before: that nobody
    answered, though jobs were made), and the retries with the same keys make no
    second job (before: no keys, so every retry made one)."""
    started = time.monotonic()
    coord = coordinator_process(rabbit_url, f"sqlite:///{tmp_path / 'lab.sqlite'}").start()
    host = FakeHost(rabbit_url, "keys-host")
    keys = [f"k{i}-{uuid.uuid4().hex[:8]}" for i in range(CLIENTS)]
    assert coord.proc is not None
    try:
        host.register([*PANDAS, BEAGLE])
        with CoordinatorClient(rabbit_url) as client:
            wait_for(lambda: len(client.devices()) == 3, what="three devices")
        coord.proc.send_signal(signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(CLIENTS) as pool:
                first = list(
                    pool.map(
                        lambda k: lavamq("submit", str(SEED), "--key", k, "--timeout", "4",
                                         broker=rabbit_url),
                        keys,
                    )
                )  # fmt: skip
        finally:
            coord.proc.send_signal(signal.SIGCONT)
        for key, proc in zip(keys, first, strict=True):
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "Traceback" not in proc.stderr
            assert proc.stderr.startswith("error (infrastructure): outcome unknown: "), proc.stderr
            assert f"`lavamq jobs --key {key}` tells" in proc.stderr
            assert "failed" not in proc.stderr
        with CoordinatorClient(rabbit_url, timeout=60) as client:
            # answered only once every request taken before it was handled
            made = {j["key"]: j["id"] for j in client.jobs(limit=1000)}
        assert made, "no timed-out submit made a job: the coordinator was not slow enough"
        assert set(made) <= set(keys)
        # ``lavamq jobs --key`` tells which did
        for key in [next(iter(made)), *[k for k in keys if k not in made][:1]]:
            told = lavamq("jobs", "--key", key, "--json", broker=rabbit_url)
            assert told.returncode == 0, told.stderr
            expected = [made[key]] if key in made else []
            assert [j["id"] for j in json.loads(told.stdout)] == expected
        with ThreadPoolExecutor(CLIENTS) as pool:
            again = list(
                pool.map(
                    lambda k: lavamq("submit", str(SEED), "--key", k, "--timeout", "60",
                                     "--json", broker=rabbit_url),
                    keys,
                )
            )  # fmt: skip
        receipts: dict[str, dict[str, Any]] = {}
        for key, proc in zip(keys, again, strict=True):
            assert proc.returncode == 0, proc.stdout + proc.stderr
            receipts[key] = json.loads(proc.stdout)
        for key, job in made.items():
            assert receipts[key]["job_id"] == job and receipts[key]["again"] is True
        with CoordinatorClient(rabbit_url, timeout=30) as client:
            stored = client.jobs(limit=1000)
    finally:
        host.close()
        coord.stop()
    assert len(stored) == CLIENTS, [(j["id"], j["key"]) for j in stored]
    assert sorted(j["key"] for j in stored) == sorted(keys)
    assert len({r["job_id"] for r in receipts.values()}) == CLIENTS
    record_reliability(
        {
            "test": "submits retried with their keys",
            "fault": f"coordinator stopped (SIGSTOP) while {CLIENTS} clients submit with a 4 s "
            f"timeout: all {CLIENTS} time out, {len(made)} of those submits made a job; "
            f"all {CLIENTS} retried with the same keys",
            "faults": 1,
            "sent": f"{2 * CLIENTS} submits ({CLIENTS} keys)",
            "deliveries_expected": CLIENTS,
            "lost": CLIENTS - len({j["key"] for j in stored}),
            "duplicated": len(stored) - len({j["key"] for j in stored}),
            "duplicates_dropped": len(made),
            "seconds": round(time.monotonic() - started, 1),
        }
    )
