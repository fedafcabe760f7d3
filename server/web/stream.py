"""A job's live parts: what its page shows now, and the server-sent event stream after it.

:class:`JobView` reads a job's nodes' logs from the log store (a page at a
time for the consoles; every record once for the timeline) and then takes
the live batches from :class:`server.live.LiveTap`, skipping the batches it
already read from the store (by node, sub-job and sequence number): the
stream is subscribed before the store is read, so nothing falls between.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from server.lab import Lab
from server.live import LiveTap
from server.node_rows import NodeRow
from server.timeline import Timeline

_BATCH_NAME = re.compile(r"^(\d+)-(\d+)\.json$")
#: console lines shown per page of a node's log
PAGE_LINES = 500
#: live batches sent in one wake-up of a stream at most
MAX_BATCHES_PER_EVENT = 500


def css_class(rec: dict[str, Any]) -> str:
    """How a console line is shown: LAVA's signals and results stand out."""
    message = str(rec.get("message", ""))
    level = str(rec.get("level", ""))
    if level == "results" or "<LAVA_SIGNAL_TESTCASE" in message:
        return "result"
    if "<LAVA_MULTI_NODE>" in message or ("_COMPLETE" in message and "<LAVA_" in message):
        return "signal"
    if "<LAVA_" in message:
        return "lava"
    return level if level in ("error", "warning", "input", "info") else "target"


def line(node_index: int, rec: dict[str, Any]) -> dict[str, Any]:
    """One job log record as the page's event stream sends it, with its node's index."""
    return {
        "node": node_index,
        "time": str(rec.get("time", "")),
        "level": str(rec.get("level", "")),
        "message": str(rec.get("message", "")),
        "cls": css_class(rec),
    }


class JobView:
    """One job's nodes, timeline and the batches already read from the store."""

    def __init__(self, lab: Lab, rows: list[NodeRow]) -> None:
        self.lab = lab
        self.rows = rows
        self.job_id = rows[0].job_id
        self.index = {r.device: r.index for r in rows if r.device}
        self.timeline = Timeline({r.device: r.role for r in rows if r.device})
        self.seen: set[tuple[str, str, int]] = set()

    def refresh(self) -> None:
        """Read the nodes again (a node gets its device, hence its name, when it starts)."""
        self.rows = self.lab.reader.job_nodes(self.job_id)
        for r in self.rows:
            if r.device and r.device not in self.index:
                self.index[r.device] = r.index
                self.timeline.members[r.device] = r.role
                self.timeline.lanes.setdefault(r.device, [])

    def read_store(self) -> None:
        """Feed the timeline every stored record once (batch files it has not read)."""
        for node in self.index:
            for path, _ in self.lab.logs.files(self.job_id, node):
                match = _BATCH_NAME.match(path.name)
                if match is None:
                    continue
                key = (node, match.group(1), int(match.group(2)))
                if key in self.seen:
                    continue
                self.seen.add(key)
                try:
                    records = json.loads(path.read_text(encoding="utf-8")).get("records", [])
                except (OSError, ValueError):
                    continue
                for rec in records:
                    self.timeline.add(node, rec)

    def take_live(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """A live ``log-batch``: its console lines (none if read from the store already),
        and whether the timeline changed."""
        node = str(body.get("node"))
        key = (node, str(body.get("subjob")), int(body.get("seq", -1)))
        if key in self.seen or node not in self.index:
            return [], False
        self.seen.add(key)
        records = [r for r in body.get("records") or [] if isinstance(r, dict)]
        changed = False
        for rec in records:
            changed = self.timeline.add(node, rec) or changed
        return [line(self.index[node], r) for r in records], changed

    def timeline_data(self) -> dict[str, Any]:
        """The group's timeline now, for the page."""
        return self.timeline.to_dict(time.time())


def page_of(lab: Lab, row: NodeRow, page: int | None) -> tuple[list[dict[str, Any]], int, int]:
    """(lines, page shown, pages) of a node's console; the last page when ``page`` is None."""
    if not row.device:
        return [], 0, 1
    total = lab.logs.total(row.job_id, row.device)
    pages = max(1, -(-total // PAGE_LINES))
    shown = pages - 1 if page is None else max(0, min(page, pages - 1))
    start = shown * PAGE_LINES
    records = lab.logs.records(row.job_id, row.device, start, start + PAGE_LINES)
    return [line(row.index, r) for r in records], shown, pages


def console_lines(lab: Lab, row: NodeRow) -> int:
    """How many lines a node's console has in the store now."""
    return lab.logs.total(row.job_id, row.device) if row.device else 0


def catch_up(view: JobView, since: dict[int, int]) -> list[dict[str, Any]]:
    """Console lines stored after the page was rendered (it had ``since[node]`` of them)."""
    out: list[dict[str, Any]] = []
    for node, index in view.index.items():
        first = since.get(index)
        if first is None:
            continue
        records = view.lab.logs.records(view.job_id, node, first, first + 5 * PAGE_LINES)
        out += [line(index, r) for r in records]
    return out


async def events(
    tap: LiveTap | None,
    view: JobView,
    render: Any,
    since: dict[int, int] | None = None,
    *,
    keepalive: float = 15.0,
) -> AsyncIterator[str]:
    """The SSE stream of a job page: ``log`` (console lines as JSON: first those stored
    after the page was rendered with ``since[node]`` lines, then the live ones),
    ``timeline`` and ``nodes`` (HTML fragments rendered by ``render(view, part)``)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=10_000)

    def listener(kind: str, body: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(_offer, queue, (kind, body))

    handle = tap.subscribe(view.job_id, listener) if tap is not None else None
    try:
        await asyncio.to_thread(view.read_store)
        missed = await asyncio.to_thread(catch_up, view, since or {})
        if missed:
            yield _event("log", json.dumps(missed))
        # what changed between the page's rendering and the subscription
        yield _event("nodes", await asyncio.to_thread(render, view, "nodes"))
        yield _event("timeline", await asyncio.to_thread(render, view, "timeline"))
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            # what else has arrived meanwhile goes out in the same events: a busy group
            # (64 boards at 115200 baud) costs one event per wake-up, not one per batch
            items = [first]
            while len(items) < MAX_BATCHES_PER_EVENT and not queue.empty():
                items.append(queue.get_nowait())
            async for event in _live_events(view, render, items):
                yield event
    finally:
        if handle is not None and tap is not None:
            tap.unsubscribe(view.job_id, handle)


async def _live_events(
    view: JobView, render: Any, items: list[tuple[str, dict[str, Any]]]
) -> AsyncIterator[str]:
    """The events for live ``items`` in their order: console lines together, the timeline
    once if they changed it, the node table for each job event."""
    lines: list[dict[str, Any]] = []
    changed = False
    for kind, body in items:
        if kind == "log-batch":
            if str(body.get("node")) not in view.index:
                await asyncio.to_thread(view.refresh)
            new, moved = view.take_live(body)
            lines += new
            changed = changed or moved
            continue
        if lines:
            yield _event("log", json.dumps(lines))
            lines = []
        yield _event("nodes", await asyncio.to_thread(render, view, "nodes"))
    if lines:
        yield _event("log", json.dumps(lines))
    if changed:
        yield _event("timeline", await asyncio.to_thread(render, view, "timeline"))


def _offer(queue: asyncio.Queue[tuple[str, dict[str, Any]]], item: tuple[str, Any]) -> None:
    if not queue.full():  # a stalled browser loses live lines, never the server's memory
        queue.put_nowait(item)


def _event(name: str, data: str) -> str:
    body = "\n".join(f"data: {part}" for part in data.splitlines() or [""])
    return f"event: {name}\n{body}\n\n"
