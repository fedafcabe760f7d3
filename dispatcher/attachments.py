"""Files a test attaches (``lava-test-case-attach``, ``lava-test-run-attach``), put back together.

The helpers print a file as LAVA signals on the console (``device_agent/signals.py``:
``ATTACH START``, one ``ATTACH DATA`` per base64 line, ``ATTACH END``), so it reaches
the dispatcher from any device with a console and ``base64``. The collector checks
each file (its size as declared, at most ``MAX_ATTACHMENT_BYTES``, valid base64) and
keeps it for the test run it was attached in; the run's own result carries it to the
result bundle, as LAVA 2014's bundles carried attachments (``pathname``,
``mime_type``, ``content``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from device_agent.signals import AttachData, AttachEnd, AttachStart
from schemas.messages.console import MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS

#: base64 characters of the largest attachment
_MAX_CHARS = (MAX_ATTACHMENT_BYTES + 2) // 3 * 4


class AttachmentCollector:
    """Reassembles attachments from their signals; ``take(run)`` hands a run's files over."""

    def __init__(self, say: Callable[[str], Any]) -> None:
        self.say = say
        self._open: tuple[AttachStart, str | None] | None = None
        self._chunks: list[str] = []
        self._chars = 0
        self._too_big = False
        #: test run → its files, in the order they were attached
        self._by_run: dict[str | None, list[dict[str, Any]]] = {}

    def handle(self, event: AttachStart | AttachData | AttachEnd, run: str | None) -> None:
        """One attachment signal, printed while test run ``run`` was in progress."""
        if isinstance(event, AttachStart):
            if self._open is not None:
                self._drop("a new attachment began before its end")
            self._open, self._chunks, self._chars, self._too_big = (event, run), [], 0, False
            if event.size > MAX_ATTACHMENT_BYTES:
                self._too_big = True
        elif self._open is None:
            self.say("attachment data without a start: ignored")
        elif isinstance(event, AttachData):
            self._chars += len(event.chunk)
            if self._chars > _MAX_CHARS:
                self._too_big = True
            elif not self._too_big:
                self._chunks.append(event.chunk)
        else:
            self._finish()

    def _finish(self) -> None:
        assert self._open is not None
        start, run = self._open
        if self._too_big:
            self._drop(f"over the limit of {MAX_ATTACHMENT_BYTES} bytes")
            return
        try:
            content = base64.b64decode("".join(self._chunks), validate=True)
        except (binascii.Error, ValueError):
            self._drop("its base64 is damaged")
            return
        if len(content) != start.size:
            self._drop(f"{len(content)} bytes arrived, {start.size} were announced")
            return
        files = self._by_run.setdefault(run, [])
        if len(files) >= MAX_ATTACHMENTS:
            self._drop(f"test run {run} has {MAX_ATTACHMENTS} attachments already")
            return
        files.append(
            {
                "pathname": start.pathname,
                "mime_type": start.mime_type,
                "case": start.case,
                "content": base64.b64encode(content).decode("ascii"),
            }
        )
        target = f"test case {start.case}" if start.case else f"test run {run}"
        self.say(f"attachment {start.pathname} ({start.size} bytes) kept for {target}")
        self._open = None

    def _drop(self, why: str) -> None:
        assert self._open is not None
        self.say(f"attachment {self._open[0].pathname}: not kept: {why}")
        self._open, self._chunks = None, []

    def take(self, run: str | None) -> list[dict[str, Any]]:
        """The files attached in ``run`` (once: they travel with the run's result)."""
        return self._by_run.pop(run, [])
