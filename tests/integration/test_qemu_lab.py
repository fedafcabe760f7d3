"""The QEMU examples through the whole lab on the real RabbitMQ.

Real processes: ``lavamq coordinator``, ``lavamq barrier`` and two
``lavamq dispatcher`` hosts whose devices are QEMU VMs (the project's test
image). The example job files are submitted unchanged:
the example files as they are, named by their absolute path, so that their
relative paths (the test image in images/, this checkout as the test
definitions' repository) resolve against them.
Results are the coordinator's own: ``lavamq wait JOB --json --junit`` (the
bundle it aggregated from ``lava.results``), checked as JSON and as JUnit XML.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import (
    LAVAMQ,
    ROOT,
    Device,
    barrier_process,
    coordinator_process,
    dispatcher_process,
    require_qemu,
    stop_all,
    wait_for,
)
from lab import host_config as lab_host_config

from coordinator.results import bundle_table
from coordinator.rpc import CoordinatorClient
from device_agent.devices.qemu import qemu_pids

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def host_config(tmp_path: Path, url: str, host: str, devices: list[str]) -> Path:
    settings = {
        "runtime_dir": str(tmp_path / "rt" / host),
        # both hosts run on this machine: one shared place for group switches
        "vmnet_dir": str(tmp_path / "vmnet"),
    }
    return lab_host_config(
        tmp_path, url, host, [Device(name, "qemu", (), settings) for name in devices]
    )


class QemuLab:
    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        db = f"sqlite:///{tmp_path / 'lab.sqlite'}"
        self.services = [
            coordinator_process(url, db),
            barrier_process(url, f"sqlite:///{tmp_path / 'barrier.sqlite'}"),
        ]
        for host, devices in (("host-a", ["qemu-a1", "qemu-a2"]), ("host-b", ["qemu-b1"])):
            config = host_config(tmp_path, url, host, devices)
            self.services.append(dispatcher_process(config, host))
        for service in self.services:
            service.start()
        self.client = CoordinatorClient(url, timeout=20)
        wait_for(lambda: len(self.client.devices()) == 3, 30, "three QEMU devices registered")

    def submit(self, example: str) -> int:
        job = ROOT / "examples" / example / "job.yaml"
        reply = self.client.submit(job.read_text(), str(job), "lab-test")
        return int(reply["job_id"])

    def results(self, job_id: int, timeout: float) -> tuple[dict[str, Any], ET.Element]:
        """The coordinator's result bundle once the job ended (``lavamq wait --json
        --junit``), and its JUnit XML parsed; both checked against each other."""
        junit = self.tmp_path / f"junit-{job_id}.xml"
        proc = subprocess.run(
            [*LAVAMQ, "wait", str(job_id),
             "--broker", self.url, "--json", "--junit", str(junit), "--quiet",
             "--timeout", str(timeout)],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60,
        )  # fmt: skip
        assert proc.stdout, proc.stderr + self.logs()[-5000:]
        bundle: dict[str, Any] = json.loads(proc.stdout)
        assert bundle["job"]["results_complete"] is True, bundle["job"]
        # exit 0 only when every test passed
        assert (proc.returncode == 0) == bundle["job"]["passed"], proc.stderr
        root = ET.fromstring(junit.read_bytes())
        total = sum(bundle["summary"].values())
        assert root.get("tests") == str(total) == str(len(root.findall("./testsuite/testcase")))
        assert root.get("failures") == str(bundle["summary"]["fail"])
        return bundle, root

    def logs(self) -> str:
        return "".join("".join(s.output) for s in self.services)

    def close(self) -> None:
        self.client.close()
        stop_all(self.services)


@pytest.fixture
def qemu_lab(rabbit_url: str, tmp_path: Path) -> Iterator[QemuLab]:
    require_qemu("QEMU lab test")
    lab = QemuLab(rabbit_url, tmp_path)
    try:
        yield lab
    finally:
        lab.close()
        left = qemu_pids(str(tmp_path))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"QEMU processes survived the lab: {left}"


def cases_of(bundle: dict[str, Any], role: str) -> dict[str, str]:
    out = {}
    for node in bundle["nodes"]:
        if node["role"] == role:
            for run in node["test_runs"]:
                for case in run["cases"]:
                    out[case["name"]] = case["result"]
    return out


def test_qemu_examples_through_the_lab(qemu_lab: QemuLab) -> None:
    # --- 2 nodes: server and client on two hosts, over their group network
    job_id = qemu_lab.submit("qemu-client-server")
    bundle, junit = qemu_lab.results(job_id, 240)
    table = bundle_table(bundle)
    assert bundle["job"]["id"] == job_id
    assert bundle["job"]["status"] == "complete", table + qemu_lab.logs()[-5000:]
    assert bundle["job"]["passed"], table
    server, client = cases_of(bundle, "server"), cases_of(bundle, "client")
    for case in ("server-has-address", "server-listening", "client-reported-pass"):
        assert server.get(case) == "pass", (case, table)
    for case in ("client-got-address", "client-ping-server", "client-http-get"):
        assert client.get(case) == "pass", (case, table)
    assert client.get("client-page-content") == "pass", table
    assert bundle["summary"]["fail"] == 0
    # each node's sub-job result and test runs, also in the JUnit export
    assert {n["state"] for n in bundle["nodes"]} == {"complete"}
    suites = {s.get("name") for s in junit.findall("testsuite")}
    assert {f"{n['node']}/lava" for n in bundle["nodes"]} <= suites

    # --- 3 nodes: lava-network broadcast/collect/query/hosts and lava-sync
    job_id = qemu_lab.submit("qemu-network")
    bundle, junit = qemu_lab.results(job_id, 300)
    table = bundle_table(bundle)
    assert bundle["job"]["status"] == "complete", table + qemu_lab.logs()[-5000:]
    assert len(bundle["nodes"]) == 3
    for node in bundle["nodes"]:
        cases = {c["name"]: c["result"] for run in node["test_runs"] for c in run["cases"]}
        for case in (
            "network-broadcast",
            "network-collect",
            "network-hosts",
            "hosts-has-every-node",
            "ping-every-peer",
            "mac-of-self",
        ):
            assert cases.get(case) == "pass", (node["node"], case, table)
    assert bundle["job"]["passed"], table
    assert junit.get("failures") == "0"
