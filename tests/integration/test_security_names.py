"""Device names with dots, dashes and underscores cannot widen another host's rights.

Each host gets the broker user ``lavamq broker add-host`` makes; the test then
talks to the real broker with pika under that user, so nothing of lavamq
stands between the probe and RabbitMQ's permission check. Host ``a`` owns
``a-01``; host ``c`` owns ``rack1.a-01`` (a dotted name that ends in host a's
name) and ``a.01`` (whose dot would match any character if left unescaped).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pika.exceptions
import pytest
from click.testing import CliRunner

import services
from broker_config import identity, permissions, topology
from broker_config.broker import Broker
from broker_config.declare import ManagementAPI, declare_topology
from lavamq.cli import main
from schemas.errors import ConfigurationError

pytestmark = pytest.mark.integration

GROUP = "7-0a1b2c3d4e5f"


@dataclass
class NamesLab:
    vhost: services.RabbitVhost
    password: str
    host_a: str
    host_c: str

    def url(self, host: str) -> str:
        return self.vhost.url(identity.host_user(host), self.password)


def _add_host(admin: str, host: str, devices: list[str], password: str) -> None:
    args = ["broker", "add-host", host, "--password", password, "--broker", admin]
    for device in devices:
        args += ["--device", device]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture
def names_lab(rabbit_vhost: services.RabbitVhost) -> Iterator[NamesLab]:
    admin = rabbit_vhost.url()
    tag = uuid.uuid4().hex[:8]
    lab = NamesLab(rabbit_vhost, uuid.uuid4().hex, f"names-a-{tag}", f"names-c-{tag}")
    with Broker(admin) as b:
        declare_topology(b)
        members = ["a-01", "rack1.a-01", "a.01", "ax01"]
        b.declare(topology.group_exchange(GROUP))
        for node in members:
            b.declare(topology.group_queue(GROUP, node))
        b.declare(topology.device_queue("ax01"))
    try:
        _add_host(admin, lab.host_a, ["a-01"], lab.password)
        _add_host(admin, lab.host_c, ["rack1.a-01", "a.01"], lab.password)
        yield lab
    finally:
        api = ManagementAPI.from_broker_url(admin)
        for host in (lab.host_a, lab.host_c):
            permissions.remove_user(api, identity.host_user(host))


def _channel(url: str) -> tuple[pika.BlockingConnection, pika.BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


def _refused_get(url: str, queue: str) -> int:
    """basic.get ``queue`` as the user of ``url``; the broker's reply code (0: allowed)."""
    conn, channel = _channel(url)
    try:
        channel.basic_get(queue, auto_ack=False)
        return 0
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    finally:
        conn.close()


def _refused_publish(url: str, exchange: str, key: str) -> int:
    """A confirmed publish; the broker's reply code when it closes the channel (0: allowed)."""
    conn, channel = _channel(url)
    try:
        channel.confirm_delivery()
        channel.basic_publish(exchange, key, b"{}", pika.BasicProperties(delivery_mode=2))
        return 0
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    except pika.exceptions.UnroutableError:
        return 0  # allowed, only nobody is bound
    finally:
        conn.close()


def test_a_dotted_name_ending_in_another_hosts_name_stays_its_owners(names_lab: NamesLab) -> None:
    a, c = names_lab.url(names_lab.host_a), names_lab.url(names_lab.host_c)
    theirs = topology.group_queue_name(GROUP, "rack1.a-01")
    assert _refused_get(a, theirs) == 403
    # its owner, and host a on its own node queue, may read
    assert _refused_get(c, theirs) == 0
    assert _refused_get(a, topology.group_queue_name(GROUP, "a-01")) == 0
    # host c's dotted names do not reach host a's plain one either
    assert _refused_get(c, topology.group_queue_name(GROUP, "a-01")) == 403


def test_a_dot_in_a_device_name_is_a_dot_not_any_character(names_lab: NamesLab) -> None:
    c = names_lab.url(names_lab.host_c)
    assert _refused_get(c, topology.device_queue_name("a.01")) == 0
    assert _refused_get(c, topology.device_queue_name("ax01")) == 403
    assert _refused_get(c, topology.group_queue_name(GROUP, "ax01")) == 403


def test_log_and_result_keys_of_a_dotted_device_are_its_owners(names_lab: NamesLab) -> None:
    a, c = names_lab.url(names_lab.host_a), names_lab.url(names_lab.host_c)
    for exchange in (topology.LOGS_EXCHANGE_NAME, topology.RESULTS_EXCHANGE_NAME):
        # ``<job>.<node>`` with a job id swallowing the dotted prefix
        assert _refused_publish(a, exchange, "5.rack1.a-01") == 403
        assert _refused_publish(a, exchange, "5.a-01") == 0
        assert _refused_publish(c, exchange, "5.rack1.a-01") == 0


def test_names_with_other_regex_characters_are_refused_before_any_user_exists() -> None:
    for name in ("a+01", "a(01)", "a*", "a|b", "a$", "[a]", "a 01", "a#", "a/b"):
        with pytest.raises(ConfigurationError, match="invalid device name"):
            permissions.host_permissions("names-x", [name])
    with pytest.raises(ConfigurationError, match="no dots"):
        topology.group_exchange_name("7.rack1")
    with pytest.raises(ConfigurationError, match="no dots"):
        topology.log_routing_key("5.rack1", "a-01")
