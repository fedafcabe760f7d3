"""Plain data the store hands back: what a started group needs on the broker,
what a state change means for it, and a submission's receipt.

Nothing here touches the database; the service acts on these after the
store's transaction has committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.states import SubJobState


@dataclass
class StartedSubJob:
    """One node of a started group: its device and the host that owns it."""

    subjob_id: int
    role: str
    role_index: int
    device: str
    device_type: str
    is_slave: bool
    essential: bool
    #: the host that owns the device (its broker user owns the node)
    host: str | None = None
    #: the sub-job's state in the store (``assigned`` until its dispatcher accepts it)
    state: str = SubJobState.ASSIGNED


@dataclass
class StartedGroup:
    """What the service needs to create the group and publish its assignments."""

    job_id: int
    job_name: str
    group: str
    plan: dict[str, Any]
    join_deadline: float
    subjobs: list[StartedSubJob]

    @property
    def members(self) -> dict[str, str]:
        """node (= device name) → role."""
        return {s.device: s.role for s in self.subjobs}

    @property
    def hosts(self) -> dict[str, str]:
        """node (= device name) → the host that runs it (nodes whose host is known)."""
        return {s.device: s.host for s in self.subjobs if s.host}


@dataclass
class GroupOutcome:
    """What a state change means for the group's broker side."""

    job_id: int
    group: str
    #: the group must be failed on the broker (peers released with this reason)
    fail_reason: str | None = None
    fail_node: str | None = None
    #: the failure's ``cause`` on the broker: "canceled" stops the running nodes at once
    fail_cause: str = "failed"
    #: every sub-job has ended: delete the group's topology
    ended: bool = False
    job_state: str | None = None
    #: the group's nodes (device names) and whether its broker topology was created
    nodes: list[str] = field(default_factory=list)
    created: bool = False


@dataclass
class SubmitReceipt:
    """A stored submission: the job, its group's broker name and its sub-job ids."""

    job_id: int
    group: str
    subjob_ids: list[int] = field(default_factory=list)


def merge_outcomes(outcomes: list[GroupOutcome]) -> list[GroupOutcome]:
    """One outcome per group (the last state, the first failure reason)."""
    merged: dict[str, GroupOutcome] = {}
    for o in outcomes:
        m = merged.get(o.group)
        if m is None:
            merged[o.group] = o
            continue
        m.ended = m.ended or o.ended
        m.job_state = o.job_state
        if not m.fail_reason:
            m.fail_reason, m.fail_cause = o.fail_reason, o.fail_cause
        m.fail_node = m.fail_node or o.fail_node
    return list(merged.values())
