"""Secrets never reach a log: broker passwords and credentials in image URLs are masked."""

from __future__ import annotations

import logging
import socket
import urllib.parse
import uuid
from pathlib import Path

import pytest
from faults import BrokerProxy, ServiceProcess, wait_for

import services
from broker_config import identity, permissions
from broker_config.broker import Broker
from broker_config.declare import ManagementAPI, declare_topology
from coordinator.barrier import READY_LINE
from dispatcher.joblog import JobLog
from schemas.errors import InfrastructureError
from schemas.messages.jobs import HostHeartbeatSchema

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_broker_password_never_logged(
    rabbit_vhost: services.RabbitVhost, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Failure covered: a broker password shows in a service's log or an error
    message — on connection loss, on an unreachable broker, at start-up with -vv."""
    secret = f"Pw{uuid.uuid4().hex}"
    host = f"secret-{uuid.uuid4().hex[:6]}"
    api = ManagementAPI.from_broker_url(rabbit_vhost.url())
    permissions.apply_user(api, permissions.host_permissions(host, []), secret)
    try:
        with Broker(rabbit_vhost.url()) as admin:
            declare_topology(admin)
        caplog.set_level(logging.DEBUG)
        url = rabbit_vhost.url(identity.host_user(host), secret)
        with BrokerProxy() as proxy:
            purl = proxy.url(url)
            with Broker(purl) as broker:
                body = {"kind": "host-heartbeat", "host": host, "time": 1.0}
                broker.publish("lava.control", "control", HostHeartbeatSchema(), body)
                proxy.cut()  # the next publish reconnects and logs why
                broker.publish("lava.control", "control", HostHeartbeatSchema(), body)
            # a service at -vv whose broker goes away and comes back
            barrier = ServiceProcess(
                ["-vv", "barrier", "--broker", proxy.url(rabbit_vhost.url()), "--db",
                 f"sqlite:///{tmp_path / 'b.sqlite'}"],
                READY_LINE,
                env={"LAVAMQ_BROKER_URL": purl},
            )  # fmt: skip
            barrier.start()
            before = proxy.accepted
            proxy.outage(refuse_attempts=1)
            wait_for(lambda: proxy.accepted > before, 30, "the barrier to reconnect")
            barrier.stop()
        # an unreachable broker: the error names it, without the password
        bad = f"amqp://{identity.host_user(host)}:{secret}@127.0.0.1:{_closed_port()}/x"
        with pytest.raises(InfrastructureError) as err, Broker(bad, max_retries=1) as broker:
            broker.connect()
    finally:
        permissions.remove_user(api, identity.host_user(host))
    quoted = urllib.parse.quote(secret)
    for where, text in (
        ("in-process log", caplog.text),
        ("error message", str(err.value)),
        ("barrier output", barrier.text()),
    ):
        assert text, f"{where}: nothing was logged, the check would prove nothing"
        assert secret not in text and quoted not in text, f"password in the {where}"
    assert "connection lost" in caplog.text
    assert "127.0.0.1" in str(err.value)


def test_job_log_masks_credentials_in_image_urls(tmp_path: Path) -> None:
    """Failure covered: a deploy URL with user:password (or a token parameter)
    is written verbatim into the job log a test writer can read."""
    secret = f"S{uuid.uuid4().hex}"
    log = JobLog(tmp_path / "job.log", secrets=["extra-" + secret])
    log.record("info", f"downloading https://builder:{secret}@images.example.org/rootfs.img.xz")
    log.record("info", f"fetch http://example.org/k?token={secret}&x=1")
    log.record("target", f"echo extra-{secret}")
    text = (tmp_path / "job.log").read_text()
    assert text.count("images.example.org") == 1
    assert secret not in text
