"""lava-test-shell's results: one reader of result signals, with the bridge's lava-sync results."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from device_agent.console import ScriptedConsole
from dispatcher.actions.test_shell import LavaTestShellAction, ResultTracker
from dispatcher.assignment import Timeouts


class SyncClient:
    self_name = "node-a"

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail

    def sync(self, message_id: str, timeout: float | None = None) -> None:
        if self.fail is not None:
            raise self.fail


def wired(client: SyncClient) -> tuple[ScriptedConsole, Any, list[dict[str, Any]]]:
    """A console with the tracker and the bridge attached as the test shell attaches them."""
    console = ScriptedConsole("dut")
    results: list[dict[str, Any]] = []
    tracker = ResultTracker({}, results.append, logging.getLogger("test").info)
    tracker.attach(console)
    ctx = SimpleNamespace(multinode=client, log=logging.getLogger("test"), timeouts=Timeouts())
    action = LavaTestShellAction({"definitions": []})
    bridge = action._start_bridge(ctx, console, tracker, [])  # type: ignore[arg-type]
    return console, bridge, results


def test_every_result_once_and_the_sync_result_in_its_test_run() -> None:
    console, bridge, results = wired(SyncClient())
    console.feed_output(
        "<LAVA_SIGNAL_STARTRUN 0_smoke u1>\r\n"
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot RESULT=pass MEASUREMENT=1.5 UNITS=s>\r\n"
        "<LAVA_MULTI_NODE> <LAVA_SYNC up>\r\n"
    )
    assert bridge.wait_idle(5)
    assert console.sent == ["<LAVA_SYNC_COMPLETE>"]
    console.feed_output(
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=speed RESULT=pass MEASUREMENT=fast>\r\n"
        "<LAVA_SIGNAL_ENDRUN 0_smoke u1>\r\n"
    )
    assert bridge.wait_idle(5)
    bridge.close()
    assert [(r["suite"], r["case"], r["result"], r["measurement"]) for r in results] == [
        ("0_smoke", "boot", "pass", 1.5),
        ("0_smoke", "multinode-sync-up", "pass", None),
        # an unusable measurement drops the measurement, not the result
        ("0_smoke", "speed", "pass", None),
        ("lava", "0_smoke", "pass", None),
    ]
    assert results[0]["units"] == "s"


def test_a_failed_sync_is_a_failed_result() -> None:
    from schemas.errors import MultinodeTimeout

    console, bridge, results = wired(SyncClient(MultinodeTimeout("lava-sync 'up': timed out")))
    console.feed_output("<LAVA_SIGNAL_STARTRUN 1_mn u2>\n<LAVA_MULTI_NODE> <LAVA_SYNC up>\n")
    assert bridge.wait_idle(5)
    bridge.close()
    assert console.sent[-1] == "<LAVA_SYNC_COMPLETE nack>"
    assert [(r["suite"], r["case"], r["result"]) for r in results] == [
        ("1_mn", "multinode-sync-up", "fail")
    ]


def test_cleaned_case_names_never_collide_and_long_ones_are_kept_truncated() -> None:
    results: list[dict[str, Any]] = []
    tracker = ResultTracker({}, results.append, logging.getLogger("test").info)
    console = ScriptedConsole("dut")
    tracker.attach(console)
    console.feed_output(
        "<LAVA_SIGNAL_STARTRUN 0_names u>\n"
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=ü-sync✓ RESULT=pass>\n"
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=-sync RESULT=fail>\n"
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=plain RESULT=pass>\n"
    )
    tracker.call_result({"case": "multinode-sync-" + "x" * 300, "result": "fail"})
    names = [r["case"] for r in results]
    assert len(set(names)) == 4 and names[2] == "plain"
    assert names[0].startswith("sync-") and names[1].startswith("sync-")
    assert len(names[3]) == 200 and names[3].startswith("multinode-sync-xxx")
    assert [r["result"] for r in results] == ["pass", "fail", "pass", "fail"]


class SlowSendClient(SyncClient):
    """A send that takes a while (a publish waiting for its confirm)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.go = threading.Event()

    def send(self, message_id: str, data: dict[str, str]) -> None:
        assert self.go.wait(5)


def test_results_are_in_console_order_even_when_a_send_ends_after_the_next_case() -> None:
    client = SlowSendClient()
    console, bridge, results = wired(client)
    # lava-send returns on the board at once: the next case is read while the send runs
    console.feed_output(
        "<LAVA_SIGNAL_STARTRUN 0_order u3>\r\n"
        "<LAVA_MULTI_NODE> <LAVA_SEND ready port=1>\r\n"
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=after-send RESULT=pass>\r\n"
    )
    assert results == []  # held back behind the send's own result
    client.go.set()
    assert bridge.wait_idle(5)
    console.feed_output("<LAVA_SIGNAL_ENDRUN 0_order u3>\r\n")
    bridge.close()
    assert [(r["suite"], r["case"]) for r in results] == [
        ("0_order", "multinode-send-ready"),
        ("0_order", "after-send"),
        ("lava", "0_order"),
    ]
