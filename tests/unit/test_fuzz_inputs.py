"""Property-based fuzzing of everything that comes from outside: zero crashes.

Job files (JSON and YAML), AMQP message bodies for every schema, console
signal lines (garbled, oversized, non-UTF-8, ``<LAVA_...>`` lookalikes in
test output). Every input either loads or is refused with a lavamq error
whose message says what is wrong; nothing else may escape.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_job_limits import check

from device_agent import signals
from device_agent.bridge import Bridge, SignalError, parse_signal
from device_agent.console import ScriptedConsole
from schemas.messages import console as console_messages
from schemas.messages import jobs as job_messages
from schemas.messages import multinode as multinode_messages
from schemas.messages.base import InvalidMessage, MessageSchema, decode

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCHEMAS: list[MessageSchema] = [
    *multinode_messages.BARRIER_SCHEMAS.values(),
    *multinode_messages.GROUP_QUEUE_SCHEMAS.values(),
    job_messages.SubJobAssignmentSchema(),
    job_messages.HostRegisterSchema(),
    job_messages.HostHeartbeatSchema(),
    job_messages.SubJobStateSchema(),
    job_messages.EventSchema(),
    console_messages.LogBatchSchema(),
    console_messages.TestResultSchema(),
]

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30)
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def _field_names(schema: MessageSchema) -> list[str]:
    return sorted(schema.fields)


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> tuple[MessageSchema, dict[str, Any]]:
    """Bodies that use the schema's own field names with arbitrary values."""
    schema = draw(st.sampled_from(SCHEMAS))
    names = _field_names(schema)
    body = draw(st.dictionaries(st.sampled_from(names), json_values, max_size=len(names)))
    if draw(st.booleans()):
        body[draw(st.text(min_size=1, max_size=8))] = draw(json_leaf)
    return schema, body


@FUZZ
@given(schema=st.sampled_from(SCHEMAS), raw=st.binary(max_size=300))
def test_fuzz_message_bytes_never_crash_decode(schema: MessageSchema, raw: bytes) -> None:
    try:
        decode(schema, raw)
    except InvalidMessage as exc:
        assert exc.message.startswith(schema.message_type + ":")


@FUZZ
@given(case=near_valid_bodies())
def test_fuzz_message_bodies_load_or_name_every_problem(
    case: tuple[MessageSchema, dict[str, Any]],
) -> None:
    schema, body = case
    try:
        text = json.dumps(body)
    except ValueError:
        return
    try:
        result = decode(schema, text.encode())
    except InvalidMessage as exc:
        # every problem is "field: message" (or the body-level problem)
        assert exc.message.startswith(schema.message_type + ":")
        assert len(exc.message) > len(schema.message_type) + 2
    else:
        assert isinstance(result, dict)


job_keys = st.sampled_from(
    [
        "job_name",
        "timeouts",
        "actions",
        "protocols",
        "device_type",
        "visibility",
        "priority",
        "device_group",
        "target_group",
        "role",
        "count",
        "lava-multinode",
        "roles",
        "deploy",
        "boot",
        "test",
        "command",
        "parameters",
        "minutes",
        "seconds",
    ]
)
job_trees = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(job_keys, children, max_size=5)
    ),
    max_leaves=30,
)


@FUZZ
@given(tree=job_trees, as_yaml=st.booleans())
def test_fuzz_job_files_load_or_raise_job_error(tree: Any, as_yaml: bool) -> None:
    import yaml

    try:
        text = yaml.safe_dump(tree) if as_yaml else json.dumps(tree)
    except ValueError:
        return
    check(text)  # within the memory and time limits, every refusal located


@FUZZ
@given(text=st.text(max_size=400))
def test_fuzz_job_file_garbage_text(text: str) -> None:
    check(text)


LOOKALIKES = [
    "<LAVA_MULTI_NODE> <LAVA_",
    "<LAVA_MULTI_NODE>",
    "<LAVA_SEND ",
    "<LAVA_SIGNAL_TESTCASE ",
    "<LAVA_SIGNAL_STARTRUN ",
    "<LAVA_WAIT_COMPLETE ",
    "SEND",
    "SYNC",
    "WAIT_ALL",
    "WAIT",
    "TEST_CASE_ID=",
    "RESULT=",
    "MEASUREMENT=",
    "=",
    ">",
    "<",
    " ",
    "\x1b[0m",
    "\r",
]
signal_lines = st.lists(
    st.one_of(st.sampled_from(LOOKALIKES), st.text(max_size=20)), max_size=25
).map("".join)


@FUZZ
@given(line=signal_lines)
def test_fuzz_signal_lines_parse_or_signal_error(line: str) -> None:
    try:
        signal = parse_signal(line)
    except SignalError as exc:
        assert str(exc).strip()
    else:
        if signal is not None:
            assert signal.api in ("SEND", "WAIT", "WAIT_ALL", "SYNC")
            assert signal.message_id and " " not in signal.message_id
    event = signals.parse_line(line)
    assert event is None or isinstance(event, signals.Event)


class RecordingClient:
    self_name = "fuzz-node"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def send(self, message_id: str, data: dict[str, str] | None = None) -> None:
        self.calls.append(("send", message_id, data))

    def wait(self, message_id: str, timeout: float | None = None) -> dict[str, dict[str, str]]:
        self.calls.append(("wait", message_id))
        return {}

    def wait_all(
        self, message_id: str, role: str | None = None, timeout: float | None = None
    ) -> dict[str, dict[str, str]]:
        self.calls.append(("wait_all", message_id, role))
        return {}

    def sync(self, message_id: str, timeout: float | None = None) -> None:
        self.calls.append(("sync", message_id))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=200),
            signal_lines.map(lambda s: s.encode("utf-8", "surrogatepass")),
            st.sampled_from([b"\xff\xfe", b"\n", b"\r\n", b"\x00"]),
        ),
        max_size=12,
    ),
    oversize=st.booleans(),
)
def test_fuzz_console_bytes_never_crash_the_bridge(chunks: list[bytes], oversize: bool) -> None:
    """Whatever a hostile DUT prints, the bridge speaks only as its own node and survives."""
    console = ScriptedConsole("fuzz")
    client = RecordingClient()
    console.signals.max_line = 300
    bridge = Bridge(console, client, timeout=1).start()
    try:
        for chunk in chunks:
            console.feed_output(chunk)
        if oversize:
            console.feed_output(b"<LAVA_MULTI_NODE> <LAVA_SEND big " + b"k=v " * 200 + b">\n")
        assert bridge.wait_idle(10)
    finally:
        bridge.close()
    assert all(isinstance(e, str) and e for e in bridge.errors)
    for call in client.calls:
        assert call[0] in ("send", "wait", "wait_all", "sync")
