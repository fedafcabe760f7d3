"""Two ``lavamq dispatcher`` processes (two hosts, ``local`` boards) on the real RabbitMQ.

The test plays the coordinator: it creates the MultiNode group, runs the
barrier service and a log store in threads, publishes the sub-job
assignments to ``lava.device.<device>`` and collects ``subjob-state`` and
``test-result`` messages.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from barrier_lab import BarrierLab
from lab import (
    LAVAMQ,
    ROOT,
    Device,
    GitRepo,
    broker_ports,
    control_consumer,
    dispatcher_process,
    wait_for,
)
from lab import host_config as lab_host_config

from broker_config import topology
from broker_config.broker import Broker
from broker_config.consumer import Delivery, QueueConsumer, run_in_thread
from coordinator.groups import create_group
from dispatcher.joblog import read_records
from dispatcher.logstore import LogStore, stored_batches
from schemas.messages.console import TestResultSchema as ResultBodySchema
from schemas.messages.jobs import (
    SubJobAssignmentSchema,
)

pytestmark = pytest.mark.integration

STEPS = [
    "ROLE=$(lava-role)",
    'echo "I am $(lava-self) with role $ROLE"',
    'if [ "$ROLE" = server ]; then lava-send server-ready port=4242 greeting=hello; fi',
    'if [ "$ROLE" = client ]; then lava-wait server-ready'
    " && lava-test-case got-ready --result pass; fi",
    'if [ "$ROLE" = client ]; then grep -q 4242 "$LAVA_MULTI_NODE_CACHE"'
    " && lava-test-case cache-has-port --result pass; fi",
    "lava-test-case role-$ROLE --result pass",
    "lava-sync done",
]
TESTDEF = yaml.safe_dump(
    {
        "metadata": {
            "name": "pingpong",
            "format": "Lava-Test Test Definition 1.0",
            "description": "two boards talk through lava-send / lava-wait",
        },
        "run": {"steps": STEPS},
    }
)


def host_config(tmp_path: Path, rabbit_url: str, host: str, boards: list[str]) -> Path:
    """A host of local boards tagged ``shell``, without networking."""
    devices = [Device(b, "local", ["shell"], {"network": "none"}) for b in boards]
    return lab_host_config(tmp_path, rabbit_url, host, devices)


def git_repo(tmp_path: Path) -> tuple[str, str]:
    """A local git repository with the test definition; returns (url, good revision)."""
    repo = GitRepo(tmp_path / "tests-repo")
    good = repo.commit("pingpong", {"multinode/pingpong.yaml": TESTDEF})
    # a later commit breaks the definition: the job pins the good revision
    repo.commit("broken", {"multinode/pingpong.yaml": "run: [not, a, mapping]\n"})
    return repo.url, good


def inline_test(name: str, steps: list[str]) -> dict[str, Any]:
    """A normalised inline test definition running ``steps``."""
    return {
        "from": "inline",
        "name": name,
        "path": None,
        "revision": None,
        "parameters": {},
        "repository": {"metadata": {"name": name}, "run": {"steps": steps}},
    }


#: a test that passes at once
QUICK = inline_test("quick", ["lava-test-case q --result pass"])
#: a test that marks it started (in the sub-job's work dir) and runs on for two minutes
# in the board's HOME, its work dir: what the host sees of it (its /tmp and its overlay at
# /lava-<id> may be its own)
SLOW = inline_test("slow", ['touch "$HOME/started"', "sleep 120"])


def image(tmp_path: Path) -> tuple[str, str]:
    src = tmp_path / "rootfs.img.gz"
    src.write_bytes(gzip.compress(b"lavamq test root filesystem\n" * 1000))
    return src.as_uri(), hashlib.sha256(src.read_bytes()).hexdigest()


def assignment(
    *,
    job: int,
    subjob: int,
    group: str,
    node: str,
    role: str,
    members: dict[str, str],
    image_url: str,
    sha256: str,
    test: dict[str, Any],
) -> dict[str, Any]:
    return {
        "job_id": job,
        "subjob_id": subjob,
        "group": group,
        "job_name": f"dispatcher-lab-{job}",
        "node": node,
        "role": role,
        "device": node,
        "device_type": "local",
        "members": members,
        "timeouts": {"job": 120.0, "action": 60.0, "multinode": 30.0, "connection": None},
        "join_deadline": time.time() + 600,
        "plan": {
            "actions": [
                {
                    "kind": "deploy",
                    "name": "deploy",
                    "timeout": 30.0,
                    "roles": [],
                    "index": 0,
                    "parameters": {
                        "images": {
                            "rootfs": {"url": image_url, "compression": "gz", "sha256sum": sha256}
                        }
                    },
                },
                {
                    "kind": "boot",
                    "name": "boot",
                    "timeout": 30.0,
                    "roles": [],
                    "index": 1,
                    "parameters": {},
                },
                {
                    "kind": "test",
                    "name": "test",
                    "timeout": 60.0,
                    "roles": [],
                    "index": 2,
                    "parameters": {"definitions": [test]},
                },
            ]
        },
    }


class Lab(BarrierLab):
    """What the coordinator would run: barrier, log store, control and results consumers."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        super().__init__(url, f"sqlite:///{tmp_path / 'barrier.sqlite'}")
        self.broker.declare(topology.logs_store_queue())
        self.store = LogStore(url, tmp_path / "logs")
        self.store.start()
        self.states: list[dict[str, Any]] = []
        self.hosts: list[str] = []
        self.results: list[dict[str, Any]] = []

        def on_control(d: Delivery) -> None:
            if d.message_type == "subjob-state":
                self.states.append(d.body)
            elif d.message_type == "host-register":
                self.hosts.append(d.body["host"])

        self.control = control_consumer(url, on_control, "test-control")
        self.results_consumer = QueueConsumer(
            url,
            [topology.results_queue()],
            ResultBodySchema(),
            handler=lambda d: self.results.append(d.body),
            prefetch=50,
            poll_interval=0.1,
        )
        run_in_thread(self.results_consumer, "test-results")

    def assign(self, a: dict[str, Any]) -> None:
        self.broker.publish(
            topology.DEVICE_EXCHANGE_NAME,
            topology.device_routing_key(a["device"]),
            SubJobAssignmentSchema(),
            a,
        )

    def states_of(self, subjob: int) -> list[str]:
        return [s["state"] for s in list(self.states) if s["subjob_id"] == subjob]

    def final(self, subjob: int) -> dict[str, Any] | None:
        for s in list(self.states):
            if s["subjob_id"] == subjob and s["state"] in ("complete", "incomplete", "canceled"):
                return s
        return None

    def close(self) -> None:
        self.control.stop()
        self.results_consumer.stop()
        self.store.stop()
        super().close()


def kill_leftover_boards(root: Path) -> None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(root)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
def lab(rabbit_url: str, tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(rabbit_url, tmp_path)
    try:
        yield lab
    finally:
        lab.close()
        kill_leftover_boards(tmp_path)


def test_two_hosts_run_a_multinode_group(lab: Lab, rabbit_url: str, tmp_path: Path) -> None:
    repo, revision = git_repo(tmp_path)
    img, sha = image(tmp_path)
    host_a = dispatcher_process(
        host_config(tmp_path, rabbit_url, "host-a", ["board-a1", "board-a2"]),
        "host-a",
        verbose=True,
    )
    host_b = dispatcher_process(
        host_config(tmp_path, rabbit_url, "host-b", ["board-b1"]), "host-b", verbose=True
    )
    host_a.start()
    host_b.start()
    try:
        wait_for(lambda: {"host-a", "host-b"} <= set(lab.hosts), 20, "host registration")
        members = {"board-a1": "server", "board-b1": "client"}
        create_group(lab.broker, "g101", members, timeout=60.0)
        test = {
            "from": "git",
            "repository": repo,
            "path": "multinode/pingpong.yaml",
            "name": "pingpong",
            "revision": revision,
            "parameters": {},
        }
        for subjob, node in ((1011, "board-a1"), (1012, "board-b1")):
            lab.assign(
                assignment(
                    job=101,
                    subjob=subjob,
                    group="g101",
                    node=node,
                    role=members[node],
                    members=members,
                    image_url=img,
                    sha256=sha,
                    test=test,
                )
            )
        # a single-node job whose image checksum is wrong, on the other board of host-a
        create_group(lab.broker, "g102", {"board-a2": "solo"}, timeout=60.0)
        lab.assign(
            assignment(
                job=102,
                subjob=1021,
                group="g102",
                node="board-a2",
                role="solo",
                members={"board-a2": "solo"},
                image_url=img,
                sha256="0" * 64,
                test=test,
            )
        )

        finals = wait_for(
            lambda: (
                all(lab.final(s) for s in (1011, 1012, 1021))
                and [lab.final(s) for s in (1011, 1012, 1021)]
            ),
            90,
            "three sub-jobs finished",
        )
        ok_a, ok_b, bad = finals
        assert ok_a["state"] == "complete", ok_a
        assert ok_b["state"] == "complete", ok_b
        assert lab.states_of(1011)[:2] == ["accepted", "running"]
        assert bad["state"] == "incomplete" and bad["error_type"] == "job"
        assert f"expected {'0' * 64}" in bad["message"] and f"actual {sha}" in bad["message"]

        # results reached lava.results
        def cases(node: str) -> dict[tuple[str, str], str]:
            return {(r["suite"], r["case"]): r["result"] for r in lab.results if r["node"] == node}

        wait_for(
            lambda: ("lava", "job") in cases("board-b1") and ("lava", "job") in cases("board-a1"),
            20,
            "job results",
        )
        client, server = cases("board-b1"), cases("board-a1")
        assert client[("0_pingpong", "got-ready")] == "pass"
        assert client[("0_pingpong", "cache-has-port")] == "pass"
        assert client[("0_pingpong", "role-client")] == "pass"
        assert server[("0_pingpong", "role-server")] == "pass"
        assert server[("lava", "0_pingpong")] == "pass" == client[("lava", "0_pingpong")]
        assert cases("board-a2")[("lava", "job")] == "fail"

        # the full job log (console included) reached the store, identical to the host's copy
        def stored(node: str) -> list[dict[str, Any]]:
            return [b for b in stored_batches(tmp_path / "logs", "101") if b["node"] == node]

        def stored_final(node: str) -> bool:
            return any(b["final"] for b in stored(node))

        for host, node, subjob in (("host-a", "board-a1", 1011), ("host-b", "board-b1", 1012)):
            wait_for(functools.partial(stored_final, node), 20, f"{node} final")
            batches = stored(node)
            assert [b["seq"] for b in batches] == list(range(len(batches)))
            from_store = [(r["level"], r["message"]) for b in batches for r in b["records"]]
            local = tmp_path / host / "jobs" / f"101.{node}.{subjob}" / "job.log"
            from_host = [(r["level"], r["message"]) for r in read_records(local)]
            assert from_store == from_host
            targets = [m for level, m in from_store if level == "target"]
            role = members[node]
            assert any(f"I am {node} with role {role}" in m and "echo" not in m for m in targets)
            assert any("<LAVA_SIGNAL_ENDRUN 0_pingpong" in m for m in targets)

        # lavamq logs JOB prints the stored log
        out = subprocess.run(
            [
                *LAVAMQ,
                "logs",
                "101",
                "--dir",
                str(tmp_path / "logs"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert "[board-b1]" in out.stdout and "I am board-b1 with role client" in out.stdout
    finally:
        code_a, code_b = host_a.stop(60), host_b.stop(60)
    assert code_a == 0 and code_b == 0, "".join(host_a.output + host_b.output)
    assert "lavamq dispatcher host-a stopped" in "".join(host_a.output)


def test_sigkilled_dispatcher_does_not_run_an_accepted_subjob_twice(
    lab: Lab, rabbit_url: str, tmp_path: Path
) -> None:
    img, sha = image(tmp_path)
    config = host_config(tmp_path, rabbit_url, "host-c", ["board-c1"])
    host = dispatcher_process(config, "host-c", verbose=True).start()
    members = {"board-c1": "solo"}
    create_group(lab.broker, "g201", members, timeout=60.0)
    first = assignment(
        job=201,
        subjob=2011,
        group="g201",
        node="board-c1",
        role="solo",
        members=members,
        image_url=img,
        sha256=sha,
        test=SLOW,
    )
    try:
        lab.assign(first)
        wait_for(lambda: "running" in lab.states_of(2011), 30, "sub-job running")
        wait_for(lambda: list(tmp_path.glob("host-c/**/started")), 30, "test step running")
        host.kill()
        # the assignment was acked when accepted: nothing is waiting to be redelivered
        with Broker(rabbit_url) as b:
            _, ready, _ = b.channel().queue_declare(
                queue=topology.device_queue_name("board-c1"), passive=True
            )
        assert ready == 0
        kill_leftover_boards(tmp_path / "host-c")

        host = dispatcher_process(config, "host-c", verbose=True).start()
        # the restarted dispatcher reports the interrupted sub-job instead of rerunning it
        final = wait_for(lambda: lab.final(2011), 30, "interrupted sub-job reported")
        assert final["state"] == "incomplete" and final["error_type"] == "infrastructure"
        assert "restarted" in final["message"] and "not run again" in final["message"]
        # the same sub-job delivered again (as after a lost ack) is ignored; a later one runs
        lab.assign(first)
        create_group(lab.broker, "g202", members, timeout=60.0)
        lab.assign(
            assignment(
                job=202,
                subjob=2021,
                group="g202",
                node="board-c1",
                role="solo",
                members=members,
                image_url=img,
                sha256=sha,
                test=QUICK,
            )
        )
        done = wait_for(lambda: lab.final(2021), 60, "next sub-job finished")
        assert done["state"] == "complete", done
        assert lab.states_of(2011).count("running") == 1
        assert lab.states_of(2011).count("accepted") == 1
    finally:
        assert host.stop(60) == 0, "".join(host.output)


def test_dispatcher_survives_losing_its_broker_connections(
    lab: Lab, rabbit_vhost: Any, rabbit_url: str, tmp_path: Path
) -> None:
    import services

    img, sha = image(tmp_path)
    host = dispatcher_process(
        host_config(tmp_path, rabbit_url, "host-d", ["board-d1"]), "host-d", verbose=True
    )
    host.start()
    members = {"board-d1": "solo"}
    try:
        wait_for(lambda: "host-d" in lab.hosts, 20, "registration")

        def dispatcher_connections() -> list[str]:
            # the management API lists a connection only after its first stats
            # tick: wait until every connection the dispatcher holds is listed
            assert host.proc is not None
            ports = broker_ports(host.proc.pid)
            listed = services.mgmt(
                "GET", f"/vhosts/{services.quote(rabbit_vhost.name)}/connections"
            )
            names = {c["peer_port"]: c["name"] for c in listed or []}
            if not ports or not ports <= names.keys():
                return []
            return [names[p] for p in ports]

        names = wait_for(dispatcher_connections, 30, "the dispatcher's connections listed")
        for name in names:  # as a broker restart would: every connection of the host dies
            with contextlib.suppress(Exception):
                services.mgmt("DELETE", f"/connections/{services.quote(name)}")
        create_group(lab.broker, "g301", members, timeout=60.0)
        lab.assign(
            assignment(
                job=301,
                subjob=3011,
                group="g301",
                node="board-d1",
                role="solo",
                members=members,
                image_url=img,
                sha256=sha,
                test=QUICK,
            )
        )
        done = wait_for(lambda: lab.final(3011), 60, "sub-job after reconnect")
        assert done["state"] == "complete", done
        assert "connection lost" in "".join(host.output)
    finally:
        assert host.stop(60) == 0, "".join(host.output)
