"""The MultiNode API contract, on memory:// (fast) and on the real RabbitMQ.

Each test runs a barrier service (a thread of the test process: memory
transport state is per process), creates a group, and drives one
``MultinodeClient`` per node. Waits are on events, never on sleeps.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from barrier_lab import BarrierLab

from coordinator.groups import end_group, fail_group
from device_agent.multinode import (
    network_hosts,
    network_query,
)
from schemas.errors import GroupFailed, JobError, MultinodeTimeout
from schemas.messages.multinode import MAX_PAYLOAD_BYTES


@pytest.fixture
def lab(barrier_lab: BarrierLab) -> BarrierLab:
    return barrier_lab


def in_threads(*calls: Callable[[], Any]) -> list[Any]:
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(c) for c in calls]
        return [f.result(timeout=60) for f in futures]


THREE = {"n1": "server", "n2": "client", "n3": "client"}


def test_identity(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients(THREE)
    assert c["n2"].self_name == "n2"
    assert c["n2"].role == "client"
    assert c["n2"].group_members() == THREE
    assert c["n2"].roles() == ["client", "server"]
    assert c["n1"].nodes_with_role("client") == ["n2", "n3"]
    assert c["n1"].nodes_with_role("nope") == []


def test_message_sent_before_the_peer_waits_is_received(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients({"a": "server", "b": "client"})
    c["a"].send("ready", {"ip": "10.0.0.1"})
    # b waits only now: the message waited in b's queue
    assert c["b"].wait("ready", timeout=10) == {"a": {"ip": "10.0.0.1"}}
    # ids persist: a second wait returns at once
    assert c["b"].wait("ready", timeout=0.5) == {"a": {"ip": "10.0.0.1"}}


def test_wait_ignores_own_sends(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients({"a": "server", "b": "client"}, timeout=2)
    c["a"].send("mine", {"k": "v"})
    with pytest.raises(MultinodeTimeout) as info:
        c["a"].wait("mine", timeout=0.5)
    text = str(info.value)
    assert "lava-wait 'mine'" in text
    assert "client (b)" in text
    # b did not send 'mine': a's timeout failed the group for everyone
    with pytest.raises(GroupFailed):
        c["b"].wait("other", timeout=5)


def test_wait_returns_data_of_every_other_sender(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients(THREE)
    c["n2"].send("hello", {"from": "n2"})
    c["n3"].send("hello", {"from": "n3"})
    assert c["n1"].wait("hello", timeout=10)  # at least one
    got = _eventually(lambda: c["n1"].wait("hello", timeout=10), lambda r: len(r) == 2)
    assert got == {"n2": {"from": "n2"}, "n3": {"from": "n3"}}


def _eventually(fn: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.005)


def test_wait_all_without_role(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients(THREE)

    def send_then_wait(node: str) -> Any:
        c[node].send("up", {"n": node[1:]})
        return c[node].wait_all("up", timeout=15)

    results = in_threads(*(functools.partial(send_then_wait, node) for node in ("n1", "n2", "n3")))
    expected = {"n1": {"n": "1"}, "n2": {"n": "2"}, "n3": {"n": "3"}}
    assert results == [expected, expected, expected]


def test_wait_all_with_role(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients(THREE)
    done = threading.Event()
    result: dict[str, Any] = {}

    def server() -> None:
        result["server"] = c["n1"].wait_all("client-ready", "client", timeout=15)
        done.set()

    thread = threading.Thread(target=server)
    thread.start()
    c["n2"].send("client-ready", {"x": "2"})
    assert not done.wait(0.3)  # one client of two: still waiting
    c["n3"].send("client-ready", {"x": "3"})
    assert done.wait(10)
    thread.join()
    assert result["server"] == {"n2": {"x": "2"}, "n3": {"x": "3"}}
    with pytest.raises(JobError, match="no role 'nope'"):
        c["n1"].wait_all("client-ready", "nope")


def test_sync_three_nodes_and_reuse_of_the_id(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients(THREE)
    for _ in range(2):  # the same id synced twice: generations 1 and 2
        in_threads(*(lambda n=n: c[n].sync("ready", timeout=15) for n in c))
    # a third sync by only one node does not pass the barrier
    with pytest.raises(MultinodeTimeout) as info:
        c["n1"].sync("ready", timeout=0.5)
    text = str(info.value)
    assert text.startswith("lava-sync 'ready': timed out after 0.5 s waiting for ")
    assert "client (n2), client (n3); 1 of 3 arrived" in text


def test_a_sync_is_a_send_then_a_wait_all_as_lava_documents(lab: BarrierLab) -> None:
    # LAVA's dispatcher crashes on lava-wait-all ID after lava-sync ID; its docs say
    # lava-sync ID is lava-send ID then lava-wait-all ID
    _, c = lab.group_with_clients(THREE)
    in_threads(*(lambda n=n: c[n].sync("both-ways", timeout=15) for n in c))
    for name, client in c.items():
        assert client.wait_all("both-ways", timeout=5) == {n: {} for n in c}
        assert client.wait("both-ways", timeout=5) == {n: {} for n in c if n != name}


def test_reuse_of_a_message_id_accumulates_data(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients({"a": "server", "b": "client"})
    c["a"].send("info", {"k1": "v1"})
    assert c["b"].wait("info", timeout=10) == {"a": {"k1": "v1"}}
    c["a"].send("info", {"k2": "v2"})
    got = _eventually(lambda: c["b"].wait("info"), lambda r: len(r["a"]) == 2)
    assert got == {"a": {"k1": "v1", "k2": "v2"}}


def test_payloads_of_any_text(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients({"a": "server", "b": "client"})
    data = {
        "spaces": "a value with spaces",
        "equals": "x=y=z",
        "newlines": "line 1\nline 2\n",
        "unicode": "héllo wörld ✓ 日本",
        "ключ": "значение",
    }
    c["a"].send("weird", data)
    assert c["b"].wait("weird", timeout=10) == {"a": data}


def test_oversize_payload_rejected(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients({"a": "server", "b": "client"})
    with pytest.raises(JobError) as info:
        c["a"].send("big", {"blob": "x" * MAX_PAYLOAD_BYTES})
    assert "lava-send 'big'" in str(info.value)
    assert f"limit of {MAX_PAYLOAD_BYTES} bytes" in str(info.value)
    with pytest.raises(JobError, match="cannot contain '='"):
        c["a"].send("a=b")
    with pytest.raises(JobError, match="invalid key"):
        c["a"].send("ok", {"k=1": "v"})


def test_timeout_names_the_missing_node(lab: BarrierLab) -> None:
    _, c = lab.group_with_clients(
        {"beaglexm-01": "omap3", "panda-01": "omap4", "qemu-01": "server"}
    )
    errors: dict[str, BaseException] = {}

    def sync(node: str, timeout: float) -> None:
        try:
            c[node].sync("ready", timeout=timeout)
        except (MultinodeTimeout, GroupFailed) as exc:
            errors[node] = exc

    t = [
        threading.Thread(target=sync, args=("panda-01", 20)),
        threading.Thread(target=sync, args=("qemu-01", 1)),
    ]
    for thread in t:
        thread.start()
    for thread in t:
        thread.join(30)
    assert isinstance(errors["qemu-01"], MultinodeTimeout)
    assert str(errors["qemu-01"]) == (
        "lava-sync 'ready': timed out after 1 s waiting for omap3 (beaglexm-01); 2 of 3 arrived"
    )
    # the other waiter was released at once with the same news
    assert isinstance(errors["panda-01"], GroupFailed)
    assert "omap3 (beaglexm-01); 2 of 3 arrived" in str(errors["panda-01"])
    # and every later wait fails at once
    started = time.monotonic()
    with pytest.raises(GroupFailed):
        c["beaglexm-01"].sync("ready", timeout=20)
    assert time.monotonic() - started < 1


def test_failed_group_releases_waiters_within_a_second(lab: BarrierLab) -> None:
    name, c = lab.group_with_clients(THREE, timeout=60)
    released: dict[str, float] = {}
    errors: dict[str, BaseException] = {}
    waiting = threading.Barrier(4)

    def wait(node: str, call: Callable[[], Any]) -> None:
        waiting.wait()
        try:
            call()
        except GroupFailed as exc:
            errors[node] = exc
        released[node] = time.monotonic()

    threads = [
        threading.Thread(target=wait, args=("n1", lambda: c["n1"].sync("go"))),
        threading.Thread(target=wait, args=("n2", lambda: c["n2"].wait("never"))),
        threading.Thread(target=wait, args=("n3", lambda: c["n3"].wait_all("never", "server"))),
    ]
    for thread in threads:
        thread.start()
    waiting.wait()
    failed_at = time.monotonic()
    fail_group(lab.broker, name, "qemu-01 did not boot", node="n3")
    for thread in threads:
        thread.join(10)
    assert set(errors) == {"n1", "n2", "n3"}
    assert max(released.values()) - failed_at < 1.0
    assert "qemu-01 did not boot" in str(errors["n2"])
    with pytest.raises(GroupFailed):
        c["n2"].send("late")


def test_network_broadcast_collect_query_hosts(lab: BarrierLab) -> None:
    members = {"a": "server", "b": "client"}
    _, c = lab.group_with_clients(members)
    c["a"].broadcast({"ipv4": "10.0.0.1", "hostname": "alpha"})
    c["b"].broadcast({"ipv4": "10.0.0.2", "hostname": "beta"})
    collected = c["a"].collect(timeout=10)
    assert network_query(collected, "b", "ipv4") == "10.0.0.2"
    assert network_query(collected, "b", "mac") is None
    assert network_hosts(collected) == ["10.0.0.1\talpha", "10.0.0.2\tbeta"]
    assert network_hosts(collected, members, aliases=True) == [
        "10.0.0.1\talpha\tserver01",
        "10.0.0.2\tbeta\tclient01",
    ]
    assert c["b"].collect("server", timeout=10) == {"a": {"ipv4": "10.0.0.1", "hostname": "alpha"}}


def test_end_group_removes_its_topology(lab: BarrierLab) -> None:
    name, c = lab.group_with_clients({"a": "server", "b": "client"})
    for client in c.values():
        client.close()
    lab.clients.clear()
    end_group(lab.broker, name, ["a", "b"])
    from schemas.errors import InfrastructureError
    from schemas.messages.multinode import MultinodeSendSchema

    with pytest.raises(InfrastructureError):
        lab.broker.publish(
            f"lava.group.{name}",
            "",
            MultinodeSendSchema(),
            {"group": name, "node": "a", "message_id": "x"},
        )
