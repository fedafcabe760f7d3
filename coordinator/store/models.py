"""The store's tables: device types, hosts, devices, jobs, groups, sub-jobs,
results, events and RPC receipts.

SQLAlchemy 2 models on ``coordinator.db.Base``; the tables are created only
by the Alembic revisions (``0003`` and later). Times are seconds since the
epoch (floats), the same clock the scheduler is given. States are the
``StrEnum`` values of ``schemas.states`` (stored as their strings).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import Base
from schemas.states import DeviceHealth, DeviceState, HostState, JobState, SubJobState


class GroupPhase(StrEnum):
    """Where a job's MultiNode group is: waiting to start, joining, running, ended."""

    WAITING = "waiting"
    JOINING = "joining"
    RUNNING = "running"
    ENDED = "ended"


class DeviceType(Base):
    """A device type by name (``qemu``, ``bbb``): what a role asks for."""

    __tablename__ = "device_types"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Host(Base):
    """A dispatcher host and when it last heartbeated."""

    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    state: Mapped[str] = mapped_column(String(20), default=HostState.ONLINE)
    last_heartbeat: Mapped[float] = mapped_column(Float)


class Device(Base):
    """A device a host announced: its type, tags, state, health and current job."""

    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    device_type_id: Mapped[int] = mapped_column(ForeignKey("device_types.id"))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"), nullable=True)
    state: Mapped[str] = mapped_column(String(20), default=DeviceState.IDLE)
    health: Mapped[str] = mapped_column(String(20), default=DeviceHealth.GOOD)
    # plain integers, not foreign keys: sub-jobs already point at devices by name
    current_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    current_subjob_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Job(Base):
    """A submitted job: its file, its validated plan and its state."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("submitter", "submit_key", name="uq_jobs_submitter_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_name: Mapped[str] = mapped_column(String(500))
    submitter: Mapped[str] = mapped_column(String(200))
    #: the submission's idempotency key (revision 0009): one job per (submitter, key)
    submit_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    source: Mapped[str] = mapped_column(String(1000))
    definition: Mapped[str] = mapped_column(Text)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default=JobState.QUEUED, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=50)
    submit_time: Mapped[float] = mapped_column(Float)
    start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    waiting_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure_type: Mapped[str | None] = mapped_column(String(50), nullable=True)
    failure_cause: Mapped[str | None] = mapped_column(Text, nullable=True)


class Group(Base):
    """A job's MultiNode group: its broker name, phase and join deadline."""

    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    state: Mapped[str] = mapped_column(String(20), default=GroupPhase.WAITING)
    join_deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class SubJob(Base):
    """One node of a group: a role's n-th device and how its run went."""

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
    state: Mapped[str] = mapped_column(String(20), default=SubJobState.QUEUED)
    is_slave: Mapped[bool] = mapped_column(Boolean, default=False)
    essential: Mapped[bool] = mapped_column(Boolean, default=False)
    error_type: Mapped[str | None] = mapped_column(String(50), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    assigned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    accepted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Result(Base):
    """One test case's result, as the older ``Store.add_result`` writes it."""

    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subjob_id: Mapped[int] = mapped_column(ForeignKey("subjobs.id"), index=True)
    test_run: Mapped[str] = mapped_column(String(200))
    test_case: Mapped[str] = mapped_column(String(500))
    result: Mapped[str] = mapped_column(String(20))  # pass | fail | skip | unknown
    measurement: Mapped[float | None] = mapped_column(Float, nullable=True)
    units: Mapped[str | None] = mapped_column(String(100), nullable=True)
    time: Mapped[float] = mapped_column(Float)
    #: the result's details (test set, reference, why a run stopped)
    extra: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    #: files attached to the test run or its cases (base64 content)
    attachments: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)


class Event(Base):
    """A state change, kept for ``lavamq jobs show`` and published on ``lava.events``."""

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
