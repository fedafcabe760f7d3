"""From submission to start: storing a job as a queued group, what the
scheduler is given, and reserving the devices it allocated."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.scheduler import GroupRequest, SubJobRequest
from coordinator.store.base import StoreBase
from coordinator.store.models import (
    Device,
    DeviceType,
    Group,
    GroupPhase,
    Host,
    Job,
    RpcReceipt,
    SubJob,
)
from coordinator.store.views import StartedGroup, StartedSubJob, SubmitReceipt
from schemas.errors import JobError
from schemas.states import DeviceState, JobState, SubJobState

log = logging.getLogger(__name__)


class IntakeStore(StoreBase):
    """Jobs in: submitted, queued for the scheduler, started on their devices."""

    def submit(
        self,
        plan: Mapping[str, Any],
        definition: str,
        source: str,
        submitter: str,
        now: float,
        *,
        request_id: str | None = None,
        key: str | None = None,
    ) -> SubmitReceipt:
        """Store a validated plan (``JobPlan.to_dict()``) as one queued group.

        ``request_id`` (the RPC message's id): a request stored before gets the
        receipt of the job it made, not a second job. ``key`` (the client's
        idempotency key): the submitter's job with that key, if there is one
        (``keyed_job``), else the new job keeps it.
        """
        with self.session() as s:
            if key:
                existing = self._keyed(s, submitter, key)
                if existing is not None:
                    return self._receipt(s, existing.id)
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
                submit_key=key or None,
                source=source,
                definition=definition,
                plan=dict(plan),
                state=JobState.QUEUED,
                priority=int(plan.get("priority", 50)),
                submit_time=now,
            )
            s.add(job)
            s.flush()
            group = Group(
                job_id=job.id, name=f"{job.id}-{uuid.uuid4().hex[:12]}", state=GroupPhase.WAITING
            )
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
                    state=SubJobState.QUEUED,
                )
                s.add(row)
                s.flush()
                receipt.subjob_ids.append(row.id)
            if request_id:
                s.add(RpcReceipt(request_id=request_id, method="submit", job_id=job.id, time=now))
            self._event(
                s, now, "job", JobState.QUEUED,
                f"job {job.id} ({job.job_name}) submitted by {submitter}: "
                f"{len(receipt.subjob_ids)} sub-jobs",
                job_id=job.id,
            )  # fmt: skip
            return receipt

    def keyed_job(self, submitter: str, key: str, definition: str) -> SubmitReceipt | None:
        """The receipt of ``submitter``'s job submitted with ``key``, or None.

        JobError when that job was made from another job file: a key names one
        submission, and a second file under it is a mistake, not a retry.
        """
        with self.session() as s:
            job = self._keyed(s, submitter, key)
            if job is None:
                return None
            if job.definition != definition:
                raise JobError(
                    f"key {key!r} is job {job.id}'s, submitted from another job file: "
                    "give this one a new key (or none)"
                )
            log.info("submit with key %r of %s: job %s already has it", key, submitter, job.id)
            return self._receipt(s, job.id)

    @staticmethod
    def _keyed(s: Session, submitter: str, key: str) -> Job | None:
        return s.scalar(select(Job).where(Job.submitter == submitter, Job.submit_key == key))

    @staticmethod
    def _receipt(s: Session, job_id: int) -> SubmitReceipt:
        group = s.scalar(select(Group).where(Group.job_id == job_id))
        assert group is not None
        ids = s.scalars(select(SubJob.id).where(SubJob.job_id == job_id).order_by(SubJob.id))
        return SubmitReceipt(job_id, group.name, list(ids))

    def queued_groups(self) -> list[GroupRequest]:
        """Every queued job as the scheduler sees it."""
        with self.session() as s:
            jobs = {j.id: j for j in s.scalars(select(Job).where(Job.state == JobState.QUEUED))}
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
        """Record why each queued job still waits (``lavamq jobs`` shows it)."""
        if not reasons:
            return
        with self.session() as s:
            for job in s.scalars(select(Job).where(Job.id.in_(list(reasons)))):
                if job.state == JobState.QUEUED and job.waiting_reason != reasons[job.id]:
                    job.waiting_reason = reasons[job.id]

    def start_groups(
        self, allocations: Mapping[int, Mapping[int, str]], now: float, join_timeout: float
    ) -> list[StartedGroup]:
        """Reserve the allocated devices and mark the groups' sub-jobs assigned."""
        started: list[StartedGroup] = []
        for job_id, alloc in allocations.items():
            with self.session() as s:
                job = s.get(Job, job_id)
                if job is None or job.state != JobState.QUEUED:
                    continue
                devices = {
                    d.name: (d, t)
                    for d, t in s.execute(
                        select(Device, DeviceType.name)
                        .join(DeviceType, Device.device_type_id == DeviceType.id)
                        .where(Device.name.in_(list(alloc.values())))
                    ).all()
                }
                if any(
                    n not in devices or devices[n][0].state != DeviceState.IDLE
                    for n in alloc.values()
                ):
                    log.warning("job %s: allocation went stale, rescheduling", job_id)
                    continue
                group = s.scalar(select(Group).where(Group.job_id == job_id))
                assert group is not None
                deadline = now + join_timeout
                group.state = GroupPhase.JOINING
                group.join_deadline = deadline
                group.started_at = now
                job.state = JobState.SCHEDULED
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
                    dev.state = DeviceState.RESERVED
                    dev.current_job_id = job_id
                    dev.current_subjob_id = sub.id
                    sub.device = name
                    sub.state = SubJobState.ASSIGNED
                    sub.assigned_at = now
                    info.subjobs.append(
                        started_subjob(sub, name, dtype, host_names.get(dev.host_id or -1))
                    )
                    self._event(
                        s, now, "device", DeviceState.RESERVED,
                        f"device {name} reserved for job {job_id}",
                        job_id=job_id, device=name,
                    )  # fmt: skip
                self._event(
                    s, now, "job", JobState.SCHEDULED,
                    f"job {job_id} scheduled on " + ", ".join(sorted(alloc.values())),
                    job_id=job_id,
                )  # fmt: skip
                started.append(info)
        return started


def started_subjob(sub: SubJob, device: str, device_type: str, host: str | None) -> StartedSubJob:
    """A sub-job row on its device, as the service publishes its assignment."""
    return StartedSubJob(
        sub.id, sub.role, sub.role_index, device, device_type, sub.is_slave, sub.essential,
        host, sub.state,
    )  # fmt: skip
