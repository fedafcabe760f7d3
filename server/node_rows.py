"""Nodes as LAVA shows jobs: one row per sub-job, read in one SQL statement each.

Every lavacli call names a node (``jobs show 12.1``) or lists them, so these
reads are the server's hot path: each is one statement of SQLAlchemy Core
(no ORM objects: a job's definition and plan are never loaded for it), built
once with bound parameters so its compiled form is reused, on a connection
of the engine's pool. A node's place in its group and the group's size come
from subqueries on the ``subjobs.job_id`` index; its host from a join.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    false,
    func,
    not_,
    or_,
    select,
)

from coordinator.store import FINAL_SUBJOB_STATES, Device, Host, Job, SubJob
from server import lava

SUB = SubJob.__table__.alias("s")
_PEER = SubJob.__table__.alias("peer")
JOB = Job.__table__.alias("j")
_DEV = Device.__table__.alias("d")
_HOST = Host.__table__.alias("h")

#: top-level ``visibility:`` of a LAVA YAML job (2014 JSON jobs have none: public)
_VISIBILITY = re.compile(r"^visibility:\s*['\"]?(\w+)", re.MULTILINE)


def visibility_of(definition: str) -> str:
    """``public``, ``personal`` or ``group`` from a job file's text."""
    match = _VISIBILITY.search(definition)
    if match is None:
        return "group" if re.search(r"^visibility:\s*$", definition, re.MULTILINE) else "public"
    return match.group(1).lower()


@dataclass
class NodeRow:
    """One node of a job, as LAVA shows a job: the sub-job with its job around it."""

    job_id: int
    index: int
    nodes: int
    subjob_id: int
    role: str
    state: str  # the sub-job's state
    job_state: str
    job_name: str
    submitter: str
    device_type: str | None
    device: str | None
    host: str | None
    tags: list[str]
    submit_time: float
    start_time: float | None
    end_time: float | None
    error_type: str | None
    message: str | None
    failure_cause: str | None
    visibility: str
    job_end_time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def display_id(self) -> int | str:
        """The id LAVA shows for this node (``J`` or ``J.N``)."""
        return lava.display_id(self.job_id, self.index, self.nodes)

    @property
    def lava_state(self) -> tuple[str, str]:
        """The node's state and health as LAVA names them."""
        after = (self.end_time or 0.0) >= (self.job_end_time or 0.0)
        return lava.node_state(self.state, self.job_state, ended_after_cancel=after)


def state_condition(state: str | None, health: str | None) -> ColumnElement[bool]:
    """The SQL behind LAVA's state and health filters on a node (sub-job ``s``, job ``j``)."""
    sub, job = SUB.c, JOB.c
    final = sub.state.in_(FINAL_SUBJOB_STATES)
    not_canceled = job.state != "canceled"
    conds: list[ColumnElement[bool]] = []
    if state:
        wanted = state.capitalize()
        if wanted == "Finished":
            conds.append(final)
        elif wanted == "Canceling":
            conds.append(and_(not_(final), job.state == "canceled"))
        elif wanted == "Scheduling":
            conds.append(false())  # groups start all at once: no node waits for its peers
        else:
            conds.append(and_(sub.state.in_(lava.subjob_states_for(state)), not_canceled))
    if health:
        states = lava.subjob_healths_for(health)
        # a node that ended after its job was canceled shows Canceled (lava.node_state)
        by_cancel = and_(final, job.state == "canceled", sub.ended_at >= job.end_time)
        if health.capitalize() == "Canceled":
            conds.append(or_(sub.state.in_(states), by_cancel))
        elif health.capitalize() == "Unknown":
            conds.append(sub.state.in_(states))
        else:
            conds.append(and_(sub.state.in_(states), not_(by_cancel)))
    return and_(*conds) if conds else and_(True)


def _count_peers(*where: ColumnElement[bool]) -> Any:
    return select(func.count()).select_from(_PEER).where(*where).scalar_subquery()


def _node_select(*, with_index: bool) -> Select[Any]:
    """Sub-job ``s`` with its job ``j``, host, group size and (``with_index``) place."""
    sub, job = SUB.c, JOB.c
    columns: list[Any] = [
        sub.id, sub.role, sub.state, sub.device_type, sub.device, sub.tags, sub.accepted_at,
        sub.assigned_at, sub.ended_at, sub.error_type, sub.message, job.id.label("job_id"),
        job.state.label("job_state"), job.job_name, job.submitter, job.submit_time,
        job.failure_cause, job.end_time.label("job_end_time"), _HOST.c.name.label("host"),
        _count_peers(_PEER.c.job_id == sub.job_id).label("nodes"),
    ]  # fmt: skip
    if with_index:
        place = _count_peers(_PEER.c.job_id == sub.job_id, _PEER.c.id < sub.id)
        columns.append(place.label("place"))
    return (
        select(*columns)
        .select_from(SUB)
        .join(JOB, sub.job_id == JOB.c.id)
        .outerjoin(_DEV, _DEV.c.name == sub.device)
        .outerjoin(_HOST, _DEV.c.host_id == _HOST.c.id)
    )


#: node ``index`` of job ``job_id`` (its place in sub-job order)
NODE = (
    _node_select(with_index=False)
    .where(JOB.c.id == bindparam("job_id"))
    .order_by(SUB.c.id)
    .limit(1)
    .offset(bindparam("index"))
)
#: the same with the job's definition last (its visibility, for a job not seen before)
NODE_WITH_DEFINITION = NODE.add_columns(JOB.c.definition)
#: every node of job ``job_id``, in group order
JOB_NODES = _node_select(with_index=False).where(JOB.c.id == bindparam("job_id"))
JOB_NODES = JOB_NODES.order_by(SUB.c.id)


@functools.lru_cache(maxsize=64)
def nodes_page(state: str | None, health: str | None, since: bool) -> Select[Any]:
    """Nodes in LAVA's ``state`` and ``health`` (and, with ``since``, ended at or after
    ``since``), newest first, ``count`` of them after ``offset``. Built once per filter."""
    cond = state_condition(state, health)
    if since:
        cond = and_(cond, SUB.c.ended_at >= bindparam("since"))
    return (
        _node_select(with_index=True)
        .where(cond)
        .order_by(SUB.c.id.desc())
        .limit(bindparam("count"))
        .offset(bindparam("offset"))
    )


def node_row(row: Any, index: int, visibility: str) -> NodeRow:
    """A :class:`NodeRow` from one row of the statements above (columns by place, in
    ``_node_select``'s order: the hot path of every list)."""
    (sub_id, role, state, device_type, device, tags, accepted_at, assigned_at, ended_at,
     error_type, message, job_id, job_state, job_name, submitter, submit_time, failure_cause,
     job_end_time, host, nodes) = row[:20]  # fmt: skip
    return NodeRow(
        job_id=job_id,
        index=index,
        nodes=nodes,
        subjob_id=sub_id,
        role=role,
        state=state,
        job_state=job_state,
        job_name=job_name,
        submitter=submitter,
        device_type=device_type,
        device=device,
        host=host if device else None,
        tags=list(tags or ()),
        submit_time=submit_time,
        start_time=accepted_at or assigned_at,
        end_time=ended_at,
        error_type=error_type,
        message=message,
        failure_cause=failure_cause,
        visibility=visibility,
        job_end_time=job_end_time,
    )


class Visibilities:
    """Each job's visibility, read from its definition once (a job file never changes).

    Bounded: the least recently asked jobs are forgotten past ``size``.
    """

    _DEFINITIONS = select(Job.__table__.c.id, Job.__table__.c.definition).where(
        Job.__table__.c.id.in_(bindparam("ids", expanding=True))
    )

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._known: OrderedDict[int, str] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, job_id: int) -> str | None:
        """A job's visibility if it is known already (no store read), else None."""
        with self._lock:
            seen = self._known.get(job_id)
            if seen is not None:
                self._known.move_to_end(job_id)
            return seen

    def learn(self, job_id: int, definition: str | None) -> str:
        """Remember the visibility of a job whose definition was read; the visibility."""
        seen = visibility_of(definition or "")
        self._keep({job_id: seen})
        return seen

    def _keep(self, found: dict[int, str]) -> None:
        with self._lock:
            self._known.update(found)
            while len(self._known) > self.size:
                self._known.popitem(last=False)

    def of(self, conn: Connection, job_ids: Iterable[int]) -> dict[int, str]:
        """Each job's visibility, from a cache filled from the store for the jobs it lacks."""
        out: dict[int, str] = {}
        missing: list[int] = []
        with self._lock:
            for job_id in job_ids:
                if job_id in self._known:
                    self._known.move_to_end(job_id)
                    out[job_id] = self._known[job_id]
                else:
                    missing.append(job_id)
        if missing:
            found = {
                r.id: visibility_of(r.definition or "")
                for r in conn.execute(self._DEFINITIONS, {"ids": missing})
            }
            self._keep(found)
            out.update(found)
        return out
