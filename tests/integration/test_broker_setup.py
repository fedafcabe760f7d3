"""``lavamq broker setup`` and ``definitions.json`` against the real RabbitMQ."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from click.testing import CliRunner

import services
from broker_config import topology
from broker_config.broker import Broker
from broker_config.declare import DEFINITIONS_FILE, ManagementAPI, render_definitions
from lavamq.cli import main

pytestmark = pytest.mark.integration


def test_definitions_file_is_up_to_date() -> None:
    assert DEFINITIONS_FILE.read_text() == render_definitions(), (
        "run python -m broker_config.declare"
    )


def test_setup_declares_topology_and_policies(rabbit_vhost: services.RabbitVhost) -> None:
    url = rabbit_vhost.url()
    for _ in range(2):  # idempotent
        result = CliRunner().invoke(main, ["broker", "setup", "--broker", url])
        assert result.exit_code == 0, result.output
    assert "applied policies: lava-group-expiry" in result.output
    q = services.quote(rabbit_vhost.name)
    queues = {x["name"]: x for x in services.mgmt("GET", f"/queues/{q}")}
    assert set(queues) == {x.name for x in topology.static_queues()}
    assert queues["lava.barrier"]["type"] == "quorum"
    assert queues["lava.barrier"]["arguments"]["x-single-active-consumer"] is True
    policy = services.mgmt("GET", f"/policies/{q}/lava-group-expiry")
    assert policy["definition"] == {"expires": topology.DEFAULT_GROUP_EXPIRY_MS}


def test_setup_sweeps_stale_group_exchanges(rabbit_vhost: services.RabbitVhost) -> None:
    url = rabbit_vhost.url()
    with Broker(url) as broker:
        broker.declare(topology.group_exchange("stale"))
        broker.declare(topology.group_exchange("live"), topology.group_queue("live", "n1"))
    result = CliRunner().invoke(main, ["broker", "setup", "--broker", url])
    assert result.exit_code == 0, result.output
    assert "lava.group.stale" in result.output
    names = {e["name"] for e in ManagementAPI.from_broker_url(url).exchanges()}
    assert "lava.group.stale" not in names
    assert "lava.group.live" in names


def test_bad_management_url_is_a_clear_error(rabbit_vhost: services.RabbitVhost) -> None:
    result = CliRunner().invoke(
        main,
        [
            "broker",
            "setup",
            "--broker",
            rabbit_vhost.url(),
            "--management-url",
            "http://127.0.0.1:9",
        ],
    )
    assert result.exit_code == 1
    assert "management API at http://127.0.0.1:9 unreachable" in result.output


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="rabbitmqctl not installed")
def test_definitions_import_with_rabbitmqctl(rabbit_vhost: services.RabbitVhost) -> None:
    doc = json.loads(DEFINITIONS_FILE.read_text())
    text = json.dumps(doc).replace('"vhost": "/"', f'"vhost": "{rabbit_vhost.name}"')
    doc = json.loads(text)
    doc["vhosts"] = [{"name": rabbit_vhost.name}]
    # world-readable: the rabbitmqctl wrapper runs as the rabbitmq user
    fd, path = tempfile.mkstemp(prefix="lavamq-definitions-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.chmod(path, 0o644)
    proc = subprocess.run(
        ["rabbitmqctl", "import_definitions", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 and "access" in (proc.stderr + proc.stdout).lower():
        pytest.skip(f"rabbitmqctl cannot reach the node: {proc.stderr.strip()}")
    os.unlink(path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    q = services.quote(rabbit_vhost.name)
    wanted = {x.name for x in topology.static_queues()}
    deadline = time.monotonic() + 30  # the import is asynchronous
    while {x["name"] for x in services.mgmt("GET", f"/queues/{q}")} != wanted:
        assert time.monotonic() < deadline, "definitions not imported"
        time.sleep(0.1)
    exchanges = {x["name"] for x in services.mgmt("GET", f"/exchanges/{q}")}
    assert {x.name for x in topology.static_exchanges()} <= exchanges
    bindings = services.mgmt("GET", f"/queues/{q}/lava.barrier/bindings")
    assert any(b["source"] == "lava.barrier" and b["routing_key"] == "barrier" for b in bindings)
    assert services.mgmt("GET", f"/policies/{q}/lava-group-expiry")["apply-to"] == "queues"
