"""The one reader of LAVA's console grammar (device_agent/signals.py), fuzzed with hypothesis."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent import signals
from device_agent.signals import (
    AttachData,
    AttachEnd,
    AttachStart,
    EndRun,
    EndTestCase,
    Invalid,
    MultinodeCall,
    RunnerExit,
    SignalReader,
    StartRun,
    StartTestCase,
    parse_line,
)
from device_agent.signals import (
    TestCase as CaseSignal,
)
from device_agent.signals import (
    TestEvent as EventSignal,
)
from device_agent.signals import (
    TestRaise as RaiseSignal,
)
from device_agent.signals import (
    TestReference as ReferenceSignal,
)
from device_agent.signals import (
    TestSet as SetSignal,
)
from schemas.lava_grammar import RUNNER_EXIT


def test_every_signal_of_the_grammar_is_a_typed_event() -> None:
    cases: list[tuple[str, Any]] = [
        ("<LAVA_SIGNAL_STARTRUN 0_smoke 1234-ab>", StartRun("0_smoke", "1234-ab")),
        ("<LAVA_SIGNAL_ENDRUN 0_smoke 1234-ab>", EndRun("0_smoke", "1234-ab")),
        (
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=speed RESULT=pass MEASUREMENT=12.5 UNITS=MB/s>",
            CaseSignal("speed", "pass", 12.5, "MB/s"),
        ),
        (
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=FAIL MEASUREMENT=fast>",
            CaseSignal("x", "fail", None, None, "fast"),
        ),
        ("<LAVA_SIGNAL_STARTTC boot>", StartTestCase("boot")),
        ("<LAVA_SIGNAL_ENDTC boot>", EndTestCase("boot")),
        ("<LAVA_SIGNAL_TESTSET START network>", SetSignal("network")),
        ("<LAVA_SIGNAL_TESTSET STOP>", SetSignal(None)),
        (
            "<LAVA_SIGNAL_TESTREFERENCE docs pass https://example.org/x>",
            ReferenceSignal("docs", "pass", "https://example.org/x"),
        ),
        ("<LAVA_SIGNAL_TESTRAISE disk is full>", RaiseSignal("disk is full")),
        ("<LAVA_SIGNAL_TESTEVENT firmware loaded>", EventSignal("firmware loaded")),
        ("<LAVA_TEST_RUNNER EXIT>", RunnerExit()),
        (
            "<LAVA_SIGNAL_ATTACH START boot text/plain 12 /var/log/boot log.txt>",
            AttachStart("boot", "text/plain", 12, "/var/log/boot log.txt"),
        ),
        ("<LAVA_SIGNAL_ATTACH START - - 0 dmesg>", AttachStart(None, None, 0, "dmesg")),
        ("<LAVA_SIGNAL_ATTACH DATA aGVsbG8K>", AttachData("aGVsbG8K")),
        ("<LAVA_SIGNAL_ATTACH END>", AttachEnd()),
        ("xx<LAVA_MULTI_NODE> <LAVA_WAIT go>", MultinodeCall("WAIT", "go")),
        (
            "<LAVA_MULTI_NODE> <LAVA_WAIT_ALL done client>",
            MultinodeCall("WAIT_ALL", "done", role="client"),
        ),
        (
            "<LAVA_MULTI_NODE> <LAVA_SEND ready ip=192.0.2.5 msg=hello world>",
            MultinodeCall("SEND", "ready", {"ip": "192.0.2.5", "msg": "hello world"}),
        ),
        ("plain output", None),
        ("<LAVA_WAIT_COMPLETE a:b=c>", None),
    ]
    for line, expected in cases:
        assert parse_line(line) == expected, line


def test_malformed_signals_are_invalid_events_saying_which_family() -> None:
    bad_case = parse_line("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=maybe>")
    assert isinstance(bad_case, Invalid) and bad_case.api is None
    bad_call = parse_line("<LAVA_MULTI_NODE> <LAVA_WAIT a b>")
    assert isinstance(bad_call, Invalid) and bad_call.api == "WAIT" and bad_call.blocking
    assert "expected one id" in bad_call.reason
    unknown = parse_line("<LAVA_MULTI_NODE> <LAVA_FROB x>")
    assert isinstance(unknown, Invalid) and not unknown.blocking
    assert isinstance(parse_line("<LAVA_SIGNAL_STARTRUN onlyone>"), Invalid)


def test_the_reader_gives_every_subscriber_the_events_in_order_and_lines_on_demand() -> None:
    reader = SignalReader()
    first: list[Any] = []
    second: list[Any] = []
    wants_lines = [False]
    reader.subscribe(lambda line, event: first.append(event), every_line=lambda: wants_lines[0])
    reader.subscribe(lambda line, event: second.append(event))
    reader.feed("noise\n<LAVA_SIGNAL_STARTRUN 0_a u>\n")
    wants_lines[0] = True
    reader.feed("plain\n<LAVA_MULTI_NODE> <LAVA_SYNC s>\n")
    assert first == [StartRun("0_a", "u"), None, MultinodeCall("SYNC", "s")]
    assert second == [StartRun("0_a", "u"), MultinodeCall("SYNC", "s")]


def test_lines_after_the_event_that_asks_for_them_in_the_same_chunk_are_delivered() -> None:
    # a test run's start and its first output (read by a parse: pattern) in one chunk
    reader = SignalReader()
    seen: list[tuple[str, Any]] = []
    running: list[str] = []

    def listener(line: str, event: Any) -> None:
        seen.append((line, event))
        if isinstance(event, StartRun):
            running.append(event.run_id)
        elif event is not None:
            running.clear()

    reader.subscribe(listener, every_line=lambda: bool(running))
    chunk = "before\n<LAVA_SIGNAL_STARTRUN 0_a u>\nRESULT: x FAILED\n<LAVA_SIGNAL_ENDRUN 0_a u>\n"
    reader.feed(chunk + "after\n")
    assert [line for line, event in seen if event is None] == ["RESULT: x FAILED"]


def test_an_oversized_signal_is_reported_once_its_line_ends() -> None:
    reader = SignalReader(max_line=100)
    seen: list[Any] = []
    reader.subscribe(lambda line, event: seen.append(event))
    reader.feed("<LAVA_MULTI_NODE> <LAVA_WAIT " + "x" * 200)
    reader.feed("y>\n<LAVA_MULTI_NODE> <LAVA_SYNC ok>\n")
    assert isinstance(seen[0], Invalid) and seen[0].api == "WAIT"
    assert "over the limit of 100" in seen[0].reason
    assert seen[1:] == [MultinodeCall("SYNC", "ok")]


# --- fuzzing -------------------------------------------------------------------

ident = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}", fullmatch=True)
value = st.from_regex(r"[A-Za-z0-9_.:/+-]{1,12}", fullmatch=True)
events = st.one_of(
    st.builds(StartRun, ident, ident),
    st.builds(EndRun, ident, ident),
    st.builds(
        CaseSignal,
        ident,
        st.sampled_from(signals.RESULT_VALUES),
        st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32)),
        st.one_of(st.none(), value),
    ),
    st.builds(StartTestCase, ident),
    st.builds(EndTestCase, ident),
    st.builds(SetSignal, st.one_of(st.none(), ident)),
    st.builds(ReferenceSignal, ident, st.sampled_from(signals.RESULT_VALUES), value),
    st.builds(MultinodeCall, st.just("SEND"), ident, st.dictionaries(ident, value, max_size=3)),
    st.builds(MultinodeCall, st.sampled_from(["WAIT", "SYNC"]), ident),
    st.builds(MultinodeCall, st.just("WAIT_ALL"), ident, st.just({}), st.one_of(st.none(), ident)),
    st.just(RunnerExit()),
)


def printed(event: Any) -> str:
    """The line a LAVA helper prints for ``event``."""
    if isinstance(event, (StartRun, EndRun)):
        name = "STARTRUN" if isinstance(event, StartRun) else "ENDRUN"
        return f"<LAVA_SIGNAL_{name} {event.run_id} {event.uuid}>"
    if isinstance(event, CaseSignal):
        text = f"TEST_CASE_ID={event.case} RESULT={event.result}"
        if event.measurement is not None:
            text += f" MEASUREMENT={event.measurement!r}"
        if event.units is not None:
            text += f" UNITS={event.units}"
        return f"<LAVA_SIGNAL_TESTCASE {text}>"
    if isinstance(event, (StartTestCase, EndTestCase)):
        name = "STARTTC" if isinstance(event, StartTestCase) else "ENDTC"
        return f"<LAVA_SIGNAL_{name} {event.case}>"
    if isinstance(event, SetSignal):
        return (
            f"<LAVA_SIGNAL_TESTSET START {event.name}>"
            if event.name
            else ("<LAVA_SIGNAL_TESTSET STOP>")
        )
    if isinstance(event, ReferenceSignal):
        return f"<LAVA_SIGNAL_TESTREFERENCE {event.case} {event.result} {event.url}>"
    if isinstance(event, MultinodeCall):
        args = [event.message_id, *(f"{k}={v}" for k, v in event.data.items())]
        if event.role:
            args.append(event.role)
        return f"<LAVA_MULTI_NODE> <LAVA_{event.api} {' '.join(args)}>"
    return RUNNER_EXIT


@settings(max_examples=200, deadline=None)
@given(event=events, noise=st.sampled_from(["", "+ ", "[  12.5] ", "root@dut:~# "]))
def test_fuzz_what_a_helper_prints_reads_back_as_the_same_event(event: Any, noise: str) -> None:
    assert parse_line(noise + printed(event)) == event


@settings(max_examples=300, deadline=None)
@given(line=st.text(alphabet=st.sampled_from(list("<>LAVA_SIGNMULTODE =x\t:é")), max_size=80))
def test_fuzz_any_text_gives_none_or_one_typed_event(line: str) -> None:
    event = parse_line(line)
    assert event is None or type(event).__module__ == signals.__name__


@settings(max_examples=150, deadline=None)
@given(
    evs=st.lists(events, min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_fuzz_chunk_boundaries_never_change_what_is_read(evs: list[Any], cuts: list[int]) -> None:
    stream = "".join(f"noise {i}\n{printed(e)}\n" for i, e in enumerate(evs))
    reader = SignalReader()
    seen: list[Any] = []
    reader.subscribe(lambda line, event: seen.append(event))
    at = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        reader.feed(stream[at:cut])
        at = cut
    reader.feed(stream[at:])
    assert seen == evs


#: what a lava-send value may hold: anything the console keeps (no newline, no
#: control character but TAB; the console removes those)
values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\t"),
    max_size=40,
)


def sent(key: str, value: str) -> str:
    """``key=value`` as lavamq's lava-send prints it (lava-multi-node-common)."""
    if ">" in value or value[:1] in (" ", "\t") or value[-1:] in (" ", "\t"):
        return f"{key}:esc={signals.escape(value)}"
    blank = min((value.find(b) for b in " \t" if b in value), default=-1)
    if blank >= 0 and "=" in value[blank:]:
        return f"{key}:esc={signals.escape(value)}"
    return f"{key}={value}"


@settings(max_examples=300, deadline=None)
@given(value=values.filter(bool), other=values.filter(bool))
def test_fuzz_any_value_sent_and_typed_back_arrives_raw(value: str, other: str) -> None:
    # lava-send writes a value raw or as key:esc=...; the dispatcher reads the raw value
    line = f"<LAVA_MULTI_NODE> <LAVA_SEND id {sent('k', value)} {sent('o', other)}>"
    call = parse_line(line)
    assert isinstance(call, MultinodeCall) and call.data == {"k": value, "o": other}
    # typed back, no line holds a signal, and each data line unescapes to the pair
    lines = signals.reply_lines("WAIT", {"n1": {"k": value, "o": other}})
    assert all(parse_line(typed) is None for typed in lines)
    data = [signals.unescape(typed.removeprefix("<LAVA_WAIT_DATA>")) for typed in lines[:-1]]
    assert data == [f"n1:k={value}", f"n1:o={other}"]
