"""The console bridge: MultiNode signals on a DUT's console become client calls.

A ``lava-*`` helper on the device prints one line such as
``<LAVA_MULTI_NODE> <LAVA_WAIT server-ready>``; the bridge sees it in the
console's output (it is an output listener), performs the call through a
``MultinodeClient`` on behalf of the node the dispatcher assigned — the
identity never comes from the console text — and types the reply
(``<LAVA_WAIT_COMPLETE node:key=value ...>`` or the ``nack`` form) back.

Threads: the console's reader thread only reassembles lines and queues the
signals; one worker thread per bridge makes the calls in the order the node
issued them (a ``lava-send`` followed by a ``lava-wait`` stays ordered).

Echo: on a pty the dispatcher's typing is echoed. The replies hold
``<LAVA_..._COMPLETE`` and never ``<LAVA_MULTI_NODE>``, so they cannot be
taken for signals; and when the dispatcher itself types a line that holds a
signal (``echo "<LAVA_MULTI_NODE> ..."`` at a prompt), its echo is
recognised (the bridge listens to the console's input too) and skipped, so
only the command's own output counts.

Malformed or oversized signals (over 0xFFFE characters, LAVA's limit) are
reported in the log and on the console (as a shell comment line, harmless
at a prompt and skipped by a waiting helper); a blocking call also gets its
``nack``, so the helper exits 1 and the job goes on.

Test results: the bridge hands ``on_result`` (if given) the
``multinode-lava_sync-<id>`` pass/fail result of each ``lava-sync``, the one
result only it knows of. It does not read ``<LAVA_SIGNAL_TESTCASE ...>`` or
the test-run frames: ``parse_result`` below is the one parser of those
signals, and the dispatcher's result tracker (which also knows the test
run in progress and its ``parse:`` patterns) is the one reader that calls it.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from device_agent.console import ConsoleBase, TextCleaner
from schemas.errors import (
    GroupFailed,
    JobError,
    LavamqBug,
    LavamqError,
    MultinodeTimeout,
    classify,
)

logger = logging.getLogger(__name__)

#: LAVA's regular expression for a MultiNode signal
SIGNAL_RE = re.compile(r"<LAVA_MULTI_NODE> <LAVA_(\S+) ([^>]+)>")
MULTINODE_MARK = "<LAVA_MULTI_NODE>"
#: LAVA rejects signals longer than this
MAX_SIGNAL_CHARS = 0xFFFE
#: the SEND parameters split before each ``key=`` so values may hold spaces
PARAM_SPLIT_RE = re.compile(r"\s+(?=[\w.-]+=)")
APIS = ("SEND", "WAIT", "WAIT_ALL", "SYNC")
BLOCKING = ("WAIT", "WAIT_ALL", "SYNC")

TESTCASE_RE = re.compile(r"<LAVA_SIGNAL_TESTCASE ([^>]*)>")
STARTRUN_RE = re.compile(r"<LAVA_SIGNAL_STARTRUN (\S+) (\S+)>")
ENDRUN_RE = re.compile(r"<LAVA_SIGNAL_ENDRUN (\S+) (\S+)>")
RESULT_VALUES = ("pass", "fail", "skip", "unknown")


class SignalError(JobError):
    """A malformed or oversized MultiNode signal printed on the console."""


@dataclass(frozen=True)
class Signal:
    api: str
    message_id: str
    data: dict[str, str] = field(default_factory=dict)
    role: str | None = None

    @property
    def blocking(self) -> bool:
        return self.api in BLOCKING

    @property
    def operation(self) -> str:
        return "lava-" + self.api.lower().replace("_", "-")


class JobLogLike(Protocol):
    def info(self, message: str) -> Any: ...
    def warning(self, message: str) -> Any: ...
    def error(self, message: str) -> Any: ...


def split_send_params(text: str) -> list[str]:
    return [item for item in PARAM_SPLIT_RE.split(text.strip()) if item]


def parse_signal(line: str, *, max_chars: int = MAX_SIGNAL_CHARS) -> Signal | None:
    """The MultiNode signal in ``line``; None if there is none; SignalError if bad."""
    start = line.find(MULTINODE_MARK)
    if start < 0:
        return None
    text = line[start:]
    match = SIGNAL_RE.search(text)
    api_guess = re.match(r"<LAVA_MULTI_NODE> <LAVA_(\w+)", text)
    api = match.group(1) if match else (api_guess.group(1) if api_guess else "")
    if len(text) > max_chars:
        raise SignalError(
            f"{_operation(api)}: signal of {len(text)} characters is over the limit of {max_chars}",
            api=api,
        )
    if match is None:
        raise SignalError(f"{_operation(api)}: malformed MultiNode signal {_quote(text)}", api=api)
    params = match.group(2).strip()
    if api not in APIS:
        raise SignalError(f"unknown MultiNode call LAVA_{api} in {_quote(text)}", api=api)
    if api == "SEND":
        items = split_send_params(params)
        message_id, rest = items[0], items[1:]
        if " " in message_id:
            message_id, _, extra = message_id.partition(" ")
            rest = [*extra.split(), *rest]
        data: dict[str, str] = {}
        for item in rest:
            key, sep, value = item.partition("=")
            if sep and key:
                data[key] = value
        _check_id(api, message_id)
        return Signal(api, message_id, data)
    tokens = params.split()
    allowed = 2 if api == "WAIT_ALL" else 1
    if not 1 <= len(tokens) <= allowed:
        wanted = "an id and an optional role" if allowed == 2 else "one id"
        raise SignalError(
            f"{_operation(api)}: expected {wanted}, got {_quote(params)}",
            api=api,
        )
    _check_id(api, tokens[0])
    return Signal(api, tokens[0], role=tokens[1] if len(tokens) == 2 else None)


def _check_id(api: str, message_id: str) -> None:
    if "=" in message_id:
        raise SignalError(
            f"{_operation(api)}: message id {_quote(message_id)} contains '='", api=api
        )


def _operation(api: str) -> str:
    return "lava-" + api.lower().replace("_", "-") if api else "MultiNode signal"


def _quote(text: str, limit: int = 120) -> str:
    """Quote console text in an error without its angle brackets (no signal in errors)."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown.replace("<", "(").replace(">", ")"))


def _escape_value(value: str) -> str:
    # a reply line cannot hold '>' (it ends the reply) or a newline
    return value.replace("%", "%25").replace(">", "%3E").replace("\n", "%0A")


def format_reply(
    api: str, data: dict[str, dict[str, str]] | None = None, *, nack: bool = False
) -> str:
    """``<LAVA_WAIT_COMPLETE n1:k=v ...>``, ``<LAVA_SYNC_COMPLETE>`` or the nack form."""
    if nack:
        return f"<LAVA_{api}_COMPLETE nack>"
    items = [
        f"{node}:{key}={_escape_value(value)}"
        for node, values in sorted((data or {}).items())
        for key, value in values.items()
    ]
    return f"<LAVA_{api}_COMPLETE {' '.join(items)}>" if items else f"<LAVA_{api}_COMPLETE>"


def parse_result(line: str, suite: str | None = None) -> dict[str, Any] | None:
    """A result record from a test-case or test-run signal, or None.

    ``{"kind": "testcase", suite, case, result[, measurement][, units]}`` (with
    ``bad_measurement`` instead of ``measurement`` when it is not a number),
    ``{"kind": "startrun"|"endrun", suite, uuid}`` or ``{"kind": "invalid", line}``.
    """
    match = TESTCASE_RE.search(line)
    if match:
        fields: dict[str, str] = {}
        for item in split_send_params(match.group(1)):
            key, _, value = item.partition("=")
            fields[key] = value.strip()
        case = fields.get("TEST_CASE_ID", "")
        result = fields.get("RESULT", "").lower()
        if not case or result not in RESULT_VALUES:
            return {"kind": "invalid", "line": line.strip()}
        record: dict[str, Any] = {
            "kind": "testcase",
            "suite": suite,
            "case": case,
            "result": result,
        }
        if "MEASUREMENT" in fields:
            try:
                record["measurement"] = float(fields["MEASUREMENT"])
            except ValueError:
                # the result stands; only the measurement is unusable
                record["bad_measurement"] = fields["MEASUREMENT"]
        if "UNITS" in fields:
            record["units"] = fields["UNITS"]
        return record
    match = STARTRUN_RE.search(line)
    if match:
        return {"kind": "startrun", "suite": match.group(1), "uuid": match.group(2)}
    match = ENDRUN_RE.search(line)
    if match:
        return {"kind": "endrun", "suite": match.group(1), "uuid": match.group(2)}
    return None


class Bridge:
    """Answers one node's MultiNode signals on its console through its client."""

    def __init__(
        self,
        console: ConsoleBase,
        client: Any,
        *,
        log: JobLogLike | logging.Logger | None = None,
        timeout: float | None = None,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        on_failure: Callable[[LavamqError], None] | None = None,
        max_signal: int = MAX_SIGNAL_CHARS,
    ) -> None:
        self.console = console
        self.client = client
        self.node = str(getattr(client, "self_name", "?"))
        self.log: JobLogLike | logging.Logger = log or logger
        self.timeout = timeout
        self.on_result = on_result
        self.on_failure = on_failure
        self.max_signal = max_signal
        #: every problem reported, for callers and tests
        self.errors: list[str] = []
        self.calls = 0
        self._cleaner = TextCleaner(console.encoding)
        self._partial = ""
        self._discarding: str | None = None
        self._typed: deque[str] = deque(maxlen=64)
        self._typed_lock = threading.Lock()
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._idle = threading.Condition()
        self._pending = 0

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> Bridge:
        self._worker = threading.Thread(target=self._work, name=f"bridge-{self.node}", daemon=True)
        self._worker.start()
        self.console.add_input_listener(self.note_input)
        self.console.add_listener(self.feed)
        return self

    def close(self, timeout: float = 5.0) -> None:
        self.console.remove_listener(self.feed)
        self.console.remove_input_listener(self.note_input)
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout)
            self._worker = None

    def __enter__(self) -> Bridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_idle(self, timeout: float) -> bool:
        """True once every queued call has been answered (for tests and shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    # --- console side (reader thread) -------------------------------------------
    def note_input(self, text: str) -> None:
        """What the dispatcher types: remembered so that its echo is not taken as a signal."""
        for line in text.splitlines():
            if MULTINODE_MARK in line:
                with self._typed_lock:
                    self._typed.append(line.strip())

    def _is_echo(self, line: str) -> bool:
        stripped = line.strip()
        with self._typed_lock:
            for typed in self._typed:
                if typed and stripped.endswith(typed):
                    self._typed.remove(typed)
                    return True
        return False

    def feed(self, data: bytes) -> None:
        """Output listener: reassemble lines from raw chunks and handle each."""
        text = self._cleaner.feed(data)
        if not text:
            return
        text = self._partial + text
        if self._discarding is None and MULTINODE_MARK not in text:
            # no line of this chunk holds a signal (handle_line would skip them
            # all): keep only the partial last line
            self._partial = text[text.rfind("\n") + 1 :]
            lines: list[str] = []
        else:
            lines = text.split("\n")
            self._partial = lines.pop()
        for line in lines:
            if self._discarding is not None:
                api, self._discarding = self._discarding, None
                error = SignalError(
                    f"{_operation(api)}: signal is over the limit of {self.max_signal} characters",
                    api=api,
                )
                self._submit(lambda error=error: self._report(error))  # type: ignore[misc]
                continue
            self.handle_line(line)
        if len(self._partial) > self.max_signal + len(MULTINODE_MARK):
            start = self._partial.find(MULTINODE_MARK)
            if start >= 0:
                guess = re.match(r"<LAVA_MULTI_NODE> <LAVA_(\w+)", self._partial[start:])
                self._discarding = guess.group(1) if guess else ""
                self._partial = ""
            else:
                # keep enough to see a signal that starts at the end
                self._partial = self._partial[-len(MULTINODE_MARK) :]

    def handle_line(self, line: str) -> None:
        """One complete console line (already cleaned of escapes and CRs)."""
        if MULTINODE_MARK not in line or self._is_echo(line):
            return
        try:
            signal = parse_signal(line, max_chars=self.max_signal)
        except SignalError as exc:
            error = exc
            self._submit(lambda: self._report(error))
            return
        if signal is not None:
            self._submit(lambda: self._call(signal))

    # --- worker side ----------------------------------------------------------
    def _submit(self, job: Callable[[], None]) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(job)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except Exception as exc:
                self._say("error", f"{self.node}: bridge error: {classify(exc).message}")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _call(self, signal: Signal) -> None:
        self.calls += 1
        self._say("info", f"{self.node}: {signal.operation} {signal.message_id}")
        try:
            if signal.api == "SEND":
                self.client.send(signal.message_id, signal.data)
                return
            if signal.api == "WAIT":
                data = self.client.wait(signal.message_id, timeout=self.timeout)
                reply = format_reply("WAIT", data)
            elif signal.api == "WAIT_ALL":
                data = self.client.wait_all(signal.message_id, signal.role, timeout=self.timeout)
                reply = format_reply("WAIT_ALL", data)
            else:
                self.client.sync(signal.message_id, timeout=self.timeout)
                reply = format_reply("SYNC")
                self._sync_result(signal.message_id, "pass")
        except Exception as exc:
            error = classify(exc)
            self._report(error, signal)
            if signal.api == "SYNC":
                self._sync_result(signal.message_id, "fail")
            if self.on_failure is not None and isinstance(
                error, (GroupFailed, MultinodeTimeout, LavamqBug)
            ):
                self.on_failure(error)
            return
        self.console.sendline(reply)

    def _sync_result(self, message_id: str, result: str) -> None:
        # no suite: the caller knows the test run in progress (the bridge reads no frames)
        if self.on_result is not None:
            self.on_result(
                {
                    "kind": "testcase",
                    "case": f"multinode-lava_sync-{message_id}",
                    "result": result,
                }
            )

    def _report(self, error: LavamqError, signal: Signal | None = None) -> None:
        """Log ``error``, show it on the console, and nack a blocking call."""
        api = signal.api if signal is not None else str(error.details.get("api", ""))
        message = error.message
        if signal is not None and signal.message_id not in message:
            message = f"{signal.operation} '{signal.message_id}': {message}"
        message = f"{self.node}: {message}"
        self.errors.append(message)
        self._say("error", message)
        try:
            self.console.sendline("# lavamq: " + message.replace("\n", " ")[:500])
            if api in BLOCKING:
                self.console.sendline(format_reply(api, nack=True))
        except LavamqError as exc:
            self._say("error", f"{self.node}: cannot answer on the console: {exc.message}")

    def _say(self, level: str, message: str) -> None:
        getattr(self.log, level)(message)
