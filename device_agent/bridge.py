"""The console bridge: MultiNode signals on a DUT's console become client calls.

A ``lava-*`` helper on the device prints one line such as
``<LAVA_MULTI_NODE> <LAVA_WAIT server-ready>``; the console's signal reader
(``device_agent/signals.py``, the one reader of LAVA's grammar) hands the
bridge the parsed call; the bridge performs the call through a
``MultinodeClient`` on behalf of the node the dispatcher assigned — the
identity never comes from the console text — and types the reply
(``signals.reply_lines``: one ``<LAVA_WAIT_DATA>node:key=value`` line per
received pair, then LAVA's ``<LAVA_WAIT_COMPLETE ...>``, or the ``nack``
form) back.

Threads: on the console's reader thread the bridge only queues the calls;
one worker thread per bridge makes the calls in the order the node issued
them (a ``lava-send`` followed by a ``lava-wait`` stays ordered).

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
pass/fail result of every MultiNode call, named as LAVA names it
(``multinode-send-<id>``, ``multinode-wait-<id>``, ``multinode-wait_all-<id>``,
``multinode-sync-<id>``): results only it knows of. The test-case signals and test-run frames reach
the dispatcher's result tracker from the same signal reader.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from device_agent.console import ConsoleBase
from device_agent.signals import (
    BLOCKING,
    Event,
    Invalid,
    MultinodeCall,
    SignalError,
    case_name,
    format_reply,
    parse_multinode,
    reply_lines,
)
from schemas.errors import GroupFailed, LavamqBug, LavamqError, classify
from schemas.lava_grammar import MAX_SIGNAL_CHARS, MULTINODE_MARK

logger = logging.getLogger(__name__)

#: the names callers and tests used before the grammar had its own module
Signal = MultinodeCall
parse_signal = parse_multinode
__all__ = [
    "MAX_SIGNAL_CHARS",
    "Bridge",
    "Signal",
    "SignalError",
    "format_reply",
    "parse_signal",
]


class JobLogLike(Protocol):
    """What the bridge needs of a log: a job log or a logging.Logger."""

    def info(self, message: str) -> Any: ...
    def warning(self, message: str) -> Any: ...
    def error(self, message: str) -> Any: ...


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
        run_of: Callable[[], str | None] | None = None,
        reserve: Callable[[], Any] | None = None,
    ) -> None:
        self.console = console
        self.client = client
        self.node = str(getattr(client, "self_name", "?"))
        self.log: JobLogLike | logging.Logger = log or logger
        self.timeout = timeout
        self.on_result = on_result
        self.on_failure = on_failure
        #: the test run in progress, asked when a call is printed (the console's reader
        #: thread): a call's result belongs to the run that made it, however late it ends
        self.run_of = run_of or (lambda: None)
        #: asked when a call is printed (reader thread): a place for its result among
        #: the results printed after it, handed back with the result as ``slot``
        self.reserve = reserve
        #: every problem reported, for callers and tests
        self.errors: list[str] = []
        self.calls = 0
        self._typed: deque[str] = deque(maxlen=64)
        self._typed_lock = threading.Lock()
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._idle = threading.Condition()
        self._pending = 0

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> Bridge:
        """Start answering the console's MultiNode signals (in a thread of its own)."""
        self._worker = threading.Thread(target=self._work, name=f"bridge-{self.node}", daemon=True)
        self._worker.start()
        self.console.add_input_listener(self.note_input)
        self.console.signals.subscribe(self.on_signal)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop answering signals and wait for the call in progress to end."""
        self.console.signals.unsubscribe(self.on_signal)
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

    def on_signal(self, line: str, event: Event | None) -> None:
        """The console's signal reader hands over each event (reader thread: only queue)."""
        if isinstance(event, MultinodeCall):
            if not self._is_echo(line):
                run = self.run_of()
                slot = self.reserve() if self.reserve is not None else None
                self._submit(lambda: self._call(event, run, slot))
        elif isinstance(event, Invalid) and event.api is not None and not self._is_echo(line):
            error = SignalError(event.reason, api=event.api)
            self._submit(lambda: self._report(error))

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

    def _call(self, signal: MultinodeCall, run: str | None = None, slot: Any = None) -> None:
        self.calls += 1
        self._say("info", f"{self.node}: {signal.operation} {signal.message_id}")
        try:
            if signal.api == "SEND":
                self.client.send(signal.message_id, signal.data)
                reply: list[str] = []
            elif signal.api == "WAIT":
                data = self.client.wait(signal.message_id, timeout=self.timeout)
                reply = reply_lines("WAIT", data)
            elif signal.api == "WAIT_ALL":
                data = self.client.wait_all(signal.message_id, signal.role, timeout=self.timeout)
                reply = reply_lines("WAIT_ALL", data)
            else:
                self.client.sync(signal.message_id, timeout=self.timeout)
                reply = reply_lines("SYNC")
        except Exception as exc:
            error = classify(exc)
            self._call_result(signal, "fail", run, slot)
            self._report(error, signal)
            # a timeout is the test's result (its case and test run fail, as on LAVA);
            # a failed group or a bug ends the test shell
            if self.on_failure is not None and isinstance(error, (GroupFailed, LavamqBug)):
                self.on_failure(error)
            return
        self._call_result(signal, "pass", run, slot)
        for line in reply:
            self.console.sendline(line)

    def _call_result(
        self, signal: MultinodeCall, result: str, run: str | None, slot: Any = None
    ) -> None:
        if self.on_result is not None:
            record: dict[str, Any] = {
                "kind": "testcase",
                "case": case_name(signal.api, signal.message_id),
                "result": result,
            }
            if run is not None:
                record["suite"] = run
            if slot is not None:
                record["slot"] = slot
            self.on_result(record)

    def _report(self, error: LavamqError, signal: MultinodeCall | None = None) -> None:
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
