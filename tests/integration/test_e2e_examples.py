"""Every example end to end: embedded (``lavamq run``) and as a lab on the real RabbitMQ.

The lab is real processes: ``lavamq coordinator``, ``lavamq barrier`` and two
``lavamq dispatcher`` hosts with local boards, in a vhost of their own, with
the store in PostgreSQL. Jobs go in with ``lavamq submit --wait --json``; the
results are read back with ``lavamq results --junit``. Each run's aggregated
result, its JSON and its JUnit XML (parsed) are checked against what the
example's test definitions must produce.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import (
    LAVAMQ,
    ROOT,
    Device,
    ServiceProcess,
    barrier_process,
    coordinator_process,
    dispatcher_process,
    host_config,
    stop_all,
)

import services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


SYNC = "multinode-sync-"
#: example → role → the test cases (besides the ``lava`` suite) each node of that role reports
EXPECTED: dict[str, dict[str, set[str]]] = {
    "seed-multinode-local.yaml": {
        role: {
            "linux-pwd",
            "linux-uname",
            "linux-date",
            "group-has-three-nodes",
            "knows-own-role",
            SYNC + "smoke-done",
        }
        for role in ("omap4", "omap3")
    },
    # every MultiNode call the test shell makes is a case, named as LAVA names it
    "client-server.yaml": {
        "server": {
            "server-listening",
            "client-reported-pass",
            "multinode-send-server-ready",
            "multinode-wait-client-done",
        },
        "client": {"fetch-page", "multinode-wait-server-ready", "multinode-send-client-done"},
    },
    "variable-clients.yaml": {
        "server": {
            "has-clients",
            "heard-every-client",
            "clients",
            SYNC + "all-done",
            "multinode-wait_all-client-hello",
            "multinode-send-server-ack",
        },
        "client": {
            "server-counted-all",
            SYNC + "all-done",
            "multinode-send-client-hello",
            "multinode-wait-server-ack",
        },
    },
    "peer-to-peer.yaml": {
        "peer": {
            "heard-every-peer",
            "heard-myself",
            SYNC + "timed-barrier",
            "barrier-time",
            "multinode-send-peer-info",
            "multinode-wait_all-peer-info",
        },
    },
    "slave-master.yaml": {
        "master": {
            "got-slave-data",
            "slave-asked-to-boot",
            "slave-is-running",
            SYNC + "ms-done",
            "multinode-wait-lava_ms_slave_data",
            "multinode-send-lava_ms_ready",
            "multinode-wait-lava_ms_boot",
            "multinode-send-lava_ms_boot_done",
            "multinode-wait-slave-running",
        },
        "slave": {"booted-by-master", SYNC + "ms-done", "multinode-send-slave-running"},
    },
}
ROLE_COUNTS = {
    "seed-multinode-local.yaml": {"omap4": 2, "omap3": 1},
    "client-server.yaml": {"server": 1, "client": 1},
    "variable-clients.yaml": {"server": 1, "client": 3},
    "peer-to-peer.yaml": {"peer": 3},
    "slave-master.yaml": {"master": 1, "slave": 1},
}


def check_bundle(example: str, bundle: dict[str, Any], junit_xml: bytes) -> None:
    """The aggregated result of a passing example, and its JUnit XML."""
    head = bundle["job"]
    assert head["status"] == "complete", head
    assert head["passed"] is True and head["first_failure"] is None
    assert head["results_complete"] is True
    counts: dict[str, int] = {}
    total = 0
    for node in bundle["nodes"]:
        counts[node["role"]] = counts.get(node["role"], 0) + 1
        assert node["state"] == "complete", node
        runs = {run["name"]: run["cases"] for run in node["test_runs"]}
        cases = {c["name"]: c for name, cs in runs.items() if name != "lava" for c in cs}
        assert set(cases) == EXPECTED[example][node["role"]], node["node"]
        assert all(c["result"] == "pass" for cs in runs.values() for c in cs), node
        assert {c["name"] for c in runs["lava"]} >= {"job"}
        total += sum(len(cs) for cs in runs.values())
        if example == "client-server.yaml" and node["role"] == "client":
            assert cases["fetch-page"]["units"] == "ms"
            assert cases["fetch-page"]["measurement"] > 0
        if example == "variable-clients.yaml" and node["role"] == "server":
            assert cases["clients"]["measurement"] == 3
            assert cases["clients"]["units"] == "clients"
    assert counts == ROLE_COUNTS[example]
    assert bundle["summary"] == {"pass": total, "fail": 0, "skip": 0, "unknown": 0}
    root = ET.fromstring(junit_xml)
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == (str(total), "0", "0")
    testcases = root.findall("./testsuite/testcase")
    assert len(testcases) == total
    assert not root.findall(".//failure") and not root.findall(".//error")
    suites = {s.get("name") for s in root.findall("testsuite")}
    assert {f"{n['node']}/lava" for n in bundle["nodes"]} <= suites


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_embedded(example: str, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [*LAVAMQ, "run", str(ROOT / "examples" / example), "--json", "--junit", str(junit)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bundle = json.loads(proc.stdout)
    check_bundle(example, bundle, junit.read_bytes())
    # live progress went to stderr: actions per node, and the syncs as they released
    assert "lava-test-shell" in proc.stderr
    if SYNC in json.dumps(bundle):
        assert "lava-sync released" in proc.stderr
    assert "NODE" in proc.stderr and "complete" in proc.stderr


# ----------------------------------------------------------------------------- the lab


HOSTS = {
    "lab-a": [
        ("panda-01", "panda", ["usb-flash"]),
        ("panda-02", "panda", ["usb-flash"]),
        ("local-01", "local", []),
        ("local-02", "local", []),
    ],
    "lab-b": [
        ("beaglexm-01", "beaglexm", ["audio-loopback"]),
        ("local-03", "local", []),
        ("local-04", "local", []),
    ],
}


def host_toml(tmp: Path, host: str, url: str) -> Path:
    """A host of local boards, some emulating the seed's board types."""
    path_env = ":".join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    devices = [
        Device(
            name,
            "local",
            tags,
            {"network": "none", **({"emulates": device_type} if device_type != "local" else {})},
            {"PATH": path_env},
        )
        for name, device_type, tags in HOSTS[host]
    ]
    return host_config(tmp, url, host, devices, heartbeat_interval=2.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One lab shared by the module's tests: its own vhost and PostgreSQL database."""
    if not services.rabbit_available():
        services.missing_service("RabbitMQ (127.0.0.1:5672 with the management plugin)")
    if not services.pg_available():
        services.missing_service("PostgreSQL (127.0.0.1:5432)")
    tmp = tmp_path_factory.mktemp("lab")
    vhost = services.RabbitVhost()
    db_url, db_name = services.new_pg_database()
    url = vhost.url()
    procs: list[ServiceProcess] = []
    try:
        procs.append(coordinator_process(url, db_url, cwd=tmp).start(60))
        procs.append(barrier_process(url, db_url, cwd=tmp).start(60))
        for host in HOSTS:
            config = host_toml(tmp, host, url)
            procs.append(dispatcher_process(config, host, cwd=tmp).start(60))
        names = {name for boards in HOSTS.values() for name, _, _ in boards}
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(
                [*LAVAMQ, "devices", "--broker", url, "--json"],
                capture_output=True, text=True, timeout=60, cwd=tmp,
            )  # fmt: skip
            if out.returncode == 0 and names <= {d["name"] for d in json.loads(out.stdout)}:
                break
            assert time.monotonic() < deadline, out.stdout + out.stderr
            time.sleep(0.2)
        yield {"url": url, "tmp": tmp, "procs": procs}
    finally:
        stop_all(procs)
        vhost.delete()
        services.drop_pg_database(db_name)


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_in_the_lab(example: str, lab: dict[str, Any], tmp_path: Path) -> None:
    url = lab["url"]
    proc = subprocess.run(
        [*LAVAMQ, "submit", str(ROOT / "examples" / example), "--broker", url, "--wait", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    logs = "".join(line for p in lab["procs"] for line in p.output[-40:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    bundle = json.loads(proc.stdout)
    junit = tmp_path / "junit.xml"
    again = subprocess.run(
        [*LAVAMQ, "results", str(bundle["job"]["id"]), "--broker", url, "--junit", str(junit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert f"job {bundle['job']['id']}" in again.stdout and "complete" in again.stdout
    check_bundle(example, bundle, junit.read_bytes())
    # the nodes ran on both hosts' boards where the example needs more than one host
    if example == "seed-multinode-local.yaml":
        assert {n["device"] for n in bundle["nodes"]} == {"panda-01", "panda-02", "beaglexm-01"}


def test_submit_loads_job_files_as_lava_does(lab: dict[str, Any], tmp_path: Path) -> None:
    """What `lavamq validate` and `run` say of a job file, `submit` says too: a duplicate
    key is a warning (the last one wins), a job its devices cannot do is refused before
    anything starts."""
    jobs = ROOT / "tests" / "lava_jobs"

    def submit(job: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LAVAMQ, "submit", str(jobs / job), "--broker", lab["url"], *args],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
        )

    refused = submit("invalid/unsupported-deploys.yaml")
    assert refused.returncode != 0
    assert "actions[0].deploy: to: docker is not supported on device type qemu" in refused.stderr
    assert "actions[2].test: role board (nodes board #0, board #1) is never booted" in (
        refused.stderr
    )
    done = submit("duplicate-key.yaml", "--wait", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "duplicate key 'GREETING': the last one is used (as LAVA does)" in done.stderr
    (node,) = json.loads(done.stdout)["nodes"]
    runs = {r["name"]: {c["name"]: c["result"] for c in r["cases"]} for r in node["test_runs"]}
    assert runs["0_last-wins"] == {"the-last-value": "pass"}
    # deploys without images, on the lab's local boards over RabbitMQ
    deployed = submit("no-url-deploys.yaml", "--wait", "--json")
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert json.loads(deployed.stdout)["job"]["status"] == "complete"
