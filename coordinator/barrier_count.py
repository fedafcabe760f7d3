"""The barrier's counting, as pure functions of what arrived: no I/O, no clock.

A group's :class:`GroupCounts` holds its membership, the nodes counted at
each barrier and the releases decided. :meth:`GroupCounts.arrive` counts a
batch's senders at one barrier and returns the releases that batch completes
(each exactly once, whatever the order or batching of the arrivals);
:meth:`GroupCounts.judge_timeout` decides what a node's MultiNode timeout
means. The service (``coordinator/barrier.py``) journals both in the store
and publishes what they decided.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: barrier kinds an arrival counts at: ``lava-send`` (generation 0) and ``lava-sync``
SEND, SYNC = "send", "sync"
#: release kinds: every node of a role (or of the group) sent; every node synced
WAIT_ALL = "wait-all"


class BarrierKey(NamedTuple):
    """One barrier of a group: what its arrivals are counted under."""

    kind: str
    message_id: str
    generation: int


class ReleaseKey(NamedTuple):
    """One release of a group; role "" means every node of the group."""

    kind: str
    message_id: str
    generation: int
    role: str


@dataclass(frozen=True)
class TimeoutVerdict:
    """What a node's timeout means: publish a decided release again, or fail the group."""

    resend: ReleaseKey | None = None
    reason: str | None = None


def release_message_id(group: str, body: dict[str, Any]) -> str:
    """One message id per release, however often it is published."""
    key = f"{group}\0{body['kind']}\0{body['message_id']}\0{body['generation']}\0{body['role']}"
    return "release-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def release_key(body: dict[str, Any]) -> ReleaseKey:
    """The release a ``multinode-release`` (or ``multinode-query``) body is about."""
    return ReleaseKey(body["kind"], body["message_id"], body["generation"], body["role"])


def describe_missing(members: dict[str, str], missing: list[str]) -> str:
    """``role (node), ...`` for the nodes a failure waits for."""
    return ", ".join(f"{members.get(n, '?')} ({n})" for n in missing)


@dataclass
class GroupCounts:
    """A group's membership and its counts, as committed (or being committed)."""

    members: dict[str, str]
    timeout: float
    arrived: dict[BarrierKey, set[str]] = field(default_factory=dict)
    released: set[ReleaseKey] = field(default_factory=set)
    _expected: dict[str, frozenset[str]] = field(default_factory=dict)

    def nodes(self, role: str = "") -> list[str]:
        """The group's nodes (of one role if given), sorted."""
        return sorted(n for n, r in self.members.items() if not role or r == role)

    def expected(self, role: str = "") -> frozenset[str]:
        """The nodes a release for ``role`` waits for (cached: membership is fixed)."""
        nodes = self._expected.get(role)
        if nodes is None:
            nodes = self._expected[role] = frozenset(self.nodes(role))
        return nodes

    def arrive(self, key: BarrierKey, senders: Iterable[str]) -> list[ReleaseKey]:
        """Count ``senders`` at barrier ``key``; the releases now due, each once.

        A sync releases when every node synced; a send releases ``wait-all``
        for the group when every node sent it, and for a role when every node
        of that role did (looked at for the roles of this batch's senders:
        the last sender of a role is always among them).
        """
        senders = set(senders)
        arrived = self.arrived.setdefault(key, set())
        arrived.update(senders)
        if key.kind == SYNC:
            candidates = [(SYNC, "")]
        else:
            roles = {self.members.get(n, "") for n in senders} - {""}
            candidates = [(WAIT_ALL, role) for role in ("", *sorted(roles))]
        due: list[ReleaseKey] = []
        for kind, role in candidates:
            release = ReleaseKey(kind, key.message_id, key.generation, role)
            if release in self.released:
                continue
            expected = self.expected(role)
            if expected and len(arrived) >= len(expected) and arrived.issuperset(expected):
                self.released.add(release)
                due.append(release)
        return due

    def release_body(self, group: str, key: ReleaseKey) -> dict[str, Any]:
        """The ``multinode-release`` body of a decided release."""
        return {
            "group": group,
            "kind": key.kind,
            "message_id": key.message_id,
            "generation": key.generation,
            "role": key.role,
            "nodes": self.nodes(key.role),
        }

    def judge_timeout(self, body: dict[str, Any]) -> TimeoutVerdict | None:
        """What a ``multinode-timeout`` means; None: nothing to do.

        A barrier already released was lost on the way (a broker restart): it
        is published again. A ``lava-wait`` that someone answered has its copy
        on the way. Otherwise the group fails, naming who is missing.
        """
        operation, message_id, role = body["operation"], body["message_id"], body["role"]
        generation = body["generation"]
        if operation == "lava-sync":
            decided = ReleaseKey(SYNC, message_id, generation, "")
            if decided in self.released:
                return TimeoutVerdict(resend=decided)
            kind, expected = SYNC, self.nodes()
        elif operation == "lava-wait-all":
            decided = ReleaseKey(WAIT_ALL, message_id, 0, role)
            if decided in self.released:
                return TimeoutVerdict(resend=decided)
            kind, expected, generation = SEND, self.nodes(role), 0
        else:
            kind, generation = SEND, 0
            expected = [n for n in self.nodes() if n != body["node"]]
        arrived = self.arrived.get(BarrierKey(kind, message_id, generation), set())
        missing = [n for n in expected if n not in arrived]
        if operation == "lava-wait" and len(missing) < len(expected):
            return None  # someone did send: the waiter's copy is on its way
        if not missing:
            return None
        waited = f"{body['timeout']:g}"
        who = describe_missing(self.members, missing)
        if operation == "lava-wait":
            reason = (
                f"lava-wait '{message_id}': timed out after {waited} s waiting for any of {who}; "
                f"0 of {len(expected)} sent"
            )
        else:
            label = f"{operation} '{message_id}'" + (f" (role {role})" if role else "")
            reason = (
                f"{label}: timed out after {waited} s waiting for {who}; "
                f"{len(expected) - len(missing)} of {len(expected)} arrived"
            )
        return TimeoutVerdict(reason=reason)
