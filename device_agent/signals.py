"""LAVA's console grammar, read in one place: console lines in, typed events out.

A DUT talks to the dispatcher only by printing lines. LAVA's grammar has:

* MultiNode calls: ``<LAVA_MULTI_NODE> <LAVA_SEND id key=value ...>``,
  ``<LAVA_WAIT id>``, ``<LAVA_WAIT_ALL id [role]>``, ``<LAVA_SYNC id>``
  (answered with ``<LAVA_<API>_COMPLETE ...>``, see :func:`format_reply`);
* test-shell signals ``<LAVA_SIGNAL_NAME params>``: ``STARTRUN``/``ENDRUN``
  (a test definition's frame), ``TESTCASE``, ``STARTTC``/``ENDTC``,
  ``TESTSET START name``/``STOP``, ``TESTREFERENCE``, ``TESTRAISE``,
  ``TESTEVENT``, and lavamq's ``ATTACH START``/``DATA``/``END`` (a file of
  ``lava-test-case-attach``/``lava-test-run-attach``, base64 over the console);
* the runner's last line ``<LAVA_TEST_RUNNER EXIT>``.

:func:`parse_line` turns one line into one event (or ``None``);
:class:`SignalReader` reassembles console text into lines once per console
and hands each subscriber (the MultiNode bridge, the result tracker) every
event in console order.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas.errors import JobError
from schemas.lava_grammar import (
    MAX_SIGNAL_CHARS,
    MULTINODE_MARK,
    MULTINODE_RE,
    RUNNER_EXIT,
    SIGNAL_MARK,
    SIGNAL_RE,
)

log = logging.getLogger(__name__)

#: the SEND parameters split at the blanks before each ``key=`` (or lavamq's
#: ``key:esc=``), so values may hold spaces (and other whitespace, kept as it is)
PARAM_SPLIT_RE = re.compile(r"[ \t]+(?=[\w.-]+(?::esc)?=)")
BLANKS = " \t"
#: a SEND key whose value lavamq's lava-send wrote with :func:`escape` (``key:esc=...``)
ESCAPED_KEY_SUFFIX = ":esc"
#: what :func:`escape` writes as printf's ``%b`` octal escapes, and what it always writes
_ESCAPED = {"\\": "\\0134", "<": "\\0074", ">": "\\0076", " ": "\\0040", "\t": "\\0011"}
#: what the dispatcher escapes in the values it types (a typed line never holds a signal)
TYPED_ESCAPES = "\\<>"
_ESCAPE_RE = re.compile(r"\\0([0-7]{1,3})")
_API_GUESS_RE = re.compile(r"<LAVA_MULTI_NODE> <LAVA_(\w+)")
APIS = ("SEND", "WAIT", "WAIT_ALL", "SYNC")
BLOCKING = ("WAIT", "WAIT_ALL", "SYNC")
RESULT_VALUES = ("pass", "fail", "skip", "unknown")


class SignalError(JobError):
    """A malformed or oversized MultiNode signal printed on the console."""


@dataclass(frozen=True)
class MultinodeCall:
    """``lava-send``/``lava-wait``/``lava-wait-all``/``lava-sync`` as printed by the helper."""

    api: str
    message_id: str
    data: dict[str, str] = field(default_factory=dict)
    role: str | None = None

    @property
    def blocking(self) -> bool:
        """Whether the call waits for the group (the helper blocks on its reply)."""
        return self.api in BLOCKING

    @property
    def operation(self) -> str:
        """The helper's name, as errors and results call it (``lava-wait-all``)."""
        return operation_name(self.api)


@dataclass(frozen=True)
class TestCase:
    """``lava-test-case``'s result (``bad_measurement``: a measurement that is no number)."""

    case: str
    result: str
    measurement: float | None = None
    units: str | None = None
    bad_measurement: str | None = None


@dataclass(frozen=True)
class StartRun:
    """A test definition's run.sh started (``<LAVA_SIGNAL_STARTRUN id uuid>``)."""

    run_id: str
    uuid: str


@dataclass(frozen=True)
class EndRun:
    """A test definition's run.sh reached its end (``<LAVA_SIGNAL_ENDRUN id uuid>``)."""

    run_id: str
    uuid: str


@dataclass(frozen=True)
class StartTestCase:
    """``lava-test-case --shell`` started its command (a log marker)."""

    case: str


@dataclass(frozen=True)
class EndTestCase:
    """``lava-test-case --shell``'s command ended (a log marker)."""

    case: str


@dataclass(frozen=True)
class TestSet:
    """``lava-test-set start NAME`` (``name`` set) or ``lava-test-set stop``."""

    name: str | None


@dataclass(frozen=True)
class TestReference:
    """``lava-test-reference``: a result that points at a URL."""

    case: str
    result: str
    url: str


@dataclass(frozen=True)
class TestRaise:
    """``lava-test-raise MESSAGE``: the test asks for the job to end (LAVA's TestError)."""

    message: str


@dataclass(frozen=True)
class TestEvent:
    """``lava-test-event``: a line for the job log's event level."""

    text: str


@dataclass(frozen=True)
class AttachStart:
    """A file attached to a test case (``case``) or to the test run (``case`` None) begins.

    Printed by ``lava-test-case-attach``/``lava-test-run-attach`` as
    ``<LAVA_SIGNAL_ATTACH START <case|-> <mime|-> <bytes> <pathname>>``, then one
    ``<LAVA_SIGNAL_ATTACH DATA <base64>>`` per line of the file's base64 and
    ``<LAVA_SIGNAL_ATTACH END>``.
    """

    case: str | None
    mime_type: str | None
    size: int
    pathname: str


@dataclass(frozen=True)
class AttachData:
    """One line of an attachment's base64."""

    chunk: str


@dataclass(frozen=True)
class AttachEnd:
    """The attachment's last line has been printed."""


@dataclass(frozen=True)
class RunnerExit:
    """``<LAVA_TEST_RUNNER EXIT>``: every definition has run."""


@dataclass(frozen=True)
class Invalid:
    """A signal that could not be read; ``api`` is set for a MultiNode call."""

    reason: str
    api: str | None = None

    @property
    def blocking(self) -> bool:
        """Whether the helper waits for a reply (it gets an error one)."""
        return self.api in BLOCKING


Event = (
    MultinodeCall
    | TestCase
    | StartRun
    | EndRun
    | StartTestCase
    | EndTestCase
    | TestSet
    | TestReference
    | TestRaise
    | TestEvent
    | AttachStart
    | AttachData
    | AttachEnd
    | RunnerExit
    | Invalid
)


def operation_name(api: str) -> str:
    """``SEND`` → ``lava-send``; the helper a user typed, for messages."""
    return "lava-" + api.lower().replace("_", "-") if api else "MultiNode signal"


def quote(text: str, limit: int = 120) -> str:
    """Console text for an error message, without its angle brackets (no signal in errors)."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown.replace("<", "(").replace(">", ")"))


def escape(text: str, chars: str = "\\<> \t") -> str:
    """``text`` with each of ``chars`` as a ``%b`` octal escape (``>`` → ``\\0076``).

    The helpers and the bridge carry values LAVA's one-line grammar cannot
    (a ``>``, a blank before ``=``) this way; ``printf '%b'`` on the board and
    :func:`unescape` here give the raw bytes back. A backslash is always
    escaped, so every backslash in escaped text starts an escape.
    """
    return "".join(_ESCAPED.get(ch, ch) if ch in chars else ch for ch in text)


def unescape(text: str) -> str:
    """The raw text of :func:`escape`'s output (``\\0ooo`` → the character)."""
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), text)


def split_params(text: str) -> list[str]:
    """``a=1 b=two words c=3`` → ``['a=1', 'b=two words', 'c=3']``."""
    return [item for item in PARAM_SPLIT_RE.split(text.strip(BLANKS)) if item]


def parse_multinode(line: str, *, max_chars: int = MAX_SIGNAL_CHARS) -> MultinodeCall | None:
    """The MultiNode call in ``line``; None if there is none; SignalError if bad."""
    start = line.find(MULTINODE_MARK)
    if start < 0:
        return None
    text = line[start:]
    match = MULTINODE_RE.search(text)
    guess = _API_GUESS_RE.match(text)
    api = match.group(1) if match else (guess.group(1) if guess else "")
    if len(text) > max_chars:
        raise SignalError(
            f"{operation_name(api)}: signal of {len(text)} characters is over the limit "
            f"of {max_chars}",
            api=api,
        )
    if match is None:
        raise SignalError(
            f"{operation_name(api)}: malformed MultiNode signal {quote(text)}", api=api
        )
    params = match.group(2).strip(BLANKS)
    if api not in APIS:
        raise SignalError(f"unknown MultiNode call LAVA_{api} in {quote(text)}", api=api)
    if api == "SEND":
        items = split_params(params)
        message_id, rest = items[0], items[1:]
        if " " in message_id:
            message_id, _, extra = message_id.partition(" ")
            rest = [*extra.split(), *rest]
        data: dict[str, str] = {}
        for item in rest:
            key, sep, value = item.partition("=")
            if key.endswith(ESCAPED_KEY_SUFFIX):
                key, value = key[: -len(ESCAPED_KEY_SUFFIX)], unescape(value)
            if sep and key:
                data[key] = value
        _check_id(api, message_id)
        return MultinodeCall(api, message_id, data)
    tokens = params.split()
    allowed = 2 if api == "WAIT_ALL" else 1
    if not 1 <= len(tokens) <= allowed:
        wanted = "an id and an optional role" if allowed == 2 else "one id"
        raise SignalError(f"{operation_name(api)}: expected {wanted}, got {quote(params)}", api=api)
    _check_id(api, tokens[0])
    return MultinodeCall(api, tokens[0], role=tokens[1] if len(tokens) == 2 else None)


def _check_id(api: str, message_id: str) -> None:
    if "=" in message_id:
        raise SignalError(
            f"{operation_name(api)}: message id {quote(message_id)} contains '='", api=api
        )


def _test_case(params: str) -> TestCase | Invalid:
    fields: dict[str, str] = {}
    for item in split_params(params):
        key, _, value = item.partition("=")
        fields[key] = value.strip()
    case = fields.get("TEST_CASE_ID", "")
    result = fields.get("RESULT", "").lower()
    if not case or result not in RESULT_VALUES:
        return Invalid(f"malformed test case signal {quote(params)}")
    measurement: float | None = None
    bad: str | None = None
    if "MEASUREMENT" in fields:
        try:
            measurement = float(fields["MEASUREMENT"])
        except ValueError:
            # the result stands; only the measurement is unusable
            bad = fields["MEASUREMENT"]
    return TestCase(case, result, measurement, fields.get("UNITS"), bad)


def _lava_signal(name: str, params: str) -> Event:
    words = params.split()
    if name == "TESTCASE":
        return _test_case(params)
    if name in ("STARTRUN", "ENDRUN"):
        if len(words) != 2:
            return Invalid(f"{name} needs a test run id and a uuid, got {quote(params)}")
        return StartRun(*words) if name == "STARTRUN" else EndRun(*words)
    if name in ("STARTTC", "ENDTC") and words:
        return StartTestCase(words[0]) if name == "STARTTC" else EndTestCase(words[0])
    if name == "TESTSET" and words[:1] == ["START"] and len(words) >= 2:
        return TestSet(" ".join(words[1:]))
    if name == "TESTSET" and words == ["STOP"]:
        return TestSet(None)
    if name == "TESTREFERENCE" and len(words) == 3:
        return TestReference(*words)
    if name == "TESTRAISE":
        return TestRaise(params.strip())
    if name == "TESTEVENT":
        return TestEvent(params.strip())
    if name == "ATTACH":
        return _attach(params)
    return Invalid(f"unknown or malformed signal LAVA_SIGNAL_{name} {quote(params)}")


_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _attach(params: str) -> Event:
    words = params.split(" ", 4)
    if words[:1] == ["DATA"] and len(words) == 2 and _BASE64_RE.fullmatch(words[1]):
        return AttachData(words[1])
    if words == ["END"]:
        return AttachEnd()
    if words[:1] == ["START"] and len(words) == 5 and words[3].isdigit() and words[4]:
        case, mime = (None if w == "-" else w for w in words[1:3])
        return AttachStart(case, mime, int(words[3]), words[4])
    return Invalid(f"malformed attachment signal {quote(params)}")


def parse_line(line: str, *, max_chars: int = MAX_SIGNAL_CHARS) -> Event | None:
    """The event one console line carries, wherever on the line it starts; None if none."""
    if MULTINODE_MARK in line:
        try:
            return parse_multinode(line, max_chars=max_chars)
        except SignalError as exc:
            return Invalid(exc.message, str(exc.details.get("api", "")))
    at = line.find(SIGNAL_MARK)
    if at >= 0:
        match = SIGNAL_RE.match(line, at)
        if match is None:
            return Invalid(f"malformed signal {quote(line[at:])}")
        return _lava_signal(match.group(1), match.group(2) or "")
    if RUNNER_EXIT in line:
        return RunnerExit()
    return None


def signal_start(line: str) -> int:
    """Where the first signal of ``line`` starts (-1: none)."""
    found = [i for i in (line.find(MULTINODE_MARK), line.find(SIGNAL_MARK)) if i >= 0]
    return min(found) if found else -1


# --- the reply the dispatcher types back ------------------------------------


def reply_lines(
    api: str, data: dict[str, dict[str, str]] | None = None, *, nack: bool = False
) -> list[str]:
    """What the dispatcher types back for a blocking call: data lines, then LAVA's reply.

    Each received pair first gets a line of its own, ``<LAVA_WAIT_DATA>node:key=value``
    to the end of the line, with ``\\``, ``<`` and ``>`` escaped (:func:`escape`):
    lavamq's helpers unescape these and write them to the cache, so a value arrives
    byte for byte and can never read as another sender's pair. Then LAVA's one-line
    reply (``<LAVA_WAIT_COMPLETE node:key=value ...>``, values raw, as LAVA types it)
    ends the answer; it is all a helper written for LAVA reads. No typed line can hold
    a signal (a value with ``>`` or ``<LAVA_`` is escaped in the one-line reply too),
    so its echo on the board's console is never read as one.
    """
    if nack:
        return [f"<LAVA_{api}_COMPLETE nack>"]
    pairs = [
        (node, key, value)
        for node, values in sorted((data or {}).items())
        for key, value in values.items()
    ]
    lines = [
        f"<LAVA_{api}_DATA>{node}:{key}={escape(value, TYPED_ESCAPES)}"
        for node, key, value in pairs
    ]
    items = [f"{node}:{key}={_one_line_value(value)}" for node, key, value in pairs]
    lines.append(f"<LAVA_{api}_COMPLETE {' '.join(items)}>" if items else f"<LAVA_{api}_COMPLETE>")
    return lines


def _one_line_value(value: str) -> str:
    """A value as LAVA's one-line reply carries it: raw, unless it could end or forge a
    signal (only lavamq's lava-send can send such a value)."""
    if ">" in value or "<LAVA_" in value:
        return escape(value, TYPED_ESCAPES)
    return value


def format_reply(
    api: str, data: dict[str, dict[str, str]] | None = None, *, nack: bool = False
) -> str:
    """LAVA's one-line reply alone (``<LAVA_WAIT_COMPLETE n1:k=v ...>``, or nack)."""
    return reply_lines(api, data, nack=nack)[-1]


def case_name(api: str, message_id: str) -> str:
    """The test case LAVA records for a MultiNode call: ``multinode-wait_all-<id>``, lower-case."""
    return f"multinode-{api}-{message_id}".lower()


# --- reading a console --------------------------------------------------------

#: ``listener(line, event)``: ``event`` is None for a line without a signal
LineListener = Callable[[str, Event | None], None]


@dataclass
class _Subscriber:
    listener: LineListener
    every_line: Callable[[], bool]


class SignalReader:
    """Console text (already cleaned of escapes and CRs) in; lines and events out.

    One per console: the MultiNode bridge and the result tracker subscribe to
    the same reader, so the stream is split into lines and parsed once, and
    every subscriber sees every event in console order (the first subscriber
    first). Lines without a signal are handed out only while a subscriber's
    ``every_line()`` is true (a ``parse: pattern`` reads them); a console
    flood with no signal costs one substring search per chunk.

    A line over ``max_line`` characters is not kept: if it held a signal,
    an :class:`Invalid` event saying so is delivered when the line ends.
    """

    def __init__(self, max_line: int = MAX_SIGNAL_CHARS) -> None:
        self.max_line = max_line
        self._subscribers: list[_Subscriber] = []
        self._partial = ""
        self._discarding: str | None = None
        #: RLock: a listener may (un)subscribe; a scripted console may feed from two threads
        self._lock = threading.RLock()

    def subscribe(
        self, listener: LineListener, *, every_line: Callable[[], bool] | None = None
    ) -> None:
        """Hand ``listener`` every event (and every line while ``every_line()``)."""
        with self._lock:
            self._subscribers = [
                *self._subscribers,
                _Subscriber(listener, every_line or (lambda: False)),
            ]

    def unsubscribe(self, listener: LineListener) -> None:
        """Stop calling a listener."""
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s.listener != listener]

    def feed(self, text: str) -> None:
        """One chunk of cleaned console text."""
        with self._lock:
            subscribers = self._subscribers
            if not subscribers:
                self._partial = ""
                return
            text = self._partial + text
            every = any(s.every_line() for s in subscribers)
            if self._discarding is None and not every and "<LAVA_" not in text:
                self._partial = text[text.rfind("\n") + 1 :]
                self._cap_partial()
                return
            lines = text.split("\n")
            self._partial = lines.pop()
            for line in lines:
                if self._discarding is not None:
                    api, self._discarding = self._discarding, None
                    self._deliver(
                        subscribers,
                        line,
                        Invalid(
                            f"{operation_name(api)}: signal is over the limit of "
                            f"{self.max_line} characters",
                            api,
                        ),
                    )
                    continue
                event = parse_line(line, max_chars=self.max_line)
                if event is not None:
                    self._deliver(subscribers, line, event)
                    # an event may start (or end) what reads plain lines: a test run's
                    # start and its first output lines often come in one chunk
                    every = any(s.every_line() for s in subscribers)
                elif every:
                    self._deliver(subscribers, line, event)
            self._cap_partial()

    def _cap_partial(self) -> None:
        if len(self._partial) <= self.max_line + len(MULTINODE_MARK):
            return
        start = self._partial.find(MULTINODE_MARK)
        if start >= 0:
            guess = _API_GUESS_RE.match(self._partial[start:])
            self._discarding = guess.group(1) if guess else ""
            self._partial = ""
        else:
            # keep enough to see a signal that starts at the end
            self._partial = self._partial[-len(MULTINODE_MARK) :]

    @staticmethod
    def _deliver(subscribers: list[_Subscriber], line: str, event: Event | None) -> None:
        for sub in subscribers:
            if event is not None or sub.every_line():
                try:
                    sub.listener(line, event)
                except Exception:
                    log.exception("signal listener %r failed on %r", sub.listener, line[:200])
