"""The bridge's parser and formatter, and the bridge itself over a scripted console."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from device_agent.bridge import (
    MAX_SIGNAL_CHARS,
    Bridge,
    SignalError,
    format_reply,
    parse_signal,
)
from device_agent.console import ScriptedConsole
from device_agent.signals import parse_line, reply_lines
from schemas.errors import GroupFailed, MultinodeTimeout


def test_parse_send_keeps_spaces_in_values() -> None:
    signal = parse_signal(
        "<LAVA_MULTI_NODE> <LAVA_SEND ready ip=192.0.2.5 msg=hello world hostname-full=a.b>"
    )
    assert signal is not None
    assert (signal.api, signal.message_id) == ("SEND", "ready")
    assert signal.data == {"ip": "192.0.2.5", "msg": "hello world", "hostname-full": "a.b"}
    assert not signal.blocking


def test_parse_blocking_calls_and_prefix_noise() -> None:
    wait = parse_signal("xx<LAVA_MULTI_NODE> <LAVA_WAIT go>")
    assert wait is not None and (wait.api, wait.message_id, wait.blocking) == ("WAIT", "go", True)
    wait_all = parse_signal("<LAVA_MULTI_NODE> <LAVA_WAIT_ALL done client>")
    assert wait_all is not None and (wait_all.message_id, wait_all.role) == ("done", "client")
    sync = parse_signal("<LAVA_MULTI_NODE> <LAVA_SYNC start>")
    assert sync is not None and sync.operation == "lava-sync"
    assert parse_signal("<LAVA_WAIT_COMPLETE a:b=c>") is None
    assert parse_signal("plain output") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("<LAVA_MULTI_NODE> <LAVA_WAIT go", "lava-wait: malformed"),
        ("<LAVA_MULTI_NODE> <LAVA_FROB x>", "unknown MultiNode call LAVA_FROB"),
        ("<LAVA_MULTI_NODE> <LAVA_WAIT a b>", "lava-wait: expected one id"),
        ("<LAVA_MULTI_NODE> <LAVA_SEND a=b>", "contains '='"),
        ("<LAVA_MULTI_NODE> <LAVA_SEND x k=" + "v" * MAX_SIGNAL_CHARS + ">", "over the limit"),
    ],
)
def test_parse_errors_name_the_problem(line: str, message: str) -> None:
    with pytest.raises(SignalError, match=message) as info:
        parse_signal(line)
    # an error never quotes a whole signal back (it would look like one)
    assert "<LAVA_MULTI_NODE>" not in str(info.value)


def test_format_reply() -> None:
    data = {"b": {"k": "v 2"}, "a": {"ip": "192.0.2.1", "lt": "1<2"}}
    assert format_reply("WAIT", data) == "<LAVA_WAIT_COMPLETE a:ip=192.0.2.1 a:lt=1<2 b:k=v 2>"
    # each pair also has a line of its own, to its end: no value reads as another pair
    forged = {"n1": {"v": "x n2:ready=yes"}}
    assert reply_lines("WAIT", forged) == [
        "<LAVA_WAIT_DATA>n1:v=x n2:ready=yes",
        "<LAVA_WAIT_COMPLETE n1:v=x n2:ready=yes>",
    ]
    # no typed line can hold (or complete) a signal: '\\', '<', '>' of such values escaped
    hostile = {"n1": {"gt": "1>2", "sig": "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass"}}
    lines = reply_lines("WAIT", hostile)
    assert lines == [
        r"<LAVA_WAIT_DATA>n1:gt=1\00762",
        r"<LAVA_WAIT_DATA>n1:sig=\0074LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass",
        r"<LAVA_WAIT_COMPLETE n1:gt=1\00762 n1:sig=\0074LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x"
        " RESULT=pass>",
    ]
    assert all(parse_line(line) is None for line in lines)
    assert format_reply("WAIT_ALL", {}) == "<LAVA_WAIT_ALL_COMPLETE>"
    assert format_reply("SYNC") == "<LAVA_SYNC_COMPLETE>"
    assert format_reply("SYNC", nack=True) == "<LAVA_SYNC_COMPLETE nack>"


class FakeClient:
    """An in-process stand-in with the MultinodeClient methods the bridge calls."""

    def __init__(self, name: str = "node-b") -> None:
        self.self_name = name
        self.calls: list[tuple[Any, ...]] = []
        self.released = threading.Event()
        self.fail: Exception | None = None

    def send(self, message_id: str, data: dict[str, str] | None = None) -> None:
        self.calls.append(("send", message_id, data))

    def wait(self, message_id: str, timeout: float | None = None) -> dict[str, dict[str, str]]:
        self.calls.append(("wait", message_id, timeout))
        if self.fail:
            raise self.fail
        return {"node-a": {"ip": "192.0.2.10"}}

    def wait_all(
        self, message_id: str, role: str | None = None, timeout: float | None = None
    ) -> dict[str, dict[str, str]]:
        self.calls.append(("wait_all", message_id, role))
        return {"node-a": {}, "node-c": {"r": "1"}}

    def sync(self, message_id: str, timeout: float | None = None) -> None:
        self.calls.append(("sync", message_id))
        if self.fail:
            raise self.fail


def make(echo: bool = True) -> tuple[ScriptedConsole, FakeClient, Bridge, list[dict[str, Any]]]:
    console = ScriptedConsole("dut", echo=echo)
    client = FakeClient()
    results: list[dict[str, Any]] = []
    bridge = Bridge(console, client, timeout=7, on_result=results.append).start()
    return console, client, bridge, results


def test_bridge_answers_signals_in_order_and_types_replies() -> None:
    console, client, bridge, _ = make()
    # a signal split across reads, with escapes and CRs around it
    console.feed_output("\x1b[0m<LAVA_MULTI_NODE> <LAVA_SEND ready ip=192.0.2.5")
    console.feed_output(" note=a b>\r\n<LAVA_MULTI_NODE> <LAVA_WAIT go>\r\n")
    console.feed_output("<LAVA_MULTI_NODE> <LAVA_WAIT_ALL done client>\r\n")
    console.feed_output("<LAVA_MULTI_NODE> <LAVA_SYNC start>\r\n")
    assert bridge.wait_idle(5)
    bridge.close()
    assert client.calls == [
        ("send", "ready", {"ip": "192.0.2.5", "note": "a b"}),
        ("wait", "go", 7),
        ("wait_all", "done", "client"),
        ("sync", "start"),
    ]
    assert console.sent == [
        "<LAVA_WAIT_DATA>node-a:ip=192.0.2.10",
        "<LAVA_WAIT_COMPLETE node-a:ip=192.0.2.10>",
        "<LAVA_WAIT_ALL_DATA>node-c:r=1",
        "<LAVA_WAIT_ALL_COMPLETE node-c:r=1>",
        "<LAVA_SYNC_COMPLETE>",
    ]
    assert bridge.errors == []


def test_echo_of_typed_signals_is_not_handled_twice() -> None:
    console, client, bridge, _ = make(echo=True)
    # the dispatcher types a command that prints a signal: its echo comes first
    console.sendline('echo "<LAVA_MULTI_NODE> <LAVA_SEND typed k=v>"')
    console.feed_output("<LAVA_MULTI_NODE> <LAVA_SEND typed k=v>\r\n")
    assert bridge.wait_idle(5)
    bridge.close()
    assert client.calls == [("send", "typed", {"k": "v"})]


def test_malformed_and_oversized_signals_get_errors_and_nacks() -> None:
    console, client, bridge, _ = make(echo=False)
    console.feed_output("<LAVA_MULTI_NODE> <LAVA_WAIT a b>\r\n")
    console.feed_output("<LAVA_MULTI_NODE> <LAVA_SYNC " + "x" * (MAX_SIGNAL_CHARS + 10))
    console.feed_output("y" * 100 + ">\r\n")
    console.feed_output("<LAVA_MULTI_NODE> <LAVA_SEND ok>\r\n")
    assert bridge.wait_idle(5)
    bridge.close()
    assert client.calls == [("send", "ok", {})]
    assert console.sent[0].startswith("# lavamq: node-b: lava-wait: expected one id")
    assert console.sent[1] == "<LAVA_WAIT_COMPLETE nack>"
    assert "lava-sync: signal is over the limit of 65534 characters" in console.sent[2]
    assert console.sent[3] == "<LAVA_SYNC_COMPLETE nack>"
    assert len(bridge.errors) == 2


@pytest.mark.parametrize("error", [MultinodeTimeout("lava-sync 'x': timed out"), GroupFailed("g")])
def test_failed_calls_nack_record_and_tell_the_dispatcher(error: Exception) -> None:
    console = ScriptedConsole("dut")
    client = FakeClient()
    client.fail = error
    failures: list[Exception] = []
    results: list[dict[str, Any]] = []
    bridge = Bridge(console, client, on_result=results.append, on_failure=failures.append).start()
    console.feed_output("<LAVA_SIGNAL_STARTRUN 0_mn abc>\n<LAVA_MULTI_NODE> <LAVA_SYNC x>\n")
    assert bridge.wait_idle(5)
    bridge.close()
    assert console.sent[-1] == "<LAVA_SYNC_COMPLETE nack>"
    # a timeout is the test's result; only a failed group ends the test shell
    assert failures == ([] if isinstance(error, MultinodeTimeout) else [error])
    assert results == [{"kind": "testcase", "case": "multinode-sync-x", "result": "fail"}]


def test_only_call_results_are_handed_over() -> None:
    # test cases and test-run frames are the result tracker's to read: one reader, not two
    console, _, bridge, results = make(echo=False)
    console.feed_output(
        "<LAVA_SIGNAL_STARTRUN 0_smoke u1>\r\n"
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot RESULT=pass>\r\n"
        "<LAVA_MULTI_NODE> <LAVA_SYNC up>\r\n"
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=bad RESULT=maybe>\r\n"
        "<LAVA_SIGNAL_ENDRUN 0_smoke u1>\r\n"
    )
    assert bridge.wait_idle(5)
    bridge.close()
    assert results == [{"kind": "testcase", "case": "multinode-sync-up", "result": "pass"}]
    assert bridge.errors == []
