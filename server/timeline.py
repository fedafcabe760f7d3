"""A MultiNode group's timeline, read from its nodes' job logs.

One lane per node: its boot, and each ``lava-send``/``lava-wait``/
``lava-wait-all``/``lava-sync`` call with its message id, from the moment
the node printed the call to the moment the dispatcher typed the answer
(``<LAVA_SYNC_COMPLETE>`` ...). A barrier (a sync, or a wait-all) is open
while some member has not arrived: it names the nodes it waits for and
since when. The same records feed it from the log store (a finished job,
or a page opened late) and from the live stream, so both agree.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.lava_grammar import MULTINODE_RE

_ACTION = re.compile(r"^(start|end): (\d+) (\S+)")
_REPLY = re.compile(r"<LAVA_(SEND|WAIT_ALL|WAIT|SYNC)_COMPLETE")
_API_NAMES = {"SEND": "lava-send", "WAIT": "lava-wait", "WAIT_ALL": "lava-wait-all",
              "SYNC": "lava-sync"}  # fmt: skip


def epoch(text: str) -> float:
    """A record's ISO time as seconds since the epoch, to order records of several nodes."""
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


@dataclass
class Span:
    """One thing on a node's lane: ``boot`` or a MultiNode call."""

    kind: str  # boot | lava-send | lava-wait | lava-wait-all | lava-sync
    label: str  # the action name, or the message id
    start: float
    end: float | None = None
    role: str | None = None  # lava-wait-all's role

    def to_dict(self) -> dict[str, Any]:
        """As the page's timeline data."""
        return {"kind": self.kind, "label": self.label, "start": self.start, "end": self.end}


@dataclass
class Barrier:
    """Who arrived at a sync (or a wait-all) and when it was released."""

    kind: str
    message_id: str
    role: str | None = None
    arrived: dict[str, float] = field(default_factory=dict)
    released: float | None = None


class Timeline:
    """Feed it ``(node, record)`` in each node's log order; read lanes and barriers."""

    def __init__(self, members: Mapping[str, str]) -> None:
        self.members = dict(members)  # node → role
        self.lanes: dict[str, list[Span]] = {n: [] for n in members}
        self.barriers: dict[tuple[str, str], Barrier] = {}
        self.sent: dict[str, set[str]] = {}  # message id → nodes that sent it
        #: seconds from the last arrival to the release, per released sync
        self.release_latencies: list[float] = []
        self.sends = 0

    def add(self, node: str, rec: Mapping[str, Any]) -> bool:
        """Read one record; True when the timeline changed."""
        level = rec.get("level")
        message = str(rec.get("message", ""))
        lane = self.lanes.setdefault(node, [])
        if level == "target" and "<LAVA_MULTI_NODE>" not in message:
            return False  # plain console output, most of a log: not even its time is read
        when = epoch(str(rec.get("time", "")))
        if level == "info":
            match = _ACTION.match(message)
            if match and "boot" in match.group(3):
                if match.group(1) == "start":
                    lane.append(Span("boot", match.group(3), when))
                    return True
                return self._close(lane, "boot", when)
            return False
        if level == "target" and "<LAVA_MULTI_NODE>" in message:
            call = MULTINODE_RE.search(message)
            if call is None or call.group(1) not in _API_NAMES:
                return False
            api = call.group(1)
            words = call.group(2).split()
            message_id = words[0] if words else ""
            role = words[1] if api == "WAIT_ALL" and len(words) > 1 else None
            lane.append(Span(_API_NAMES[api], message_id, when, role=role))
            if api == "SEND":
                self.sends += 1
                self.sent.setdefault(message_id, set()).add(node)
            if api in ("SYNC", "WAIT_ALL"):
                barrier = self.barriers.setdefault(
                    (api, message_id), Barrier(_API_NAMES[api], message_id, role)
                )
                barrier.arrived.setdefault(node, when)
            return True
        if level == "input":
            reply = _REPLY.search(message)
            if reply is None:
                return False
            kind = _API_NAMES[reply.group(1)]
            span = next((s for s in reversed(lane) if s.kind == kind and s.end is None), None)
            if span is None:
                return False
            span.end = when
            done = self.barriers.get((reply.group(1), span.label))
            if done is not None and done.released is None:
                done.released = when
                if done.kind == "lava-sync" and done.arrived:
                    self.release_latencies.append(max(0.0, when - max(done.arrived.values())))
            return True
        return False

    def _close(self, lane: list[Span], kind: str, when: float) -> bool:
        span = next((s for s in reversed(lane) if s.kind == kind and s.end is None), None)
        if span is None:
            return False
        span.end = when
        return True

    def expected(self, barrier: Barrier) -> list[str]:
        """The nodes a barrier waits for (a wait-all: the senders it needs)."""
        if barrier.kind == "lava-wait-all":
            # every node (of the role) must have sent the message
            nodes = [n for n, r in self.members.items() if barrier.role in (None, r)]
            return sorted(nodes)
        return sorted(self.members)

    def waiting_for(self, barrier: Barrier) -> list[str]:
        """The nodes a barrier still waits for (none once released)."""
        if barrier.released is not None:
            return []
        have = (
            self.sent.get(barrier.message_id, set())
            if barrier.kind == "lava-wait-all"
            else set(barrier.arrived)
        )
        return [n for n in self.expected(barrier) if n not in have]

    def to_dict(self, now: float) -> dict[str, Any]:
        """The lanes and barriers as the page's timeline data at ``now``."""
        barriers = []
        for b in self.barriers.values():
            waiting = self.waiting_for(b)
            first = min(b.arrived.values()) if b.arrived else None
            barriers.append(
                {
                    "kind": b.kind,
                    "message_id": b.message_id,
                    "arrived": dict(sorted(b.arrived.items(), key=lambda kv: kv[1])),
                    "released": b.released,
                    "open": b.released is None,
                    "waiting_for": waiting,
                    "waiting_seconds": None if b.released or first is None else now - first,
                }
            )
        return {
            "lanes": {n: [s.to_dict() for s in spans] for n, spans in self.lanes.items()},
            "roles": self.members,
            "barriers": barriers,
        }


def build(members: Mapping[str, str], records: Iterable[tuple[str, Mapping[str, Any]]]) -> Timeline:
    """The group's timeline from the records of each node's job log."""
    timeline = Timeline(members)
    for node, rec in records:
        timeline.add(node, rec)
    return timeline
