"""Serial consoles: the expect-style driver shared by real ports and a scripted fake.

labgrid's split: the *resource* is a URL that pyserial's ``serial_for_url``
understands (``/dev/ttyUSB0``, ``socket://host:port`` for ser2net and QEMU,
``rfc2217://host:port``, or the slave path of a pseudo-terminal); the
*driver* is :class:`Console`, which owns one background reader thread per
port; callers rely only on the protocol of :class:`ConsoleBase`
(``send``/``sendline``/``expect``/``read_until_prompt``/listeners).

The reader thread feeds every raw byte chunk to the output listeners (job
log, MultiNode bridge) and a cleaned copy into the expect buffer: ANSI/VT
escape sequences (busybox's ``ESC[6n`` cursor query after each prompt,
colours, bracketed paste) and carriage returns are removed, so that prompts
and patterns match what a human reads. ``expect`` waits on a condition
variable fed by that thread; nothing here ever runs on an AMQP thread.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from device_agent.signals import SignalReader
from schemas.errors import InfrastructureError

log = logging.getLogger(__name__)

Pattern = str | re.Pattern[str]
OutputListener = Callable[[bytes], None]
InputListener = Callable[[str], None]

#: a complete escape sequence: CSI (``ESC [ ... final``), OSC (``ESC ] ... BEL``
#: or ``ESC \\``), or a two-character escape
ESCAPE_RE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])|\x9b[0-?]*[ -/]*[@-~]"
)
#: the start of an escape sequence cut at the end of a read
PARTIAL_ESCAPE_RE = re.compile(r"(?:\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*|)|\x9b[0-?]*[ -/]*)$")
#: control characters that carry no text (everything below space but TAB and LF)
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: the cursor position query busybox's line editor sends after each prompt
CURSOR_QUERY = b"\x1b[6n"


#: :data:`CONTROL_RE` as a ``str.translate`` table (about 8 times faster than the regex)
_CONTROL_TABLE = dict.fromkeys([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])


def strip_escapes(text: str) -> str:
    """Remove ANSI/VT escape sequences, carriage returns and other control characters."""
    # most console output holds no escape at all: skip the regex scan then
    if "\x1b" in text or "\x9b" in text:
        text = ESCAPE_RE.sub("", text)
    return text.translate(_CONTROL_TABLE)


class TextCleaner:
    """Incremental :func:`strip_escapes` that keeps sequences split across reads whole."""

    def __init__(self, encoding: str = "utf-8") -> None:
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> str:
        """Decode one chunk, dropping terminal escapes (one cut across chunks waits)."""
        text = self._pending + self._decoder.decode(data)
        self._pending = ""
        tail = PARTIAL_ESCAPE_RE.search(text[-64:]) if "\x1b" in text[-64:] else None
        if tail is not None and tail.group(0):
            cut = len(text) - len(tail.group(0))
            text, self._pending = text[:cut], text[cut:]
        return strip_escapes(text)


class ConsoleTimeout(InfrastructureError):
    """A console did not show what was expected before the timeout."""


class ConsoleClosed(InfrastructureError):
    """The console's connection ended (board powered off, socket closed)."""


def compile_patterns(patterns: Pattern | Sequence[Pattern]) -> list[re.Pattern[str]]:
    """Strings are regular expressions (as in pexpect and LAVA's prompts)."""
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    out: list[re.Pattern[str]] = []
    for pattern in patterns:
        out.append(pattern if isinstance(pattern, re.Pattern) else re.compile(pattern))
    if not out:
        raise ValueError("expect() needs at least one pattern")
    return out


def describe_patterns(patterns: Sequence[re.Pattern[str]]) -> str:
    """The patterns an expect waited for, for its error message."""
    return " or ".join(repr(p.pattern) for p in patterns)


class ConsoleBase:
    """Expect logic, output buffering and listeners, independent of the transport.

    Subclasses implement :meth:`_write` and call :meth:`_feed` with every chunk
    read from the device and :meth:`_mark_closed` when the connection ends.
    """

    #: how far back (characters) a new search starts; patterns spanning more
    #: already-searched text than this are not found
    search_window = 64 * 1024
    #: unconsumed cleaned output kept for expect (older text is dropped)
    max_buffer = 1024 * 1024
    #: cleaned output kept for error messages
    tail_size = 2000

    def __init__(
        self,
        name: str,
        *,
        prompts: Sequence[Pattern] = (),
        encoding: str = "utf-8",
        answer_cursor_query: bool = False,
    ) -> None:
        self.name = name
        self.encoding = encoding
        self.prompts: list[Pattern] = list(prompts)
        #: reply ``ESC[row;colR`` to ``ESC[6n`` (some line editors wait for it)
        self.answer_cursor_query = answer_cursor_query
        #: cleaned text that came before the last match
        self.before = ""
        self._cond = threading.Condition()
        self._cleaner = TextCleaner(encoding)
        self._buffer = ""
        self._searched = 0
        self._tail = ""
        self._closed_reason: str | None = None
        self._listeners: list[OutputListener] = []
        self._input_listeners: list[InputListener] = []
        self._write_lock = threading.Lock()
        self._marker = itertools.count(1)
        #: LAVA's signals in this console's output, read once for every subscriber
        self.signals = SignalReader()

    # --- listeners -----------------------------------------------------------
    def add_listener(self, listener: OutputListener) -> None:
        """Call ``listener(raw_bytes)`` with every chunk read, on the reader thread."""
        with self._cond:
            self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: OutputListener) -> None:
        """Stop calling an output listener."""
        with self._cond:
            self._listeners = [x for x in self._listeners if x != listener]

    def add_input_listener(self, listener: InputListener) -> None:
        """Call ``listener(text)`` with everything sent to the device."""
        with self._cond:
            self._input_listeners = [*self._input_listeners, listener]

    def remove_input_listener(self, listener: InputListener) -> None:
        """Stop calling an input listener."""
        with self._cond:
            self._input_listeners = [x for x in self._input_listeners if x != listener]

    # --- transport side -------------------------------------------------------
    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _feed(self, data: bytes) -> None:
        """Hand one chunk read from the device to listeners and the expect buffer."""
        if not data:
            return
        for listener in self._listeners:
            try:
                listener(data)
            except Exception:
                log.exception("console %s: output listener %r failed", self.name, listener)
        if self.answer_cursor_query and CURSOR_QUERY in data:
            with contextlib.suppress(Exception):
                self._write(b"\x1b[1;1R")
        text = self._cleaner.feed(data)
        if not text:
            return
        # before expect sees it: a result is recorded before the line that ends a wait
        self.signals.feed(text)
        with self._cond:
            # append through a local so that CPython can grow the string in
            # place instead of copying the whole buffer for every chunk
            buffer, self._buffer = self._buffer, ""
            buffer += text
            self._buffer = buffer
            del buffer
            # trimming copies the buffer: do it once it is twice the limit
            # (amortised); flush() trims to the limit, expect() puts at most
            # max_buffer characters in ``before``
            if len(self._buffer) > 2 * self.max_buffer:
                self._trim()
            if len(text) >= self.tail_size:
                self._tail = text[-self.tail_size :]
            else:
                self._tail = (self._tail + text)[-self.tail_size :]
            self._cond.notify_all()

    def _trim(self) -> None:
        """Drop the oldest output beyond :attr:`max_buffer` (holding ``_cond``)."""
        if len(self._buffer) > self.max_buffer:
            drop = len(self._buffer) - self.max_buffer
            self._buffer = self._buffer[drop:]
            self._searched = max(0, self._searched - drop)

    def _mark_closed(self, reason: str) -> None:
        with self._cond:
            if self._closed_reason is None:
                self._closed_reason = reason
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether the console was closed (by lavamq or by the device)."""
        return self._closed_reason is not None

    # --- protocol -------------------------------------------------------------
    def send(self, text: str | bytes) -> None:
        """Write ``text`` as is (no line ending)."""
        if self._closed_reason is not None:
            raise ConsoleClosed(
                f"console {self.name}: cannot send, connection closed ({self._closed_reason})"
            )
        data = text.encode(self.encoding) if isinstance(text, str) else text
        shown = text if isinstance(text, str) else text.decode(self.encoding, "replace")
        # listeners hear it before the device can echo it back
        for listener in self._input_listeners:
            try:
                listener(shown)
            except Exception:
                log.exception("console %s: input listener %r failed", self.name, listener)
        with self._write_lock:
            self._write(data)

    def sendline(self, text: str = "", line_ending: str = "\n") -> None:
        """Write ``text`` and a line ending."""
        self.send(text + line_ending)

    def expect(
        self, patterns: Pattern | Sequence[Pattern], timeout: float
    ) -> tuple[int, re.Match[str]]:
        """Wait until one of ``patterns`` appears in the (cleaned) output.

        Returns ``(index, match)`` of the pattern matching earliest (ties: the
        first listed); the output up to the end of the match is consumed and
        the text before it is left in :attr:`before`. Raises
        :class:`ConsoleTimeout` or :class:`ConsoleClosed` naming the console,
        the patterns and the last output.
        """
        compiled = compile_patterns(patterns)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                # the buffer may hold up to twice max_buffer (see _feed): search
                # it as it is, keep only max_buffer of it in ``before``
                found = self._search(compiled)
                if found is not None:
                    index, match = found
                    kept = max(0, len(self._buffer) - self.max_buffer)
                    self.before = self._buffer[min(kept, match.start()) : match.start()]
                    self._buffer = self._buffer[match.end() :]
                    self._searched = 0
                    return index, match
                self._searched = max(0, len(self._buffer) - self.search_window)
                if self._closed_reason is not None:
                    raise ConsoleClosed(
                        f"console {self.name}: connection closed ({self._closed_reason}) "
                        f"while waiting for {describe_patterns(compiled)}; "
                        f"last output: {self._tail[-400:]!r}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConsoleTimeout(
                        f"console {self.name}: timed out after {timeout:g} s waiting for "
                        f"{describe_patterns(compiled)}; last output: {self._tail[-400:]!r}",
                        console=self.name,
                        patterns=[p.pattern for p in compiled],
                    )
                self._cond.wait(remaining)

    def _search(self, compiled: list[re.Pattern[str]]) -> tuple[int, re.Match[str]] | None:
        best: tuple[int, re.Match[str]] | None = None
        for index, pattern in enumerate(compiled):
            match = pattern.search(self._buffer, self._searched)
            if match is not None and (best is None or match.start() < best[1].start()):
                best = (index, match)
        return best

    def _prompt_patterns(self, prompts: Sequence[Pattern] | None) -> list[Pattern]:
        chosen = list(prompts) if prompts else self.prompts
        if not chosen:
            raise InfrastructureError(f"console {self.name}: no prompt configured to wait for")
        return chosen

    def read_until_prompt(self, timeout: float, prompts: Sequence[Pattern] | None = None) -> str:
        """Wait for a prompt; return the cleaned output that came before it."""
        self.expect(self._prompt_patterns(prompts), timeout)
        return self.before

    def run(
        self, command: str, timeout: float, prompts: Sequence[Pattern] | None = None
    ) -> tuple[str, int]:
        """Type ``command`` at a shell prompt; return its output and exit code.

        The exit code is printed after a unique marker; the marker typed on the
        command line is not matched because it holds ``$?``, not digits.
        """
        marker = f"LAVAMQ-RC-{next(self._marker)}"
        self.sendline(f"{command}; echo {marker}=$?")
        _, match = self.expect(re.compile(re.escape(marker) + r"=(\d+)"), timeout)
        output = self.before
        rc = int(match.group(1))
        self.read_until_prompt(timeout, prompts)
        # the first line is the echo of the typed command
        lines = output.split("\n")
        if lines and command in lines[0]:
            lines = lines[1:]
        return "\n".join(lines).strip("\n"), rc

    def flush(self) -> str:
        """Discard and return the unconsumed output."""
        with self._cond:
            self._trim()
            text, self._buffer, self._searched = self._buffer, "", 0
            return text

    def recent_output(self, size: int = 400) -> str:
        """The last ``size`` characters of cleaned output (consumed or not)."""
        with self._cond:
            return self._tail[-size:]

    def close(self) -> None:
        """Close the console: readers see ConsoleClosed."""
        self._mark_closed("closed by lavamq")

    def __enter__(self) -> ConsoleBase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Console(ConsoleBase):
    """A console over any pyserial URL, with one background reader thread."""

    #: most bytes handed to listeners and expect at once
    max_chunk = 1 << 16
    #: seconds the reader lets output gather after a read that returned some:
    #: a board printing at serial speed is then read (and logged, and published)
    #: in chunks of this much output instead of a line or a few bytes at a time,
    #: whose per-chunk costs were most of a dispatcher's CPU with 64 boards. The
    #: first byte after a pause is still read at once, and during a flood
    #: (reads of :attr:`flood_bytes` or more in the last :attr:`flood_seconds`)
    #: the reader reads on at once: output faster than a serial line never waits.
    #: 50 ms (a board at 115200 baud: about 575 bytes a read, below flood_bytes)
    #: is half a batch interval: 20 reads a second per board instead of 50
    gather = 0.05
    flood_bytes = 1024
    flood_seconds = 0.5

    def __init__(
        self,
        url: str,
        name: str | None = None,
        *,
        baudrate: int = 115200,
        prompts: Sequence[Pattern] = (),
        encoding: str = "utf-8",
        answer_cursor_query: bool = False,
        open_timeout: float = 10.0,
        reconnect_pause: bool = True,
    ) -> None:
        super().__init__(
            name or url,
            prompts=prompts,
            encoding=encoding,
            answer_cursor_query=answer_cursor_query,
        )
        self.url = url
        self.baudrate = baudrate
        #: pyserial pauses 0.3 s after closing a ``socket://`` port, "in case of quick
        #: reconnects" (a ser2net that takes a moment before its next connection); a
        #: console nobody reconnects to at once (a VM's, gone with it) skips it
        self.reconnect_pause = reconnect_pause
        self._port = self._open_port(open_timeout)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._reader, name=f"console-{self.name}", daemon=True
        )
        self._thread.start()

    def _open_port(self, open_timeout: float) -> Any:
        import serial

        deadline = time.monotonic() + open_timeout
        while True:
            try:
                port = serial.serial_for_url(
                    self.url, baudrate=self.baudrate, timeout=0.1, do_not_open=True
                )
                # pyserial's open() flushes pending input: that would drop what
                # a board (or a ser2net banner) printed before we connected
                port.reset_input_buffer = lambda: None  # type: ignore[method-assign]
                try:
                    port.open()
                finally:
                    del port.reset_input_buffer
                return port
            except (serial.SerialException, OSError, ValueError) as exc:
                # a ser2net or QEMU socket may take a moment to listen
                if time.monotonic() >= deadline or not self.url.startswith(
                    ("socket://", "rfc2217://")
                ):
                    raise InfrastructureError(
                        f"console {self.name}: cannot open {self.url}: {exc}"
                    ) from exc
                time.sleep(0.05)

    def _reader(self) -> None:
        port = self._port
        reason = "closed by lavamq"
        flood_at = -1e9  # when a read was last a flood's
        try:
            while not self._stop.is_set():
                waiting = port.in_waiting
                data = port.read(min(waiting, self.max_chunk) if waiting else 1)
                if not data:
                    continue
                # a flood: a tty hands out at most 4 KiB per read; take what is
                # already waiting too (up to max_chunk, never waiting for more)
                # so that listeners and expect pay their per-chunk costs once
                gathered = len(data)
                chunks = [data]
                try:
                    # (asked again even after a read of "all that was waiting": a
                    # socket:// port's in_waiting says 1 for any amount, not a count)
                    while gathered < self.max_chunk:
                        waiting = port.in_waiting
                        if not waiting:
                            break
                        more = port.read(min(waiting, self.max_chunk - gathered))
                        if not more:
                            break
                        chunks.append(more)
                        gathered += len(more)
                finally:
                    # what was read before a failure still reaches the listeners
                    self._feed(b"".join(chunks))
                now = time.monotonic()
                if gathered >= self.flood_bytes:
                    flood_at = now
                elif self.gather and now - flood_at > self.flood_seconds:
                    # a plain sleep (an Event's wait costs a lock and a condition
                    # each time); close() cancels the next read, so it waits at
                    # most this much longer
                    time.sleep(self.gather)
        except Exception as exc:
            if not self._stop.is_set():
                reason = f"{type(exc).__name__}: {exc}"
                log.info("console %s: reader stopped: %s", self.name, reason)
        finally:
            self._mark_closed(reason)

    def _write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except Exception as exc:
            self._mark_closed(f"write failed: {exc}")
            raise ConsoleClosed(f"console {self.name}: write to {self.url} failed: {exc}") from exc

    def close(self) -> None:
        """Stop the reader thread and close the serial port."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            self._port.cancel_read()
        sock = _socket_of(self._port)
        if sock is not None:
            # the reader's wait on the socket ends now, not at its read timeout
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2)
        with contextlib.suppress(Exception):
            if sock is not None and not self.reconnect_pause:
                # not pyserial's close, which sleeps (see reconnect_pause)
                sock.close()
                self._port._socket = None
                self._port.is_open = False
            else:
                self._port.close()
        self._mark_closed("closed by lavamq")


def _socket_of(port: Any) -> socket.socket | None:
    """The socket under a pyserial ``socket://`` port (None for any other port)."""
    from serial.urlhandler.protocol_socket import Serial as SocketSerial

    sock = getattr(port, "_socket", None) if isinstance(port, SocketSerial) else None
    return sock if isinstance(sock, socket.socket) else None


class ScriptedConsole(ConsoleBase):
    """A fake device for unit tests: lines sent are answered from a script.

    ``script`` is a list of ``(regex, output)``: when a line sent matches the
    next entry's regex, its output is fed back as if the device printed it.
    ``echo`` feeds back what is sent, as a tty in cooked mode does.
    """

    def __init__(
        self,
        name: str = "fake",
        script: Sequence[tuple[str, str]] = (),
        *,
        prompts: Sequence[Pattern] = (),
        echo: bool = False,
    ) -> None:
        super().__init__(name, prompts=prompts)
        self.script = list(script)
        self.echo = echo
        self.sent: list[str] = []
        self._partial = ""

    def feed_output(self, text: str | bytes) -> None:
        """Pretend the device printed ``text``."""
        self._feed(text.encode(self.encoding) if isinstance(text, str) else text)

    def _write(self, data: bytes) -> None:
        text = data.decode(self.encoding, "replace")
        if self.echo:
            self.feed_output(text.replace("\n", "\r\n"))
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self.sent.append(line)
            if self.script and re.search(self.script[0][0], line):
                _, output = self.script.pop(0)
                self.feed_output(output)
