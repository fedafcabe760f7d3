"""What the server reads from the store: jobs by node, devices, hosts, results.

The coordinator's own reads (``Store.jobs``/``Store.job``) answer its CLI;
these answer LAVA's and the REST API's questions (one row per node, LAVA
states, pages and filters) with a few indexed queries each, so a list of a
store holding 10k jobs costs the same as one of 10. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, and_, func, select
from sqlalchemy.orm import Session

from coordinator.db import open_database
from coordinator.store import Device, DeviceType, Group, Host, Job, Result, SubJob
from server import lava, node_rows
from server.driver_sql import DriverStatement
from server.errors import NotFound
from server.node_rows import NodeRow, Visibilities, state_condition
from server.users import Identity

T = TypeVar("T")


class LabReader:
    """Read-only queries on the store (the lab's tables and the server's users)."""

    def __init__(
        self, db_url: str, *, run_migrations: bool = True, pool_size: int | None = None
    ) -> None:
        self.engine, self.sessions = open_database(
            db_url, run_migrations=run_migrations, pool_size=pool_size
        )
        self.visibilities = Visibilities()
        #: ``jobs show``'s read, on the driver's cursor (server/driver_sql.py); with the
        #: definition for a job whose visibility is not known yet
        self._node = DriverStatement(self.engine, node_rows.NODE)
        self._node_first = DriverStatement(self.engine, node_rows.NODE_WITH_DEFINITION)

    def close(self) -> None:
        """Close the store connections."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One read transaction."""
        with self.sessions.begin() as s:
            yield s

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection for one read (no ORM session: the node reads' fast path)."""
        with self.engine.connect() as conn:
            yield conn

    def ping(self) -> None:
        """Raise unless the store answers."""
        with self.session() as s:
            s.execute(select(1))

    # --- visibility -----------------------------------------------------

    def _job_visibility(self, s: Session, job_id: int) -> str:
        return self.visibilities.of(s.connection(), [job_id]).get(job_id, "public")

    @staticmethod
    def can_view(row: NodeRow, who: Identity, anonymous_read: bool) -> bool:
        """Whether ``who`` may see a node: admins and its submitter always, others public ones."""
        if who.is_admin or (who.name is not None and who.name == row.submitter):
            return True
        if row.visibility == "public":
            return anonymous_read or not who.anonymous
        return False

    # --- nodes ------------------------------------------------------------

    def _rows(self, conn: Connection, rows: list[Any], places: list[int]) -> list[NodeRow]:
        seen = self.visibilities.of(conn, {r.job_id for r in rows})
        return [
            node_rows.node_row(r, place, seen.get(r.job_id, "public"))
            for r, place in zip(rows, places, strict=True)
        ]

    def nodes(
        self,
        *,
        state: str | None = None,
        health: str | None = None,
        start: int = 0,
        limit: int = 25,
        since: float | None = None,
        viewer: Identity | None = None,
        anonymous_read: bool = True,
    ) -> list[NodeRow]:
        """Nodes newest first (LAVA's ``scheduler.jobs.list``), filtered and paged."""
        statement = node_rows.nodes_page(state, health, since is not None)

        def fetch(conn: Connection, offset: int, count: int) -> list[NodeRow]:
            page: dict[str, Any] = {"offset": offset, "count": count}
            if since is not None:
                page["since"] = since
            rows = list(conn.execute(statement, page))
            return self._rows(conn, rows, [r.place for r in rows])

        def keep(row: NodeRow) -> bool:
            return viewer is None or self.can_view(row, viewer, anonymous_read)

        with self.connection() as conn:
            return _page(lambda offset, count: fetch(conn, offset, count), keep, start, limit)

    def jobs_page(
        self,
        *,
        states: Iterable[str] = (),
        submitter: str | None = None,
        key: str | None = None,
        offset: int = 0,
        limit: int = 50,
        viewer: Identity | None = None,
        anonymous_read: bool = True,
    ) -> tuple[list[dict[str, Any]], int]:
        """Jobs (groups) newest first, filtered (``key``: the submission key) and paged,
        with the count of all that match."""
        conds: list[ColumnElement[bool]] = []
        states = list(states)
        if states:
            conds.append(Job.state.in_(states))
        if submitter:
            conds.append(Job.submitter == submitter)
        if key:
            conds.append(Job.submit_key == key)
        cond = and_(*conds) if conds else and_(True)

        def fetch(s: Session, first: int, count: int) -> list[dict[str, Any]]:
            q = select(Job).where(cond).order_by(Job.id.desc()).offset(first).limit(count)
            jobs = list(s.scalars(q))
            seen = self.visibilities.of(s.connection(), [j.id for j in jobs])
            return [
                {
                    "id": j.id,
                    "name": j.job_name,
                    "state": j.state,
                    "priority": j.priority,
                    "waiting_reason": j.waiting_reason,
                    "submitter": j.submitter,
                    "submit_time": j.submit_time,
                    "start_time": j.start_time,
                    "end_time": j.end_time,
                    "failure_cause": j.failure_cause,
                    "key": j.submit_key,
                    "visibility": seen.get(j.id, "public"),
                }
                for j in jobs
            ]

        def keep(job: dict[str, Any]) -> bool:
            if viewer is None or viewer.is_admin or job["submitter"] == viewer.name:
                return True
            return job["visibility"] == "public" and (anonymous_read or not viewer.anonymous)

        with self.session() as s:
            items = _page(lambda first, count: fetch(s, first, count), keep, offset, limit)
            total = int(s.scalar(select(func.count(Job.id)).where(cond)) or 0)
        return items, total

    def count_nodes(self, *, state: str | None = None, health: str | None = None) -> int:
        """How many nodes are in ``state`` and ``health`` (either may be None: any)."""
        sub, job = node_rows.SUB, node_rows.JOB
        q = select(func.count()).select_from(sub).join(job, sub.c.job_id == job.c.id)
        with self.connection() as conn:
            return int(conn.scalar(q.where(state_condition(state, health))) or 0)

    def node(self, job: lava.LavaJobId) -> NodeRow:
        """One node; NotFound for an unknown job or node number."""
        seen = self.visibilities.cached(job.job_id)
        read = self._node if seen is not None else self._node_first
        found = read.rows(job_id=job.job_id, index=job.index)
        if not found:
            raise NotFound(f"Job '{_shown(job)}' was not found.")
        row = found[0]
        if seen is None:  # one statement still: the definition came with the row
            seen = self.visibilities.learn(job.job_id, row[-1])
        return node_rows.node_row(row, job.index, seen)

    def job_nodes(self, job_id: int) -> list[NodeRow]:
        """Every node of a job, in group order; NotFound for an unknown job."""
        with self.connection() as conn:
            rows = list(conn.execute(node_rows.JOB_NODES, {"job_id": job_id}))
            if not rows:
                raise NotFound(f"Job '{job_id}' was not found.")
            return self._rows(conn, rows, list(range(len(rows))))

    def job(self, job_id: int) -> dict[str, Any]:
        """The job (group) itself: name, state, times, definition, group name."""
        with self.session() as s:
            row = s.execute(
                select(Job, Group).outerjoin(Group, Group.job_id == Job.id).where(Job.id == job_id)
            ).first()
            if row is None:
                raise NotFound(f"Job '{job_id}' was not found.")
            job, group = row
            return {
                "id": job.id,
                "name": job.job_name,
                "state": job.state,
                "priority": job.priority,
                "submitter": job.submitter,
                "source": job.source,
                "submit_time": job.submit_time,
                "start_time": job.start_time,
                "end_time": job.end_time,
                "waiting_reason": job.waiting_reason,
                "failure_type": job.failure_type,
                "failure_cause": job.failure_cause,
                "group": group.name if group else None,
                "group_state": group.state if group else None,
                "visibility": self._job_visibility(s, job.id),
            }

    def device_types_of(self, job_ids: Iterable[int]) -> dict[int, list[str]]:
        """job → the device types its nodes ask for (the job list's column)."""
        wanted = list(job_ids)
        out: dict[int, list[str]] = {j: [] for j in wanted}
        if not wanted:
            return out
        with self.session() as s:
            q = select(SubJob.job_id, SubJob.device_type).where(SubJob.job_id.in_(wanted))
            for job_id, device_type in s.execute(q.distinct()).all():
                out[job_id].append(device_type or "-")
        return {j: sorted(t) for j, t in out.items()}

    def definition(self, job_id: int) -> str:
        """A job's definition as submitted (NotFound)."""
        with self.session() as s:
            text = s.scalar(select(Job.definition).where(Job.id == job_id))
        if text is None:
            raise NotFound(f"Job '{job_id}' was not found.")
        return text

    # --- results ----------------------------------------------------------

    def results(
        self, subjob_id: int, suite: str | None = None, case: str | None = None
    ) -> list[dict[str, Any]]:
        """A node's test results, by suite and case when given."""
        with self.session() as s:
            q = select(Result).where(Result.subjob_id == subjob_id)
            if suite is not None:
                q = q.where(Result.test_run == suite)
            if case is not None:
                q = q.where(Result.test_case == case)
            return [
                {
                    "id": r.id,
                    "suite": r.test_run,
                    "case": r.test_case,
                    "result": r.result,
                    "measurement": r.measurement,
                    "units": r.units,
                    "time": r.time,
                }
                for r in s.scalars(q.order_by(Result.id))
            ]

    def suites(self, subjob_id: int) -> list[str]:
        """The suites (test runs) of a node's results."""
        with self.session() as s:
            q = select(Result.test_run).where(Result.subjob_id == subjob_id).distinct()
            return sorted(s.scalars(q))

    # --- devices and hosts ------------------------------------------------

    def devices(self, *, include_retired: bool = False) -> list[dict[str, Any]]:
        """The lab's devices with their type, host and current job."""
        with self.session() as s:
            q = (
                select(Device, DeviceType.name, Host.name)
                .join(DeviceType, Device.device_type_id == DeviceType.id)
                .outerjoin(Host, Device.host_id == Host.id)
                .order_by(Device.name)
            )
            if not include_retired:
                q = q.where(Device.state != "retired")
            rows = list(s.execute(q).all())
            current = self._display_ids(s, [d.current_subjob_id for d, _, _ in rows])
            return [
                {
                    "name": d.name,
                    "device_type": t,
                    "host": h,
                    "tags": sorted(d.tags or ()),
                    "state": d.state,
                    "health": d.health,
                    "current_job": current.get(d.current_subjob_id or -1),
                    "current_job_id": d.current_job_id,
                }
                for d, t, h in rows
            ]

    def device(self, name: str) -> dict[str, Any]:
        """One device by name, retired ones too (NotFound)."""
        for d in self.devices(include_retired=True):
            if d["name"] == name:
                return d
        raise NotFound(f"Device '{name}' was not found.")

    @staticmethod
    def _display_ids(s: Session, subjob_ids: Iterable[int | None]) -> dict[int, int | str]:
        wanted = {x for x in subjob_ids if x is not None}
        if not wanted:
            return {}
        jobs = set(s.scalars(select(SubJob.job_id).where(SubJob.id.in_(wanted))))
        order: dict[int, list[int]] = {}
        for job_id, sub_id in s.execute(
            select(SubJob.job_id, SubJob.id).where(SubJob.job_id.in_(jobs)).order_by(SubJob.id)
        ):
            order.setdefault(job_id, []).append(sub_id)
        out: dict[int, int | str] = {}
        for job_id, ids in order.items():
            for i, sub_id in enumerate(ids):
                if sub_id in wanted:
                    out[sub_id] = lava.display_id(job_id, i, len(ids))
        return out

    def device_types(self) -> list[dict[str, Any]]:
        """The device types with how many devices each has."""
        with self.session() as s:
            counts = dict(
                s.execute(
                    select(DeviceType.name, func.count(Device.id))
                    .outerjoin(
                        Device,
                        and_(Device.device_type_id == DeviceType.id, Device.state != "retired"),
                    )
                    .group_by(DeviceType.name)
                ).all()
            )
        return [{"name": n, "devices": int(c)} for n, c in sorted(counts.items())]

    def hosts(self) -> list[dict[str, Any]]:
        """The dispatcher hosts with their devices."""
        with self.session() as s:
            hosts = list(s.scalars(select(Host).order_by(Host.name)))
            names: dict[int, list[str]] = {}
            for host_id, name in s.execute(
                select(Device.host_id, Device.name).where(Device.host_id.is_not(None))
            ):
                names.setdefault(host_id or 0, []).append(name)
            return [
                {
                    "name": h.name,
                    "state": h.state,
                    "last_heartbeat": h.last_heartbeat,
                    "devices": sorted(names.get(h.id, [])),
                }
                for h in hosts
            ]

    def host(self, name: str) -> dict[str, Any]:
        """One dispatcher host by name (NotFound)."""
        for h in self.hosts():
            if h["name"] == name:
                return h
        raise NotFound(f"Worker '{name}' was not found.")


def _page(
    fetch: Callable[[int, int], list[T]], keep: Callable[[T], bool], start: int, limit: int
) -> list[T]:
    """Items ``start`` .. ``start + limit`` of those ``keep`` lets through, read in chunks
    (``fetch(offset, count)``)."""
    start, limit = max(0, int(start)), max(0, int(limit))
    out: list[T] = []
    skipped = offset = 0
    chunk = max(limit + start, 25)
    while len(out) < limit:
        batch = fetch(offset, chunk)
        if not batch:
            break
        offset += len(batch)
        for item in batch:
            if not keep(item):
                continue
            if skipped < start:
                skipped += 1
                continue
            out.append(item)
            if len(out) >= limit:
                break
    return out


def _shown(job: lava.LavaJobId) -> str:
    return str(job.job_id) if job.node is None else f"{job.job_id}.{job.node}"
