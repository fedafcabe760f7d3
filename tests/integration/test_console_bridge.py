"""Helpers end to end: two ``local`` boards, their bridges and the real MultinodeClient.

Runs on kombu's memory:// (with the barrier service in a thread, as the
MultiNode contract tests do) and on the real RabbitMQ. The lava-* helpers run
in the boards' real shells; the bridges turn their console signals into
client calls and type the replies back.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from barrier_lab import BarrierLab

from device_agent.bridge import Bridge
from device_agent.devices import create_device
from device_agent.devices.local import LocalDevice, session_processes
from device_agent.multinode import MultinodeClient
from device_agent.overlay import (
    MultinodeContext,
    overlay_environment,
    setup_commands,
    write_overlay,
)

MEMBERS = {"board-a": "server", "board-b": "client"}


class Node:
    def __init__(self, name: str, root: Path, url: str, group: str, timeout: float) -> None:
        device = create_device({"name": name, "device_type": "local"}, root)
        assert isinstance(device, LocalDevice)
        self.device = device
        self.client = MultinodeClient(url, group, name, MEMBERS, timeout=timeout)
        target = self.device.install_overlay(
            write_overlay(root / "overlay", MultinodeContext.from_client(self.client)).parent, 10
        )
        env = overlay_environment(target, cache_dir=self.device.cache_dir())
        self.console = self.device.boot(timeout=20, setup=setup_commands(env))
        self.results: list[dict[str, Any]] = []
        self.failures: list[Exception] = []
        self.bridge = Bridge(
            self.console,
            self.client,
            timeout=timeout,
            on_result=self.results.append,
            on_failure=self.failures.append,
        ).start()

    def run(self, command: str, timeout: float = 30) -> tuple[str, int]:
        return self.console.run(command, timeout)

    def close(self) -> set[int]:
        pid = self.device.proc.pid if self.device.proc else -1
        self.bridge.close()
        self.device.shutdown()
        self.client.close()
        return session_processes(pid) if pid > 0 else set()


@pytest.fixture
def nodes(barrier_lab: BarrierLab, tmp_path: Path) -> Iterator[dict[str, Node]]:
    group = barrier_lab.create_group(MEMBERS, timeout=30)
    made: dict[str, Node] = {}
    try:
        for name in MEMBERS:
            made[name] = Node(name, tmp_path / name, barrier_lab.url, group, timeout=20)
        yield made
    finally:
        for node in made.values():
            node.close()


def both(a: Any, b: Any) -> list[Any]:
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(a), pool.submit(b)]
        return [f.result(timeout=60) for f in futures]


def test_send_wait_sync_and_results_between_two_boards(nodes: dict[str, Node]) -> None:
    a, b = nodes["board-a"], nodes["board-b"]
    assert a.run("lava-self; lava-role; echo; lava-group client") == (
        "board-a\nserver\nboard-b",
        0,
    )
    out_a, out_b = both(
        lambda: a.run(
            'lava-send ready port=7777 msg="hello world" && lava-sync both'
            " && lava-test-case a-done --result pass"
        ),
        lambda: b.run(
            'lava-wait ready && cat "$LAVA_MULTI_NODE_CACHE"'
            ' && port=$(cut -d = -f 2 "$LAVA_MULTI_NODE_CACHE" | head -n 1)'
            # as on LAVA, a sync removes the cache, as every wait does
            ' && lava-sync both && ! test -e "$LAVA_MULTI_NODE_CACHE"'
            ' && lava-test-case port --result pass --measurement "$port"'
        ),
    )
    assert out_a[1] == 0, out_a
    assert out_b[1] == 0, out_b
    assert "board-a:port=7777\nboard-a:msg=hello world" in out_b[0]
    # the bridge hands over one result per MultiNode call; test cases are the tracker's
    assert {r["case"]: r["result"] for r in a.results} == {
        "multinode-send-ready": "pass",
        "multinode-sync-both": "pass",
    }
    assert [r["case"] for r in b.results] == ["multinode-wait-ready", "multinode-sync-both"]
    assert "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=port RESULT=pass MEASUREMENT=7777>" in out_b[0]
    assert a.bridge.errors == [] and b.bridge.errors == []
    # every signal was handled once: a sent, synced; b waited, synced
    assert (a.bridge.calls, b.bridge.calls) == (2, 2)


def test_network_broadcast_collect_query(nodes: dict[str, Node]) -> None:
    a, b = nodes["board-a"], nodes["board-b"]
    iface = {n: ("eth0" if node.device.netns else "lo") for n, node in nodes.items()}
    out_a, out_b = both(
        lambda: a.run(f"lava-network broadcast {iface['board-a']} && lava-network collect x"),
        lambda: b.run(f"lava-network broadcast {iface['board-b']} && lava-network collect x"),
    )
    assert out_a[1] == 0 and out_b[1] == 0, (out_a, out_b)
    expected = a.device.address().split("/")[0] if a.device.netns else "127.0.0.1"
    assert b.run("lava-network query board-a ipv4") == (expected, 0)
    assert b.run("lava-network query board-a hostname")[0] == (
        "board-a" if a.device.netns else b.run("hostname")[0]
    )


def test_malformed_signal_and_a_timed_out_wait_do_not_stop_the_job(nodes: dict[str, Node]) -> None:
    b = nodes["board-b"]
    output, rc = b.run(
        "echo '<LAVA_MULTI_NODE> <LAVA_WAIT two words>' > /dev/null; "
        "printf '%s\\n' '<LAVA_MULTI_NODE> <LAVA_SYNC' | cat; true"
    )
    assert rc == 0
    b.bridge.timeout = 0.5
    output, rc = b.run("lava-wait nobody-sends-this")
    assert rc == 1
    assert "lava-wait: Error: no-response nobody-sends-this" in output
    assert any("nobody-sends-this" in e for e in b.bridge.errors)
    # a timeout is the test's result (its case fails), not the end of the test shell
    assert b.failures == []
    assert {"case": "multinode-wait-nobody-sends-this", "result": "fail"}.items() <= (
        b.results[-1].items()
    )
    # the typed command's echo was not taken as a signal; its printed output was
    assert len(b.bridge.errors) == 2
    assert "lava-sync: malformed MultiNode signal" in b.bridge.errors[0]
    # the board still works after the nack
    assert b.run("echo still-here") == ("still-here", 0)
