"""Expect logic, cleaning and listeners, on the scripted fake and the pure helpers."""

from __future__ import annotations

import re
import threading

import pytest

from device_agent.console import (
    ConsoleClosed,
    ConsoleTimeout,
    ScriptedConsole,
    TextCleaner,
    strip_escapes,
)
from schemas.errors import InfrastructureError


def test_strip_escapes_removes_busybox_cursor_query_colours_and_cr() -> None:
    raw = "\x1b[1;32m/ # \x1b[0m\x1b[6n\r\nline\r\n\x1b]0;title\x07ok"
    assert strip_escapes(raw) == "/ # \nline\nok"


@pytest.mark.parametrize("cut", range(1, 12))
def test_cleaner_keeps_an_escape_split_across_reads_whole(cut: int) -> None:
    raw = b"abc\x1b[01;34mdef\x1b[6n\r\n"
    cleaner = TextCleaner()
    assert cleaner.feed(raw[:cut]) + cleaner.feed(raw[cut:]) == "abcdef\n"


def test_cleaner_reassembles_utf8_split_across_reads() -> None:
    data = "prompt é€\n".encode()
    cleaner = TextCleaner()
    out = "".join(cleaner.feed(data[i : i + 1]) for i in range(len(data)))
    assert out == "prompt é€\n"


def test_expect_returns_index_and_match_and_consumes() -> None:
    con = ScriptedConsole()
    con.feed_output("booting...\r\nlogin: ")
    index, match = con.expect(["Password:", "login:"], timeout=1)
    assert (index, match.group(0)) == (1, "login:")
    assert con.before == "booting...\n"
    # consumed: the same text is not matched twice
    with pytest.raises(ConsoleTimeout):
        con.expect("login:", timeout=0.05)


def test_expect_picks_the_earliest_match_not_the_first_pattern() -> None:
    con = ScriptedConsole()
    con.feed_output("aaa FIRST bbb SECOND")
    index, _ = con.expect([re.compile("SECOND"), "FIRST"], timeout=1)
    assert index == 1
    index, _ = con.expect([re.compile("SECOND"), "FIRST"], timeout=1)
    assert index == 0


def test_expect_timeout_names_console_patterns_and_last_output() -> None:
    con = ScriptedConsole(name="board-07")
    con.feed_output("Kernel panic - not syncing\r\n")
    with pytest.raises(ConsoleTimeout) as info:
        con.expect(["login:", r"\$ "], timeout=0.05)
    message = str(info.value)
    assert "board-07" in message
    assert "'login:'" in message and "'\\\\$ '" in message
    assert "Kernel panic" in message
    assert isinstance(info.value, InfrastructureError)


def test_expect_wakes_up_when_output_arrives_from_another_thread() -> None:
    con = ScriptedConsole()
    timer = threading.Timer(0.05, con.feed_output, args=("ready> ",))
    timer.start()
    index, _ = con.expect("ready> ", timeout=5)
    timer.join()
    assert index == 0


def test_pattern_split_across_chunks_is_found() -> None:
    con = ScriptedConsole()
    for ch in "xx lava-prompt# ":
        con.feed_output(ch)
    assert con.read_until_prompt(1, prompts=["lava-prompt# "]) == "xx "


def test_closed_console_raises_closed_with_reason() -> None:
    con = ScriptedConsole(name="c1")
    con._mark_closed("socket disconnected")
    with pytest.raises(ConsoleClosed, match=r"c1.*socket disconnected.*'login:'"):
        con.expect("login:", timeout=5)
    with pytest.raises(ConsoleClosed):
        con.sendline("x")


def test_listeners_get_raw_bytes_and_input() -> None:
    con = ScriptedConsole(script=[("^uname$", "Linux\r\n# ")], prompts=["# "])
    raw: list[bytes] = []
    sent: list[str] = []
    con.add_listener(raw.append)
    con.add_input_listener(sent.append)
    con.sendline("uname")
    assert con.read_until_prompt(1) == "Linux\n"
    assert raw == [b"Linux\r\n# "]
    assert sent == ["uname\n"]
    con.remove_listener(raw.append)
    con.feed_output("more")
    assert raw == [b"Linux\r\n# "]


def test_failing_listener_does_not_break_the_console() -> None:
    con = ScriptedConsole()

    def broken(_: bytes) -> None:
        raise RuntimeError("boom")

    con.add_listener(broken)
    con.feed_output("ok# ")
    assert con.expect("ok# ", 1)[0] == 0


def test_run_returns_output_and_exit_code_with_echo() -> None:
    con = ScriptedConsole(
        script=[
            (r"^ls /nope; echo LAVAMQ-RC-1=\$\?$", "ls: /nope: No such file\r\nLAVAMQ-RC-1=2\r\n# ")
        ],
        prompts=["# "],
        echo=True,
    )
    output, rc = con.run("ls /nope", timeout=1)
    assert rc == 2
    assert output == "ls: /nope: No such file"


def test_buffer_is_bounded() -> None:
    con = ScriptedConsole()
    con.max_buffer = 1000
    con.feed_output("x" * 5000)
    assert len(con.flush()) == 1000
