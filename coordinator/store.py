"""The lab's state: devices, hosts, jobs, groups, sub-jobs, results, events.

SQLAlchemy 2 models on ``coordinator.db.Base`` (tables created only by the
Alembic revision ``0003``) and :class:`Store`, a small repository whose every
method is one transaction. Times are seconds since the epoch (floats), the
same clock the scheduler is given.

Every state change also writes an ``events`` row; :meth:`Store.drain_events`
hands the new ones to the service, which publishes them on ``lava.events``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from coordinator.db import Base, make_engine, migrate, session_factory
from coordinator.scheduler import DeviceView, GroupRequest, SubJobRequest
from schemas.errors import JobError

log = logging.getLogger(__name__)

FINAL_SUBJOB_STATES = ("complete", "incomplete", "canceled")
FINAL_JOB_STATES = ("complete", "incomplete", "canceled")
#: the order a sub-job moves through; a report never moves it backwards
SUBJOB_ORDER = {"queued": 0, "assigned": 1, "accepted": 2, "running": 3}


# ------------------------------------------------------------------ models


class DeviceType(Base):
    __tablename__ = "device_types"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    state: Mapped[str] = mapped_column(String(20), default="online")  # online | offline
    last_heartbeat: Mapped[float] = mapped_column(Float)


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    device_type_id: Mapped[int] = mapped_column(ForeignKey("device_types.id"))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"), nullable=True)
    # idle | reserved | running | offline | retired
    state: Mapped[str] = mapped_column(String(20), default="idle")
    health: Mapped[str] = mapped_column(String(20), default="good")  # good | bad | unknown
    # plain integers, not foreign keys: sub-jobs already point at devices by name
    current_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    current_subjob_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_name: Mapped[str] = mapped_column(String(500))
    submitter: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(1000))
    definition: Mapped[str] = mapped_column(Text)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    # queued | scheduled | running | complete | incomplete | canceled
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    priority: Mapped[int] = mapped_column(Integer, default=50)
    submit_time: Mapped[float] = mapped_column(Float)
    start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    waiting_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure_type: Mapped[str | None] = mapped_column(String(50), nullable=True)
    failure_cause: Mapped[str | None] = mapped_column(Text, nullable=True)


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    # waiting | joining | running | ended
    state: Mapped[str] = mapped_column(String(20), default="waiting")
    join_deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class SubJob(Base):
    __tablename__ = "subjobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    role: Mapped[str] = mapped_column(String(200))
    role_index: Mapped[int] = mapped_column(Integer)
    device_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    requested_device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # queued | assigned | accepted | running | complete | incomplete | canceled
    state: Mapped[str] = mapped_column(String(20), default="queued")
    is_slave: Mapped[bool] = mapped_column(Boolean, default=False)
    essential: Mapped[bool] = mapped_column(Boolean, default=False)
    error_type: Mapped[str | None] = mapped_column(String(50), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    assigned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    accepted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Result(Base):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subjob_id: Mapped[int] = mapped_column(ForeignKey("subjobs.id"), index=True)
    test_run: Mapped[str] = mapped_column(String(200))
    test_case: Mapped[str] = mapped_column(String(500))
    result: Mapped[str] = mapped_column(String(20))  # pass | fail | skip | unknown
    measurement: Mapped[float | None] = mapped_column(Float, nullable=True)
    units: Mapped[str | None] = mapped_column(String(100), nullable=True)
    time: Mapped[float] = mapped_column(Float)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(20))  # job | subjob | device | host
    state: Mapped[str] = mapped_column(String(20))
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    subjob_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    host: Mapped[str | None] = mapped_column(String(100), nullable=True)
    text: Mapped[str] = mapped_column(Text, default="")


class RpcReceipt(Base):
    """A handled RPC request that changed the lab (table from revision 0005): a
    redelivery of the same request (coordinator killed before its ack) is answered
    from here instead of being applied twice."""

    __tablename__ = "rpc_receipts"
    request_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    method: Mapped[str] = mapped_column(String(50))
    job_id: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float)


# ------------------------------------------------------------- plain data


@dataclass
class StartedSubJob:
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
    state: str = "assigned"


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
    #: every sub-job has ended: delete the group's topology
    ended: bool = False
    job_state: str | None = None
    #: the group's nodes (device names) and whether its broker topology was created
    nodes: list[str] = field(default_factory=list)
    created: bool = False


@dataclass
class SubmitReceipt:
    job_id: int
    group: str
    subjob_ids: list[int] = field(default_factory=list)


# -------------------------------------------------------------- repository


class Store:
    """The repository: one transaction per method."""

    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        self.url = url
        if run_migrations:
            migrate(url)
        self.engine = make_engine(url)
        self.sessions = session_factory(self.engine)
        self._events: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            self._pending = []
            yield session
        # committed: the events are real now
        self._events.extend(self._pending)
        self._pending = []

    def drain_events(self) -> list[dict[str, Any]]:
        """Events committed since the last call (for publishing on ``lava.events``)."""
        out, self._events = self._events, []
        return out

    def _event(
        self,
        session: Session,
        now: float,
        kind: str,
        state: str,
        text: str,
        *,
        job_id: int | None = None,
        subjob_id: int | None = None,
        device: str | None = None,
        host: str | None = None,
    ) -> None:
        row = Event(
            time=now,
            kind=kind,
            state=state,
            text=text,
            job_id=job_id,
            subjob_id=subjob_id,
            device=device,
            host=host,
        )
        session.add(row)
        self._pending.append(
            {
                "kind": kind,
                "state": state,
                "time": now,
                "text": text,
                "job_id": job_id,
                "subjob_id": subjob_id,
                "device": device,
                "host": host,
            }
        )
        log.info("%s %s: %s", kind, state, text)

    # --- hosts and devices ------------------------------------------------

    def _device_type(self, session: Session, name: str) -> DeviceType:
        row = session.scalar(select(DeviceType).where(DeviceType.name == name))
        if row is None:
            row = DeviceType(name=name)
            session.add(row)
            session.flush()
        return row

    def register_host(self, host: str, devices: Sequence[Mapping[str, Any]], now: float) -> None:
        """A host announces its complete device list; its other devices go offline."""
        with self.session() as s:
            row = s.scalar(select(Host).where(Host.name == host))
            if row is None:
                row = Host(name=host, last_heartbeat=now, state="online")
                s.add(row)
                s.flush()
                self._event(s, now, "host", "online", f"host {host} registered", host=host)
            else:
                if row.state != "online":
                    self._event(s, now, "host", "online", f"host {host} is back", host=host)
                row.last_heartbeat = now
                row.state = "online"
            seen: set[str] = set()
            for d in devices:
                name = str(d["name"])
                seen.add(name)
                dtype = self._device_type(s, str(d["device_type"]))
                tags = sorted(set(d.get("tags") or ()))
                dev = s.scalar(select(Device).where(Device.name == name))
                if dev is None:
                    dev = Device(
                        name=name,
                        device_type_id=dtype.id,
                        tags=tags,
                        host_id=row.id,
                        state="idle",
                        health="good",
                    )
                    s.add(dev)
                    self._event(
                        s, now, "device", "idle", f"device {name} added by host {host}",
                        device=name, host=host,
                    )  # fmt: skip
                    continue
                if dev.host_id not in (None, row.id):
                    log.warning("device %s moves to host %s", name, host)
                dev.device_type_id = dtype.id
                dev.tags = tags
                dev.host_id = row.id
                if dev.state == "offline":
                    dev.state = "idle"
                    dev.current_job_id = dev.current_subjob_id = None
                    self._event(
                        s, now, "device", "idle", f"device {name} is back on host {host}",
                        device=name, host=host,
                    )  # fmt: skip
            for dev in s.scalars(select(Device).where(Device.host_id == row.id)):
                if dev.name not in seen and dev.state not in ("offline", "retired"):
                    self._event(
                        s, now, "device", "offline",
                        f"device {dev.name} is no longer announced by host {host}",
                        device=dev.name, host=host,
                    )  # fmt: skip
                    dev.state = "offline"
                if dev.name not in seen:
                    # no host serves it now: a heartbeat after a host outage must
                    # not bring it back (only announcing it again does)
                    dev.host_id = None

    def heartbeat(self, host: str, now: float) -> bool:
        """Record a heartbeat; False for a host that never registered."""
        with self.session() as s:
            row = s.scalar(select(Host).where(Host.name == host))
            if row is None:
                return False
            row.last_heartbeat = max(row.last_heartbeat, now)
            if row.state != "online":
                row.state = "online"
                self._event(s, now, "host", "online", f"host {host} heartbeats again", host=host)
                for dev in s.scalars(select(Device).where(Device.host_id == row.id)):
                    if dev.state == "offline":
                        dev.state = "idle"
                        dev.current_job_id = dev.current_subjob_id = None
                        self._event(
                            s, now, "device", "idle", f"device {dev.name} is back",
                            device=dev.name, host=host,
                        )  # fmt: skip
            return True

    def silent_hosts(self, now: float, deadline: float) -> list[str]:
        """Online hosts whose last heartbeat is older than ``deadline`` seconds."""
        with self.session() as s:
            rows = s.scalars(
                select(Host.name).where(
                    Host.state == "online", Host.last_heartbeat < now - deadline
                )
            )
            return sorted(rows)

    def host_lost(self, host: str, now: float, cause: str) -> list[GroupOutcome]:
        """Mark a host offline: its devices go offline, their groups fail naming the host."""
        outcomes: list[GroupOutcome] = []
        with self.session() as s:
            row = s.scalar(select(Host).where(Host.name == host))
            if row is None:
                return []
            row.state = "offline"
            self._event(s, now, "host", "offline", f"host {host}: {cause}", host=host)
            devices = list(s.scalars(select(Device).where(Device.host_id == row.id)))
            names = {d.name for d in devices}
            for dev in devices:
                if dev.state != "retired":
                    dev.state = "offline"
                    self._event(
                        s, now, "device", "offline", f"device {dev.name}: host {host} {cause}",
                        device=dev.name, host=host,
                    )  # fmt: skip
                    dev.current_job_id = dev.current_subjob_id = None
            subjobs = s.scalars(
                select(SubJob).where(
                    SubJob.device.in_(names),
                    SubJob.state.in_(("assigned", "accepted", "running")),
                )
            ).all()
            for sub in subjobs:
                message = f"host {host} {cause}; device {sub.device} is offline"
                outcome = self._end_subjob(s, sub, "incomplete", "infrastructure", message, now)
                outcome.fail_reason = outcome.fail_reason or message
                outcome.fail_node = sub.device
                outcomes.append(outcome)
        return _merge(outcomes)

    def retire_device(self, name: str, now: float) -> None:
        with self.session() as s:
            dev = s.scalar(select(Device).where(Device.name == name))
            if dev is None:
                raise JobError(f"no device named {name}")
            dev.state = "retired"
            self._event(s, now, "device", "retired", f"device {name} retired", device=name)

    def set_health(self, name: str, health: str, now: float) -> None:
        with self.session() as s:
            dev = s.scalar(select(Device).where(Device.name == name))
            if dev is None:
                raise JobError(f"no device named {name}")
            dev.health = health
            self._event(s, now, "device", dev.state, f"device {name} health {health}", device=name)

    def lab_devices(self) -> list[DeviceView]:
        """Every non-retired device, as the scheduler sees it."""
        with self.session() as s:
            rows = s.execute(
                select(Device, DeviceType.name)
                .join(DeviceType, Device.device_type_id == DeviceType.id)
                .where(Device.state != "retired")
            ).all()
            return [
                DeviceView(
                    name=d.name,
                    device_type=t,
                    tags=frozenset(d.tags or ()),
                    state=d.state,
                    health=d.health,
                    job_id=d.current_job_id,
                )
                for d, t in rows
            ]

    def devices(self) -> list[dict[str, Any]]:
        """Every device with type, tags, host, state, health and current job (for the CLI)."""
        with self.session() as s:
            rows = s.execute(
                select(Device, DeviceType.name, Host.name)
                .join(DeviceType, Device.device_type_id == DeviceType.id)
                .outerjoin(Host, Device.host_id == Host.id)
                .order_by(Device.name)
            ).all()
            return [
                {
                    "name": d.name,
                    "device_type": t,
                    "tags": list(d.tags or ()),
                    "host": h,
                    "state": d.state,
                    "health": d.health,
                    "current_job": d.current_job_id,
                    "current_subjob": d.current_subjob_id,
                }
                for d, t, h in rows
            ]

    # --- jobs -------------------------------------------------------------

    def submit(
        self,
        plan: Mapping[str, Any],
        definition: str,
        source: str,
        submitter: str,
        now: float,
        *,
        request_id: str | None = None,
    ) -> SubmitReceipt:
        """Store a validated plan (``JobPlan.to_dict()``) as one queued group.

        ``request_id`` (the RPC message's id): a request stored before gets the
        receipt of the job it made, not a second job.
        """
        with self.session() as s:
            if request_id:
                seen = s.get(RpcReceipt, request_id)
                if seen is not None:
                    log.warning(
                        "submit request %s was handled before (job %s): not stored again",
                        request_id,
                        seen.job_id,
                    )
                    return self._receipt(s, seen.job_id)
            job = Job(
                job_name=str(plan.get("job_name") or ""),
                submitter=submitter,
                source=source,
                definition=definition,
                plan=dict(plan),
                state="queued",
                priority=int(plan.get("priority", 50)),
                submit_time=now,
            )
            s.add(job)
            s.flush()
            group = Group(job_id=job.id, name=f"{job.id}-{uuid.uuid4().hex[:12]}", state="waiting")
            s.add(group)
            s.flush()
            receipt = SubmitReceipt(job.id, group.name)
            for sub in plan.get("subjobs") or ():
                row = SubJob(
                    job_id=job.id,
                    group_id=group.id,
                    role=str(sub["role"]),
                    role_index=int(sub["index"]),
                    device_type=sub.get("device_type"),
                    tags=sorted(sub.get("tags") or ()),
                    requested_device=sub.get("device"),
                    is_slave=bool(sub.get("is_slave", False)),
                    essential=bool(sub.get("essential", False)),
                    state="queued",
                )
                s.add(row)
                s.flush()
                receipt.subjob_ids.append(row.id)
            if request_id:
                s.add(RpcReceipt(request_id=request_id, method="submit", job_id=job.id, time=now))
            self._event(
                s, now, "job", "queued",
                f"job {job.id} ({job.job_name}) submitted by {submitter}: "
                f"{len(receipt.subjob_ids)} sub-jobs",
                job_id=job.id,
            )  # fmt: skip
            return receipt

    @staticmethod
    def _receipt(s: Session, job_id: int) -> SubmitReceipt:
        group = s.scalar(select(Group).where(Group.job_id == job_id))
        assert group is not None
        ids = s.scalars(select(SubJob.id).where(SubJob.job_id == job_id).order_by(SubJob.id))
        return SubmitReceipt(job_id, group.name, list(ids))

    def queued_groups(self) -> list[GroupRequest]:
        with self.session() as s:
            jobs = {j.id: j for j in s.scalars(select(Job).where(Job.state == "queued"))}
            subs: dict[int, list[SubJobRequest]] = {j: [] for j in jobs}
            if jobs:
                for sub in s.scalars(select(SubJob).where(SubJob.job_id.in_(list(jobs)))):
                    subs[sub.job_id].append(
                        SubJobRequest(
                            sub.id,
                            sub.device_type or "",
                            frozenset(sub.tags or ()),
                            sub.requested_device,
                        )
                    )
            return [
                GroupRequest(j.id, j.priority, j.submit_time, tuple(subs[j.id]))
                for j in jobs.values()
            ]

    def set_waiting_reasons(self, reasons: Mapping[int, str]) -> None:
        if not reasons:
            return
        with self.session() as s:
            for job in s.scalars(select(Job).where(Job.id.in_(list(reasons)))):
                if job.state == "queued" and job.waiting_reason != reasons[job.id]:
                    job.waiting_reason = reasons[job.id]

    def start_groups(
        self, allocations: Mapping[int, Mapping[int, str]], now: float, join_timeout: float
    ) -> list[StartedGroup]:
        """Reserve the allocated devices and mark the groups' sub-jobs assigned."""
        started: list[StartedGroup] = []
        for job_id, alloc in allocations.items():
            with self.session() as s:
                job = s.get(Job, job_id)
                if job is None or job.state != "queued":
                    continue
                devices = {
                    d.name: (d, t)
                    for d, t in s.execute(
                        select(Device, DeviceType.name)
                        .join(DeviceType, Device.device_type_id == DeviceType.id)
                        .where(Device.name.in_(list(alloc.values())))
                    ).all()
                }
                if any(n not in devices or devices[n][0].state != "idle" for n in alloc.values()):
                    log.warning("job %s: allocation went stale, rescheduling", job_id)
                    continue
                group = s.scalar(select(Group).where(Group.job_id == job_id))
                assert group is not None
                deadline = now + join_timeout
                group.state = "joining"
                group.join_deadline = deadline
                group.started_at = now
                job.state = "scheduled"
                job.start_time = now
                job.waiting_reason = None
                info = StartedGroup(job_id, job.job_name, group.name, job.plan, deadline, [])
                subs = s.scalars(
                    select(SubJob).where(SubJob.job_id == job_id).order_by(SubJob.id)
                ).all()
                host_ids = {d.host_id for d, _ in devices.values() if d.host_id is not None}
                host_names = {
                    h.id: h.name for h in s.scalars(select(Host).where(Host.id.in_(host_ids)))
                }
                for sub in subs:
                    name = alloc[sub.id]
                    dev, dtype = devices[name]
                    dev.state = "reserved"
                    dev.current_job_id = job_id
                    dev.current_subjob_id = sub.id
                    sub.device = name
                    sub.state = "assigned"
                    sub.assigned_at = now
                    info.subjobs.append(
                        StartedSubJob(
                            sub.id, sub.role, sub.role_index, name, dtype, sub.is_slave,
                            sub.essential, host_names.get(dev.host_id or -1),
                        )
                    )  # fmt: skip
                    self._event(
                        s, now, "device", "reserved", f"device {name} reserved for job {job_id}",
                        job_id=job_id, device=name,
                    )  # fmt: skip
                self._event(
                    s, now, "job", "scheduled",
                    f"job {job_id} scheduled on " + ", ".join(sorted(alloc.values())),
                    job_id=job_id,
                )  # fmt: skip
                started.append(info)
        return started

    def subjob_state(
        self,
        subjob_id: int,
        state: str,
        now: float,
        *,
        error_type: str | None = None,
        message: str | None = None,
        replay: bool = False,
    ) -> GroupOutcome | None:
        """Apply a dispatcher's report. Idempotent; never moves a sub-job backwards.

        ``replay``: the report is a redelivery (the coordinator may have died
        after committing it and before acting on the broker); a report that
        changes nothing then returns the group's outcome again, so its broker
        side (failure, clean-up) is done at least once. Both are idempotent.
        """
        with self.session() as s:
            sub = s.get(SubJob, subjob_id)
            if sub is None:
                log.warning("state %s for unknown sub-job %s ignored", state, subjob_id)
                return None
            if sub.state in FINAL_SUBJOB_STATES:
                return self._replayed_outcome(s, sub) if replay else None
            group = s.get(Group, sub.group_id)
            assert group is not None
            if state in FINAL_SUBJOB_STATES:
                outcome = self._end_subjob(s, sub, state, error_type, message, now)
                # a canceled node (its dispatcher stopping) fails its peers too:
                # they would wait for it until their MultiNode timeout
                if state in ("incomplete", "canceled") and not outcome.ended:
                    what = "failed" if state == "incomplete" else "was canceled"
                    outcome.fail_reason = outcome.fail_reason or (
                        f"node {sub.device} (role {sub.role}) {what}: "
                        f"{message or error_type or state}"
                    )
                    outcome.fail_node = sub.device
                return outcome
            if SUBJOB_ORDER.get(state, 0) <= SUBJOB_ORDER.get(sub.state, 0):
                return None
            if sub.state == "queued":
                log.warning("sub-job %s reported %s before it was assigned", sub.id, state)
                return None
            sub.state = state
            if state == "accepted":
                sub.accepted_at = now
            job = s.get(Job, sub.job_id)
            assert job is not None
            self._event(
                s, now, "subjob", state, f"sub-job {sub.id} ({sub.role}) {state} on {sub.device}",
                job_id=sub.job_id, subjob_id=sub.id, device=sub.device,
            )  # fmt: skip
            if sub.device:
                dev = s.scalar(select(Device).where(Device.name == sub.device))
                if dev is not None and dev.current_subjob_id == sub.id:
                    dev.state = "running"
            others = s.scalars(select(SubJob).where(SubJob.group_id == group.id)).all()
            # joined: accepted, running, or already ended (a node may finish
            # or fail before a slow peer's dispatcher accepts)
            if group.state == "joining" and all(
                o.state not in ("queued", "assigned") for o in others
            ):
                group.state = "running"
                group.join_deadline = None
                if job.state == "scheduled":
                    job.state = "running"
                    self._event(
                        s, now, "job", "running", f"job {job.id}: every node joined",
                        job_id=job.id,
                    )  # fmt: skip
            return GroupOutcome(job.id, group.name, job_state=job.state, created=True)

    def _replayed_outcome(self, s: Session, sub: SubJob) -> GroupOutcome:
        """The broker side of a sub-job's end, again (nothing in the store changes)."""
        job = s.get(Job, sub.job_id)
        group = s.get(Group, sub.group_id)
        assert job is not None and group is not None
        subs = s.scalars(select(SubJob).where(SubJob.group_id == group.id)).all()
        outcome = GroupOutcome(
            job.id,
            group.name,
            job_state=job.state,
            nodes=sorted(x.device for x in subs if x.device),
            created=group.started_at is not None,
            ended=group.state == "ended",
        )
        if sub.state == "incomplete":
            outcome.fail_reason = (
                f"node {sub.device} (role {sub.role}) failed: "
                f"{sub.message or sub.error_type or 'incomplete'}"
            )
            outcome.fail_node = sub.device
        return outcome

    def unfinished_groups(self) -> tuple[list[StartedGroup], list[GroupOutcome]]:
        """What a restarted coordinator must redo on the broker for groups it started.

        Returns the groups still joining (with every sub-job and its state: the
        ``assigned`` ones may never have been published) and, for groups not
        ended that already failed (a sub-job ended badly, or the job was
        canceled), the outcome whose failure the peers must see.
        """
        joining: list[StartedGroup] = []
        failed: list[GroupOutcome] = []
        with self.session() as s:
            groups = s.scalars(
                select(Group).where(Group.state.in_(("joining", "running"))).order_by(Group.id)
            ).all()
            for group in groups:
                job = s.get(Job, group.job_id)
                assert job is not None
                subs = s.scalars(
                    select(SubJob).where(SubJob.group_id == group.id).order_by(SubJob.id)
                ).all()
                nodes = sorted(x.device for x in subs if x.device)
                bad = sorted(
                    (x for x in subs if x.state in ("incomplete", "canceled")),
                    key=lambda x: (x.ended_at or 0.0, x.id),
                )
                if job.state == "canceled" or bad:
                    first = bad[0] if bad else None
                    if job.state == "canceled" or first is None:
                        reason = f"job {job.id} canceled: {job.failure_cause}"
                    else:
                        reason = (
                            f"node {first.device} (role {first.role}) failed: "
                            f"{first.message or first.error_type or first.state}"
                        )
                    failed.append(
                        GroupOutcome(
                            job.id, group.name, fail_reason=reason,
                            fail_node=first.device if first is not None else None,
                            job_state=job.state, nodes=nodes, created=True,
                        )
                    )  # fmt: skip
                if group.state != "joining" or group.join_deadline is None:
                    continue
                devices = {
                    d.name: (d, t, h)
                    for d, t, h in s.execute(
                        select(Device, DeviceType.name, Host.name)
                        .join(DeviceType, Device.device_type_id == DeviceType.id)
                        .outerjoin(Host, Device.host_id == Host.id)
                        .where(Device.name.in_(nodes))
                    ).all()
                }
                info = StartedGroup(
                    job.id, job.job_name, group.name, job.plan, group.join_deadline, []
                )
                for sub in subs:
                    if not sub.device or sub.device not in devices:
                        continue
                    _, dtype, host = devices[sub.device]
                    info.subjobs.append(
                        StartedSubJob(
                            sub.id, sub.role, sub.role_index, sub.device, dtype, sub.is_slave,
                            sub.essential, host, sub.state,
                        )
                    )  # fmt: skip
                joining.append(info)
        return joining, failed

    def _end_subjob(
        self,
        s: Session,
        sub: SubJob,
        state: str,
        error_type: str | None,
        message: str | None,
        now: float,
    ) -> GroupOutcome:
        sub.state = state
        sub.ended_at = now
        sub.error_type = error_type
        sub.message = message
        text = f"sub-job {sub.id} ({sub.role}) {state}"
        if message:
            text += f": {message}"
        self._event(
            s, now, "subjob", state, text, job_id=sub.job_id, subjob_id=sub.id, device=sub.device
        )
        if sub.device:
            dev = s.scalar(select(Device).where(Device.name == sub.device))
            if dev is not None and dev.current_subjob_id == sub.id:
                dev.current_job_id = dev.current_subjob_id = None
                if dev.state in ("reserved", "running"):
                    dev.state = "idle"
                    self._event(
                        s, now, "device", "idle", f"device {dev.name} freed by job {sub.job_id}",
                        job_id=sub.job_id, device=dev.name,
                    )  # fmt: skip
        return self._maybe_end_group(s, sub.job_id, now)

    def _maybe_end_group(self, s: Session, job_id: int, now: float) -> GroupOutcome:
        job = s.get(Job, job_id)
        group = s.scalar(select(Group).where(Group.job_id == job_id))
        assert job is not None and group is not None
        subs = s.scalars(select(SubJob).where(SubJob.job_id == job_id)).all()
        outcome = GroupOutcome(
            job_id,
            group.name,
            job_state=job.state,
            nodes=sorted(x.device for x in subs if x.device),
            created=group.started_at is not None,
        )
        if not all(x.state in FINAL_SUBJOB_STATES for x in subs):
            return outcome
        if group.state != "ended":
            group.state = "ended"
            group.ended_at = now
            group.join_deadline = None
            outcome.ended = True
        if job.state not in FINAL_JOB_STATES:
            if all(x.state == "complete" for x in subs):
                job.state = "complete"
            else:
                job.state = "incomplete"
                failed = [x for x in subs if x.state != "complete"]
                first = min(failed, key=lambda x: (x.ended_at or now, x.id))
                job.failure_type = job.failure_type or first.error_type
                job.failure_cause = job.failure_cause or (
                    f"{first.role} on {first.device}: {first.message or first.state}"
                )
            job.end_time = now
            self._event(
                s, now, "job", job.state,
                f"job {job_id} {job.state}"
                + (f": {job.failure_cause}" if job.failure_cause else ""),
                job_id=job_id,
            )  # fmt: skip
        outcome.job_state = job.state
        return outcome

    def cancel(
        self, job_id: int, cause: str, now: float, *, error_type: str = "canceled"
    ) -> GroupOutcome:
        """Cancel a job. Sub-jobs not yet taken by a dispatcher end now (devices freed);
        taken ones end when their dispatcher reports (the group is failed meanwhile)."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobError(f"no job {job_id}")
            group = s.scalar(select(Group).where(Group.job_id == job_id))
            assert group is not None
            if job.state in FINAL_JOB_STATES:
                return GroupOutcome(job_id, group.name, job_state=job.state)
            was = job.state
            job.state = "canceled"
            job.failure_type = error_type
            job.failure_cause = cause
            job.end_time = now
            job.waiting_reason = None
            self._event(s, now, "job", "canceled", f"job {job_id} canceled: {cause}", job_id=job_id)
            subs = s.scalars(select(SubJob).where(SubJob.job_id == job_id)).all()
            outcome = GroupOutcome(
                job_id,
                group.name,
                job_state="canceled",
                nodes=sorted(x.device for x in subs if x.device),
                created=group.started_at is not None,
            )
            for sub in subs:
                if sub.state in ("queued", "assigned"):
                    outcome = self._end_subjob(s, sub, "canceled", error_type, cause, now)
            if was != "queued":
                outcome.fail_reason = f"job {job_id} canceled: {cause}"
            return outcome

    def expired_joins(self, now: float) -> list[tuple[int, list[str]]]:
        """Groups past their join deadline: (job id, nodes that did not join)."""
        with self.session() as s:
            groups = s.scalars(
                select(Group).where(Group.state == "joining", Group.join_deadline < now)
            ).all()
            out = []
            for g in groups:
                late = s.scalars(
                    select(SubJob).where(SubJob.group_id == g.id, SubJob.state == "assigned")
                ).all()
                if late:  # nobody late: the group ends with its nodes' own states
                    out.append((g.job_id, sorted(f"{x.device} ({x.role})" for x in late)))
            return out

    # --- reading ----------------------------------------------------------

    def jobs(self, states: Iterable[str] = (), limit: int = 50) -> list[dict[str, Any]]:
        with self.session() as s:
            q = select(Job).order_by(Job.id.desc()).limit(limit)
            states = list(states)
            if states:
                q = q.where(Job.state.in_(states))
            return [_job_summary(j) for j in s.scalars(q)]

    def job(self, job_id: int) -> dict[str, Any]:
        """One job with its group and sub-jobs; JobError for an unknown id."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobError(f"no job {job_id}")
            group = s.scalar(select(Group).where(Group.job_id == job_id))
            subs = s.scalars(select(SubJob).where(SubJob.job_id == job_id).order_by(SubJob.id))
            out = _job_summary(job)
            out.update(
                {
                    "source": job.source,
                    "submitter": job.submitter,
                    "start_time": job.start_time,
                    "end_time": job.end_time,
                    "failure_type": job.failure_type,
                    "group": group.name if group else None,
                    "group_state": group.state if group else None,
                    "join_deadline": group.join_deadline if group else None,
                    "subjobs": [
                        {
                            "id": x.id,
                            "role": x.role,
                            "index": x.role_index,
                            "device_type": x.device_type,
                            "tags": list(x.tags or ()),
                            "device": x.device,
                            "state": x.state,
                            "error_type": x.error_type,
                            "message": x.message,
                        }
                        for x in subs
                    ],
                }
            )
            return out

    def events(self, job_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        with self.session() as s:
            q = select(Event).order_by(Event.id.desc()).limit(limit)
            if job_id is not None:
                q = q.where(Event.job_id == job_id)
            rows = list(s.scalars(q))
            return [
                {"time": e.time, "kind": e.kind, "state": e.state, "job_id": e.job_id,
                 "device": e.device, "text": e.text}
                for e in reversed(rows)
            ]  # fmt: skip

    # --- results ----------------------------------------------------------

    def add_result(
        self,
        subjob_id: int,
        test_run: str,
        test_case: str,
        result: str,
        now: float,
        *,
        measurement: float | None = None,
        units: str | None = None,
    ) -> int:
        with self.session() as s:
            if s.get(SubJob, subjob_id) is None:
                raise JobError(f"result for unknown sub-job {subjob_id}")
            row = Result(
                subjob_id=subjob_id,
                test_run=test_run,
                test_case=test_case,
                result=result,
                measurement=measurement,
                units=units,
                time=now,
            )
            s.add(row)
            s.flush()
            return row.id

    def results(self, job_id: int) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.execute(
                select(Result, SubJob.device, SubJob.role)
                .join(SubJob, Result.subjob_id == SubJob.id)
                .where(SubJob.job_id == job_id)
                .order_by(Result.id)
            ).all()
            return [
                {"subjob_id": r.subjob_id, "node": dev, "role": role, "test_run": r.test_run,
                 "test_case": r.test_case, "result": r.result, "measurement": r.measurement,
                 "units": r.units}
                for r, dev, role in rows
            ]  # fmt: skip


def _job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.job_name,
        "state": job.state,
        "priority": job.priority,
        "submit_time": job.submit_time,
        "waiting_reason": job.waiting_reason,
        "failure_cause": job.failure_cause,
    }


def _merge(outcomes: list[GroupOutcome]) -> list[GroupOutcome]:
    """One outcome per group (the last state, the first failure reason)."""
    merged: dict[str, GroupOutcome] = {}
    for o in outcomes:
        m = merged.get(o.group)
        if m is None:
            merged[o.group] = o
            continue
        m.ended = m.ended or o.ended
        m.job_state = o.job_state
        m.fail_reason = m.fail_reason or o.fail_reason
        m.fail_node = m.fail_node or o.fail_node
    return list(merged.values())
