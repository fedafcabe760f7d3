"""Names of the topology: built in one place, validated, never wildcards."""

from __future__ import annotations

import pytest

from broker_config import topology
from schemas.errors import ConfigurationError


def test_group_names() -> None:
    assert topology.group_exchange_name("g-1") == "lava.group.g-1"
    assert topology.group_queue_name("g-1", "qemu_01") == "lava.group.g-1.qemu_01"
    exchange = topology.group_exchange("g-1")
    assert exchange.type == "fanout"
    assert exchange.durable
    queue = topology.group_queue("g-1", "n1")
    assert queue.exchange.name == "lava.group.g-1"
    assert queue.durable
    assert queue.as_dict()["queue_arguments"] == {"x-dead-letter-exchange": "lava.dead"}


def test_device_and_routing_keys() -> None:
    assert topology.device_queue_name("beaglexm-01") == "lava.device.beaglexm-01"
    assert topology.device_queue("beaglexm-01").routing_key == "beaglexm-01"
    assert topology.log_routing_key(12, "n1") == "12.n1"
    assert topology.result_routing_key("12", "n1") == "12.n1"
    assert topology.event_routing_key("job", 12) == "job.12"


def test_barrier_queue_is_quorum_single_active() -> None:
    queue = topology.barrier_queue()
    assert queue.name == "lava.barrier"
    arguments = queue.as_dict()["queue_arguments"]  # set from kombu's attrs, not declared
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-single-active-consumer"] is True
    assert arguments["x-dead-letter-exchange"] == "lava.dead"


@pytest.mark.parametrize("bad", ["a#b", "a*", "has space", "", "a/b", "x" * 121, "é"])
def test_unsafe_names_rejected(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        topology.group_exchange_name(bad)
    assert "invalid group name" in str(info.value)
    with pytest.raises(ConfigurationError, match="invalid node name"):
        topology.group_queue_name("g", bad)
    with pytest.raises(ConfigurationError, match="invalid device name"):
        topology.device_queue(bad)


def test_static_names_are_all_lava_prefixed_and_unique() -> None:
    names = [e.name for e in topology.static_exchanges()]
    assert len(names) == len(set(names))
    assert all(n.startswith("lava.") for n in names)
    assert all(q.name.startswith("lava.") for q in topology.static_queues())
