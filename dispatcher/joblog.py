"""The job log: one structured record per line (time, level, message).

Levels are the ones a lab needs: ``debug``, ``info``, ``warning``,
``error``, ``target`` (console output of the device), ``input`` (what the
dispatcher typed), ``results`` and ``event``. Secrets are masked before a
record is stored or sent anywhere, and over-long messages are cut so that a
runaway console cannot fill the disk one line at a time.
"""

from __future__ import annotations

import codecs
import datetime as _dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

LEVELS = ("debug", "info", "warning", "error", "target", "input", "results", "event")
MAX_MESSAGE = 10_000
MASK = "*****"

# user:password@ in any URL (git, http, amqp ...)
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:)(?P<secret>[^@\s/]+)(?=@)"
)
# password=..., token: ..., secret=... (key/value style secrets)
_KEY_SECRET = re.compile(
    r"(?P<head>\b(?:password|passwd|token|secret|api[_-]?key)\s*[=:]\s*)(?P<secret>[^\s,;&\"']+)",
    re.IGNORECASE,
)

Record = dict[str, Any]
RecordListener = Callable[[Record], None]
BatchListener = Callable[[list[Record]], None]
#: ``listener(text, count)``: ``count`` records as JSON lines (each ends with ``\n``)
JsonListener = Callable[[str, int], None]

#: the keys a record keeps when it is sent on (``log-batch`` records); the
#: others stay in the local file
WIRE_FIELDS = ("time", "level", "message", "action")
_WIRE_KEYS = frozenset(WIRE_FIELDS)

#: JSON string encoding exactly as ``json.dumps(..., ensure_ascii=False)`` does it
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def now_iso() -> str:
    """The current UTC time as the job log writes it."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _has_key_word(text: str) -> bool:
    """Whether ``text`` may hold a key word of ``_KEY_SECRET`` in any case (a cheap
    pre-check: the regex is case-insensitive, so is this)."""
    lower = text.lower()
    return "pass" in lower or "token" in lower or "secret" in lower or "key" in lower


def mask_secrets(text: str, extra: Iterable[str] = ()) -> str:
    """Hide passwords in URLs, ``password=...``-style pairs and any known secret value."""
    # cheap checks first: most console lines hold neither a URL nor a key word
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    if _has_key_word(text):
        text = _KEY_SECRET.sub(lambda m: m.group("head") + MASK, text)
    for secret in extra:
        if secret:
            text = text.replace(secret, MASK)
    return text


def may_hold_secret(text: str, extra: Iterable[str] = ()) -> bool:
    """False when :func:`mask_secrets` would surely leave ``text`` (and every part of it) alone.

    Used on a whole chunk of console output so that its lines are masked one
    by one only when the chunk holds a URL, a key word or a known secret.
    """
    return "://" in text or any(secret in text for secret in extra if secret) or _has_key_word(text)


def cut(text: str, limit: int = MAX_MESSAGE) -> str:
    """Cut ``text`` to ``limit`` characters, saying how much was dropped."""
    if len(text) <= limit:
        return text
    return text[:limit] + f" [cut {len(text) - limit} characters]"


class JobLog:
    """Thread-safe structured log of one sub-job.

    Every record goes to the log file (JSON lines; console lines flushed at
    most every 0.1 s, other records at once) and to each listener (e.g. the
    batch publisher towards ``lava.logs``). Console bytes arrive through
    :meth:`target_bytes`; they are split into lines, a partial line is kept
    until its end arrives or :meth:`flush_partial` is called (so a prompt
    without a newline still shows up).

    Console output comes in floods, so it is handled a chunk at a time: one
    timestamp per chunk (the time it was read), secrets looked for in the
    whole chunk before masking line by line, one file write per chunk, and
    batch listeners (:meth:`add_batch_listener`) get the chunk's records as
    one list. Record listeners (:meth:`add_listener`) still get them one by one.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_message: int = MAX_MESSAGE,
        secrets: Iterable[str] = (),
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.max_message = max_message
        self._secrets: list[str] = [s for s in secrets if s]
        self._lock = threading.Lock()
        self._listeners: list[RecordListener] = []
        self._batch_listeners: list[BatchListener] = []
        self._json_listeners: list[JsonListener] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._partial_since = 0.0
        self._flushed = 0.0
        self._file: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def add_secret(self, value: str) -> None:
        """A value masked in every record from now on."""
        if value:
            with self._lock:
                self._secrets.append(value)

    def add_listener(self, listener: RecordListener) -> None:
        """Call ``listener(record)`` with every record, in order."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: RecordListener) -> None:
        """Stop calling a record listener."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def add_batch_listener(self, listener: BatchListener) -> None:
        """Call ``listener(records)`` with every record, in order, a list at a time
        (one record for :meth:`record`, a chunk's lines for :meth:`target_bytes`).
        The records are shared: a listener must not change them."""
        with self._lock:
            self._batch_listeners.append(listener)

    def remove_batch_listener(self, listener: BatchListener) -> None:
        """Stop calling a batch listener."""
        with self._lock:
            if listener in self._batch_listeners:
                self._batch_listeners.remove(listener)

    def add_json_listener(self, listener: JsonListener) -> None:
        """Call ``listener(text, count)`` with every record, in order, already
        encoded: ``text`` holds ``count`` records as JSON lines, each ending
        with a newline and holding only :data:`WIRE_FIELDS`. Console lines are
        the very bytes written to the file, so a publisher need not encode them
        again."""
        with self._lock:
            self._json_listeners.append(listener)

    def remove_json_listener(self, listener: JsonListener) -> None:
        """Stop calling a JSON listener."""
        with self._lock:
            if listener in self._json_listeners:
                self._json_listeners.remove(listener)

    def record(self, level: str, message: str, **extra: Any) -> Record:
        """Store one record; returns it as stored (masked and cut)."""
        if level not in LEVELS:
            raise ValueError(f"job log: unknown level {level!r} (known: {', '.join(LEVELS)})")
        with self._lock:
            return self._emit(level, message, extra)

    def _emit(self, level: str, message: str, extra: dict[str, Any]) -> Record:
        rec: Record = {
            "time": now_iso(),
            "level": level,
            "message": cut(mask_secrets(message, self._secrets), self.max_message),
        }
        rec.update(extra)
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        if self._file is not None:
            self._file.write(line)
            # console lines come in floods: flush them at most every 0.1 s;
            # anything else (actions, errors, results) at once
            now = time.monotonic()
            if level != "target" or now - self._flushed >= 0.1:
                self._file.flush()
                self._flushed = now
        if self._json_listeners:
            if not rec.keys() <= _WIRE_KEYS:
                wire = {k: rec[k] for k in WIRE_FIELDS if k in rec}
                line = json.dumps(wire, ensure_ascii=False) + "\n"
            self._notify_json(line, 1)
        self._notify([rec])
        return rec

    def _notify_json(self, text: str, count: int) -> None:
        for listener in list(self._json_listeners):
            try:
                listener(text, count)
            except Exception:  # a broken listener must not stop the job
                log.exception("job log listener %r failed", listener)

    def _notify(self, records: list[Record]) -> None:
        for listener in list(self._listeners):
            for rec in records:
                try:
                    listener(rec)
                except Exception:  # a broken listener must not stop the job
                    log.exception("job log listener %r failed", listener)
        for batch_listener in list(self._batch_listeners):
            try:
                batch_listener(records)
            except Exception:
                log.exception("job log listener %r failed", batch_listener)

    def _emit_target(self, lines: list[str], text: str) -> None:
        """Console lines (``text`` holds them all) as ``target`` records, at once."""
        if not lines:
            return
        if "\r" in text:
            lines = [line.rstrip("\r") for line in lines]
        masked = may_hold_secret(text, self._secrets)
        if masked:
            lines = [mask_secrets(line, self._secrets) for line in lines]
        limit = self.max_message
        # (masking can make a line longer)
        if (masked or len(text) > limit) and max(map(len, lines)) > limit:
            lines = [cut(line, limit) for line in lines]
        stamp = now_iso()
        if self._file is not None or self._json_listeners:
            # the same bytes as json.dumps(record, ensure_ascii=False) per line
            head = f'{{"time": {_json_string(stamp)}, "level": "target", "message": '
            joined = "".join(lines)
            if joined.isprintable() and '"' not in joined and "\\" not in joined:
                # nothing to escape in any line (no quote, backslash or control
                # character): JSON strings are the lines in quotes
                sep = f'"}}\n{head}"'
                encoded = f'{head}"{sep.join(lines)}"}}\n'
            else:
                encoded = "".join([f"{head}{_json_string(line)}}}\n" for line in lines])
            if self._json_listeners:
                self._notify_json(encoded, len(lines))
        if self._file is not None:
            self._file.write(encoded)
            now = time.monotonic()
            if now - self._flushed >= 0.1:
                self._file.flush()
                self._flushed = now
        if self._listeners or self._batch_listeners:
            self._notify([{"time": stamp, "level": "target", "message": line} for line in lines])

    def debug(self, message: str, **extra: Any) -> Record:
        """A ``debug`` record."""
        return self.record("debug", message, **extra)

    def info(self, message: str, **extra: Any) -> Record:
        """An ``info`` record."""
        return self.record("info", message, **extra)

    def warning(self, message: str, **extra: Any) -> Record:
        """A ``warning`` record."""
        return self.record("warning", message, **extra)

    def error(self, message: str, **extra: Any) -> Record:
        """An ``error`` record."""
        return self.record("error", message, **extra)

    def event(self, message: str, **extra: Any) -> Record:
        """An ``event`` record (LAVA's event level: lava-test-event)."""
        return self.record("event", message, **extra)

    def results(self, message: str, **extra: Any) -> Record:
        """A ``results`` record (one test result, as LAVA logs it)."""
        return self.record("results", message, **extra)

    def input(self, message: str, **extra: Any) -> Record:
        """An ``input`` record: what was typed on the console."""
        return self.record("input", message, **extra)

    def target_bytes(self, data: bytes) -> None:
        """Console output: one ``target`` record per complete line."""
        with self._lock:
            # incremental: a character split between two reads stays whole
            text = self._partial + self._decoder.decode(data)
            lines = text.split("\n")
            if lines[-1] and lines[-1] != self._partial:
                self._partial_since = time.monotonic()
            self._partial = lines.pop()
            # an endless line without newline is cut into records of max size
            while len(self._partial) > self.max_message:
                lines.append(self._partial[: self.max_message])
                self._partial = self._partial[self.max_message :]
            self._emit_target(lines, text)

    def flush_partial(self, older_than: float = 0.0, *, final: bool = False) -> None:
        """Emit a pending partial console line (a prompt, say) as its own record,
        if it has waited at least ``older_than`` seconds for its end. ``final``:
        the console is gone, an incomplete character at the end is kept too."""
        with self._lock:
            if final:
                self._partial += self._decoder.decode(b"", final=True)
            if self._partial and time.monotonic() - self._partial_since >= older_than:
                line, self._partial = self._partial, ""
                self._emit_target([line], line)
            if self._file is not None:
                self._file.flush()

    def flush(self) -> None:
        """Write what is buffered to the file."""
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        """Log the console's unfinished line, then close the file."""
        self.flush_partial(final=True)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_records(path: str | Path) -> Iterator[Record]:
    """The records of a job log file, in order; a torn last line is skipped."""
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("job log %s: skipping unreadable line %r", path, line[:80])


def format_record(rec: Record, *, node: str | None = None) -> str:
    """A record as one human-readable line for ``lavamq logs``."""
    prefix = f"[{node}] " if node else ""
    return f"{prefix}{rec.get('time', '')} {rec.get('level', '?'):<7} {rec.get('message', '')}"
