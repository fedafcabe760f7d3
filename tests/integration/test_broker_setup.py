"""``lavamq broker setup`` and ``definitions.json`` against the real RabbitMQ."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest
from click.testing import CliRunner

import services
from broker_config import identity, permissions, topology
from broker_config.broker import Broker
from broker_config.declare import DEFINITIONS_FILE, ManagementAPI, render_definitions
from lavamq.cli import main
from schemas.messages.console import LogBatchSchema

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


def test_after_setup_everything_a_host_publishes_to_reaches_a_queue(
    rabbit_vhost: services.RabbitVhost,
) -> None:
    """Regression: with hosts made by ``add-host`` and no log store running yet,
    ``lava.logs`` had no queue and every log batch was unroutable and dropped."""
    admin = rabbit_vhost.url()
    runner = CliRunner()
    host, password = f"setup-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    for args in (
        ["broker", "setup", "--broker", admin],
        ["broker", "add-host", host, "--device", "rack1.dev-01", "--password", password,
         "--broker", admin],
    ):  # fmt: skip
        result = runner.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    api = ManagementAPI.from_broker_url(admin)
    try:
        # lava.events is information: nobody bound is normal there
        for exchange in set(permissions.HOST_WRITE_EXCHANGES) - {topology.EVENTS_EXCHANGE_NAME}:
            bound = api.bindings_from(exchange)
            assert [b for b in bound if b["destination_type"] == "queue"], exchange
        batch = {
            "job": "12",
            "subjob": "12.0",
            "node": "rack1.dev-01",
            "seq": 0,
            "records": [{"time": "2026-01-01T00:00:00", "level": "info", "message": "hi"}],
        }
        with Broker(rabbit_vhost.url(identity.host_user(host), password)) as as_host:
            as_host.publish(
                topology.LOGS_EXCHANGE_NAME,
                topology.log_routing_key(12, "rack1.dev-01"),
                LogBatchSchema(),
                batch,
            )
        assert rabbit_vhost.queue(topology.LOGS_STORE_QUEUE_NAME)["durable"] is True
        assert _wait_queue_length(rabbit_vhost, topology.LOGS_STORE_QUEUE_NAME) == 1
    finally:
        permissions.remove_user(api, identity.host_user(host))


def _wait_queue_length(vhost: services.RabbitVhost, name: str, timeout: float = 15) -> int:
    """The queue's message count once the management API has caught up (it samples)."""
    deadline = time.monotonic() + timeout
    while True:
        count = int(vhost.queue(name).get("messages") or 0)
        if count or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


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
