"""Payload rules of lava-send and the lava-network helpers (no broker)."""

from __future__ import annotations

import pytest

from device_agent.multinode import network_hosts, network_query
from schemas.errors import JobError
from schemas.messages.multinode import (
    MAX_PAYLOAD_BYTES,
    check_message_id,
    check_payload,
    payload_size,
)


def test_payload_size_counts_utf8_bytes() -> None:
    assert payload_size("id", {"k": "é"}) == 2 + 2 + 1 + 2


def test_payload_at_the_limit_passes_and_one_more_byte_fails() -> None:
    room = MAX_PAYLOAD_BYTES - len("id") - 2 - 1
    assert check_payload("lava-send", "id", {"k": "x" * room})
    with pytest.raises(JobError, match=f"payload is {MAX_PAYLOAD_BYTES + 1} bytes"):
        check_payload("lava-send", "id", {"k": "x" * (room + 1)})


@pytest.mark.parametrize("bad", ["", "a=b", "a b", "x\n", "é" * 200])
def test_bad_message_ids(bad: str) -> None:
    with pytest.raises(JobError):
        check_message_id("lava-send", bad)


def test_values_may_hold_anything_keys_may_not_hold_equals() -> None:
    data = {"k": "a = b\nc ✓"}
    assert check_payload("lava-send", "id", data) == data
    with pytest.raises(JobError, match="invalid key"):
        check_payload("lava-send", "id", {"a=b": "v"})
    with pytest.raises(JobError, match="must be text"):
        check_payload("lava-send", "id", {"a": 1})  # type: ignore[dict-item]


def test_network_hosts_and_query() -> None:
    collected = {
        "n2": {"ipv4": "10.0.0.2", "hostname": "two", "hostname-full": "two.lab"},
        "n1": {"ipv4": "10.0.0.1", "hostname": "one"},
        "n3": {"hostname": "no-ip"},
    }
    members = {"n1": "server", "n2": "client", "n3": "client"}
    assert network_hosts(collected) == ["10.0.0.1\tone", "10.0.0.2\ttwo\ttwo.lab"]
    assert network_hosts(collected, members, aliases=True) == [
        "10.0.0.1\tone\tserver01",
        "10.0.0.2\ttwo\ttwo.lab\tclient01",
    ]
    assert network_query(collected, "n2", "hostname-full") == "two.lab"
    assert network_query(collected, "zz", "ipv4") is None
